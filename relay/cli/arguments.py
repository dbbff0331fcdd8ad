"""Positional arguments: the relay's address, port numbers, services; which mode's options apply."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..ops import config as config_file
from ..options import Service
from .registry import FORWARDER, RELAY


def check_seed_arguments(ctx: click.Context, args: tuple[str, ...], forwarder_mode: bool) -> None:
    if forwarder_mode:
        if len(args) == 1 and ":" in args[0]:
            return
        if len(args) != 2:
            raise click.UsageError(
                f"forwarder mode (--local-forward-port) takes two arguments, HOST and PORT of "
                f"the relay; got {len(args)}: {' '.join(args) or 'none'}",
                ctx,
            )
        return
    if not args:
        raise click.UsageError(
            "missing argument: PORT to run a relay, or --local-forward-port LOCAL_PORT HOST PORT "
            "to run a forwarder (see relay server --help, relay forward --help)",
            ctx,
        )
    if len(args) == 2:
        raise click.UsageError(
            f"got HOST PORT ({' '.join(args)}) but no --local-forward-port: which local port "
            f"should be exposed?",
            ctx,
        )
    if len(args) > 2:
        raise click.UsageError(
            f"too many arguments ({len(args)}): expected PORT, or HOST PORT with "
            f"--local-forward-port",
            ctx,
        )


def check_mode_options(ctx: click.Context, forwarder_mode: bool) -> None:
    wrong_group = RELAY if forwarder_mode else FORWARDER
    for param in ctx.command.params:
        if getattr(param, "group", None) != wrong_group or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
            mode = "forwarder mode" if forwarder_mode else "relay mode"
            raise click.UsageError(
                f"{param.opts[0]} is a {wrong_group} option; it does not apply to {mode}", ctx
            )


def port_argument(ctx: click.Context, text: str, name: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a port number (1-65535)", ctx, param_hint=f"'{name}'"
        ) from None
    if not 1 <= port <= 65535:
        raise click.BadParameter(
            f"{port} is not a port number (1-65535)", ctx, param_hint=f"'{name}'"
        )
    return port


def relay_address(ctx: click.Context, args: Sequence[str]) -> tuple[str, int]:
    """``HOST PORT`` or ``HOST:PORT`` (``[v6]:PORT``) of the relay."""
    if len(args) == 2:
        host, port_text = args
    else:
        host, sep, port_text = args[0].rpartition(":")
        if not sep or not host:
            raise click.BadParameter(
                f"{args[0]!r}: the relay is HOST PORT or HOST:PORT, e.g. relay.example.com:7000",
                ctx,
                param_hint="'HOST:PORT'",
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    if not host:
        raise click.BadParameter("the relay host must not be empty", ctx, param_hint="'HOST'")
    return host, port_argument(ctx, port_text, "PORT")


def file_services(ctx: click.Context, found: config_file.ConfigFile) -> list[Service]:
    if not found.services:
        local_port = found.forward.get("local_port")
        if local_port is None:
            raise click.UsageError(
                f"{found.path}: [forward] has a relay but no local-port and no "
                f"[[forward.services]]",
                ctx,
            )
        return [Service(port_argument(ctx, str(local_port), "local-port"))]
    services = []
    for i, table in enumerate(found.services):
        if "local_port" not in table:
            raise click.UsageError(
                f"{found.path}: [[forward.services]] #{i + 1} has no local-port", ctx
            )
        remote_port = table.get("remote_port")
        try:
            services.append(
                Service(
                    port_argument(ctx, str(table["local_port"]), "local-port"),
                    local_host=table.get("local_host"),
                    name=table.get("name"),
                    remote_port=None
                    if remote_port is None
                    else port_argument(ctx, str(remote_port), "remote-port"),
                    route=table.get("route"),
                )
            )
        except ValueError as exc:
            raise click.UsageError(
                f"{found.path}: [[forward.services]] #{i + 1}: {exc}", ctx
            ) from None
    return services
