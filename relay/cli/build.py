"""The relay or forwarder that the parsed options describe; bad values are usage errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from ..client.forwarder import Forwarder, print_endpoint
from ..ops import sdnotify
from ..options import ForwardOptions, ProcessOptions, RelayOptions, Service
from ..server.auth import parse_auth_clients
from ..server.interface import Relay
from ..server.notify import NotifyRelay
from ..server.relay import RelayServer
from .registry import loaded_config, usage_errors, with_credentials


def process_options(ctx: click.Context, values: Mapping[str, Any]) -> ProcessOptions:
    with usage_errors(ctx):
        return ProcessOptions.from_values(values)


def build_server(ctx: click.Context, port: int, values: Mapping[str, Any]) -> Relay:
    """The relay that ``relay server`` runs; the config file may add named clients."""
    found = loaded_config(ctx)
    with usage_errors(ctx):
        clients = None
        if found is not None and found.clients:
            clients = parse_auth_clients(found.clients, found.path.parent)
        options = RelayOptions.from_values(with_credentials(ctx, values), auth_clients=clients)
        if options.protocol == "notify":
            return NotifyRelay(port, options)
        return RelayServer(port, options)


def build_forwarder(
    ctx: click.Context,
    host: str,
    port: int,
    services: Sequence[Service],
    values: Mapping[str, Any],
) -> Forwarder:
    """The forwarder of every service (each its own registration).

    ``--name`` and ``--remote-port`` belong to the LOCAL_PORT service (the
    first, when the file's services are not used); ``--service`` adds more.
    """
    with usage_errors(ctx):
        options = ForwardOptions.from_values(with_credentials(ctx, values))
        ready = ReadyWhenAllRegistered(len(services) + len(options.service))
        return Forwarder(host, port, *services, options=options, on_endpoint=ready)


class ReadyWhenAllRegistered:
    """Print each endpoint; tell systemd READY=1 once every service got its first one."""

    def __init__(self, services: int) -> None:
        self.waiting = services
        self.endpoints: list[str] = []

    def __call__(self, endpoint: str) -> None:
        print_endpoint(endpoint)
        self.endpoints.append(endpoint)
        self.waiting -= 1
        if self.waiting == 0:
            sdnotify.ready("forwarding; public endpoints " + " ".join(self.endpoints))
