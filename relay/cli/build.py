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
from ..server.siblings import WorkerRole
from .registry import loaded_config, usage_errors


def process_options(ctx: click.Context, values: Mapping[str, Any]) -> ProcessOptions:
    with usage_errors(ctx):
        return ProcessOptions.from_values(values)


def relay_options(ctx: click.Context, values: Mapping[str, Any]) -> RelayOptions:
    """The options of ``relay server``; the config file may add named clients."""
    found = loaded_config(ctx)
    with usage_errors(ctx):
        clients = None
        if found is not None and found.clients:
            clients = parse_auth_clients(found.clients, found.path.parent)
        return RelayOptions.from_values(values, auth_clients=clients)


def build_server(ctx: click.Context, port: int, options: RelayOptions) -> Relay:
    """The relay that ``relay server`` runs in this process."""
    with usage_errors(ctx):
        if options.protocol == "notify":
            return NotifyRelay(port, options)
        return RelayServer(port, options)


def check_worker_options(ctx: click.Context, port: int, options: RelayOptions) -> None:
    """Fail now, as a usage error, on what would stop every worker: a relay is built as a
    worker builds its own (secret and auth files read, TLS context made) and dropped."""
    with usage_errors(ctx):
        RelayServer(port, options, worker=WorkerRole(0, options.workers))


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
        options = ForwardOptions.from_values(values)
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
