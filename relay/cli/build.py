"""The relay or forwarder that the merged options describe; bad combinations are usage errors."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import click

import yamux

from ..client.forwarder import Forwarder, print_endpoint
from ..client.forwarder import Service as ForwardedService
from ..ops import sdnotify
from ..server.auth import AuthConfigError, Authenticator, parse_auth_clients, read_secret_file
from ..server.limits import Limits
from ..server.notify import NotifyRelay
from ..server.relay import RelayServer
from ..wire.tls import TLSConfigError, client_context, server_context
from ..wire.v2 import NAME
from .arguments import Service
from .options import PROXY_VERSIONS
from .registry import loaded_config


def yamux_config(opts: dict[str, Any]) -> yamux.Config:
    """The sessions' settings; with auto-tuning, all sessions share one --max-total-window."""
    try:
        return yamux.Config(
            keepalive_interval=opts["keepalive_interval"],
            keepalive_timeout=opts["keepalive_timeout"],
            max_stream_window_size=opts["max_stream_window"],
            max_session_window=opts["max_session_window"],
            window_autotune=opts["window_autotune"],
            window_budget=(
                yamux.WindowBudget(opts["max_total_window"]) if opts["window_autotune"] else None
            ),
        )
    except yamux.ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def shared_secret(ctx: click.Context, opts: dict[str, Any]) -> bytes | None:
    if opts["secret"] is not None and opts["secret_file"] is not None:
        raise click.UsageError("give --secret (RELAY_SECRET) or --secret-file, not both", ctx)
    try:
        if opts["secret_file"] is not None:
            return read_secret_file(opts["secret_file"])
    except AuthConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="'--secret-file'") from None
    if opts["secret"] is None:
        return None
    return str(opts["secret"]).encode("utf-8")


def _authenticator(ctx: click.Context, opts: dict[str, Any]) -> Authenticator | None:
    """From --secret/--secret-file, or from --auth-file and the config file's clients."""
    secret = shared_secret(ctx, opts)
    found = loaded_config(ctx)
    try:
        clients = {}
        if found is not None and found.clients:
            clients = parse_auth_clients(found.clients, found.path.parent)
        if secret is not None and (clients or opts["auth_file"]):
            raise AuthConfigError(
                "give a shared secret (--secret, RELAY_SECRET, --secret-file) "
                "or named clients (--auth-file, [[server.clients]]), not both"
            )
        if secret is None and not clients and not opts["auth_file"]:
            return None
        return Authenticator(secret=secret, clients=clients, auth_file=opts["auth_file"])
    except AuthConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None


def build_server(ctx: click.Context, port: int, opts: dict[str, Any]) -> RelayServer | NotifyRelay:
    """The relay that ``relay server`` runs, from the merged options."""
    if opts["protocol"] == "notify":
        found = loaded_config(ctx)
        if (
            opts["secret"]
            or opts["secret_file"]
            or opts["auth_file"]
            or opts["tls_cert"]
            or opts["state_dir"]
            or (found is not None and found.clients)
        ):
            raise click.UsageError(
                "the notify protocol has no authentication, TLS or leases: "
                "drop --secret, --auth-file, [[server.clients]], --tls-cert, "
                "--state-dir",
                ctx,
            )
        return NotifyRelay(
            port,
            host=opts["bind"],
            port_range=opts["port_range"],
            max_sessions=opts["max_sessions"],
            max_connections=opts["max_connections"],
            handshake_timeout=opts["handshake_timeout"],
        )
    tls = None
    if opts["tls_cert"] is not None:
        try:
            tls = server_context(
                opts["tls_cert"], opts["tls_key"] or opts["tls_cert"], opts["tls_client_ca"]
            )
        except TLSConfigError as exc:
            raise click.UsageError(str(exc), ctx) from None
    elif opts["tls_key"] is not None or opts["tls_client_ca"] is not None:
        raise click.UsageError("--tls-key and --tls-client-ca need --tls-cert", ctx)
    return RelayServer(
        port,
        host=opts["bind"],
        port_range=opts["port_range"],
        max_sessions=opts["max_sessions"],
        max_connections=opts["max_connections"],
        handshake_timeout=opts["handshake_timeout"],
        yamux_config=yamux_config(opts),
        limits=Limits(
            idle_timeout=opts["idle_timeout"],
            max_connections_per_source=opts["max_connections_per_source"],
            max_pending_registrations_per_source=opts["max_pending_registrations_per_source"],
        ),
        protocol=opts["protocol"],
        auth=_authenticator(ctx, opts),
        ssl=tls,
        state_dir=opts["state_dir"],
        lease_ttl=opts["lease_ttl"],
        max_name_leases=opts["max_name_leases"],
    )


def client_tls(ctx: click.Context, opts: dict[str, Any]) -> ssl.SSLContext | None:
    if not (opts["tls"] or opts["tls_ca"] or opts["tls_cert"] or opts["tls_server_name"]):
        if opts["tls_key"] is not None:
            raise click.UsageError("--tls-key needs --tls-cert", ctx)
        return None
    try:
        return client_context(opts["tls_ca"], opts["tls_cert"], opts["tls_key"])
    except TLSConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None


def build_forwarder(
    ctx: click.Context, host: str, port: int, services: Sequence[Service], opts: dict[str, Any]
) -> Forwarder:
    """The forwarder of every service (each its own registration), from the merged options.

    ``--name`` and ``--remote-port`` belong to the LOCAL_PORT service (the
    first, when the file's services are not used); ``--service`` adds more.
    """
    if opts["reconnect_max_delay"] < opts["reconnect_delay"]:
        raise click.BadParameter(
            f"{opts['reconnect_max_delay']:g} is less than --reconnect-delay "
            f"{opts['reconnect_delay']:g}",
            ctx,
            param_hint="'--reconnect-max-delay'",
        )
    secret = shared_secret(ctx, opts)
    tls = client_tls(ctx, opts)
    if opts["client_name"] is not None and not NAME.fullmatch(opts["client_name"]):
        raise click.BadParameter(
            "use 1-64 of A-Z a-z 0-9 . _ @ -", ctx, param_hint="'--client-name'"
        )
    default_host = opts["local_forward_host"]
    try:
        forwarded = [
            ForwardedService(s.local_port, s.local_host or default_host, s.name, s.remote_port)
            for s in services
        ]
        if forwarded and len(forwarded) == 1 and (opts["name"] or opts["remote_port"]):
            only = forwarded[0]
            forwarded[0] = ForwardedService(
                only.local_port,
                only.local_host,
                opts["name"] or only.name,
                opts["remote_port"] or only.remote_port,
            )
        elif opts["name"] or opts["remote_port"]:
            raise click.UsageError(
                "--name and --remote-port apply to a single LOCAL_PORT service; give each of "
                "several services its own with --service NAME=LOCAL_PORT[:REMOTE_PORT]",
                ctx,
            )
        forwarded += [ForwardedService.parse(text, default_host) for text in opts["service"]]
        return Forwarder(
            relay_host=host,
            relay_port=port,
            services=forwarded,
            reconnect=opts["reconnect"],
            reconnect_delay=opts["reconnect_delay"],
            reconnect_max_delay=opts["reconnect_max_delay"],
            connect_timeout=opts["connect_timeout"],
            yamux_config=yamux_config(opts),
            secret=secret,
            client_name=opts["client_name"],
            ssl=tls,
            tls_server_name=opts["tls_server_name"],
            proxy_protocol=PROXY_VERSIONS.get(opts["proxy_protocol"] or ""),
            require_v2=opts["require_v2"],
            on_endpoint=ReadyWhenAllRegistered(len(forwarded)),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx) from None


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
