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
from .registry import loaded_config, usage_errors, with_credentials


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
        return RelayOptions.from_values(with_credentials(ctx, values), auth_clients=clients)


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
        options = ForwardOptions.from_values(with_credentials(ctx, values))
        ready = ReadyWhenAllRegistered(len(services) + len(options.service))
        return Forwarder(host, port, *services, options=options, on_endpoint=ready)


class ReadyWhenAllRegistered:
    """Print each endpoint; tell systemd READY=1 once every service got its first one, and
    the current endpoints in STATUS= after every registration from then on.

    With several services a line is ``NAME HOST:PORT``: a service registering twice
    before another one did (a blip) still leaves that one waiting.
    """

    def __init__(self, services: int) -> None:
        self.services = services
        self.endpoints: dict[str, str] = {}
        """The latest line of each service, by its name (the only one: by "")."""

    def __call__(self, endpoint: str) -> None:
        print_endpoint(endpoint)
        name = endpoint.split(" ", 1)[0] if self.services > 1 else ""
        first = len(self.endpoints) < self.services
        self.endpoints[name] = endpoint
        if len(self.endpoints) < self.services:
            return
        status = "forwarding; public endpoints " + ", ".join(self.endpoints.values())
        if first:
            sdnotify.ready(status)
        else:
            sdnotify.notify(f"STATUS={status}")
