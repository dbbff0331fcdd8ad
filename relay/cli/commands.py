"""The click commands: ``relay server``, ``relay forward`` and the seed forms (``relay PORT``,
``relay --localForwardPort=P HOST PORT``)."""

from __future__ import annotations

from typing import Any

import click

from ..options import Service
from ..options.kinds import PORT
from ..options.secret import MIN_SECRET_BITS, generate_secret, write_secret_file
from .arguments import (
    check_mode_options,
    check_seed_arguments,
    file_services,
    port_argument,
    relay_address,
)
from .help_layout import (
    CONTEXT,
    FORWARD_HELP,
    GEN_SECRET_HELP,
    SEED_HELP,
    SERVER_HELP,
    GroupedCommand,
    command_params,
)
from .registry import COMMON, FORWARDER, RELAY, GroupedOption, loaded_config
from .run import run_forward, run_server


def _seed(ctx: click.Context, **opts: Any) -> None:
    args: tuple[str, ...] = opts.pop("args")
    local_port = opts.pop("local_forward_port")
    forwarder_mode = local_port is not None or bool(opts["service"])
    check_seed_arguments(ctx, args, forwarder_mode)
    check_mode_options(ctx, forwarder_mode)
    if forwarder_mode:
        host, port = relay_address(ctx, args)
        services = [] if local_port is None else [Service(local_port)]
        run_forward(ctx, host, port, services, opts)
    else:
        run_server(ctx, port_argument(ctx, args[0], "PORT"), opts)


seed_command = GroupedCommand(
    "relay",
    callback=click.pass_context(_seed),
    help=SEED_HELP,
    context_settings=CONTEXT,
    usages=(
        "[OPTIONS] PORT",
        "[OPTIONS] --local-forward-port LOCAL_PORT HOST PORT",
        "server [OPTIONS] PORT",
        "forward [OPTIONS] LOCAL_PORT HOST PORT",
    ),
    params=[
        click.Argument(["args"], nargs=-1, metavar="PORT | HOST PORT"),
        GroupedOption(
            ["--local-forward-port", "--localForwardPort", "local_forward_port"],
            type=PORT,
            metavar="LOCAL_PORT",
            group=FORWARDER,
            help="Port of the local service to expose; selects forwarder mode.",
        ),
        *command_params(RELAY, FORWARDER, COMMON),
    ],
)


def _server(ctx: click.Context, port: int | None, **opts: Any) -> None:
    if port is None:
        found = loaded_config(ctx)
        if found is None or "port" not in found.server:
            raise click.UsageError(
                "missing argument PORT (or port in the [server] table of the --config file)", ctx
            )
        port = port_argument(ctx, str(found.server["port"]), "PORT")
    run_server(ctx, port, opts)


server_command = GroupedCommand(
    "server",
    callback=click.pass_context(_server),
    help=SERVER_HELP,
    context_settings=CONTEXT,
    short_help="Run a relay: accept registrations on control PORT.",
    params=[click.Argument(["port"], type=PORT, required=False), *command_params(RELAY, COMMON)],
)


def _forward(ctx: click.Context, args: tuple[str, ...], **opts: Any) -> None:
    found = loaded_config(ctx)
    file_forward = found.forward if found is not None else {}
    if len(args) == 3 or (len(args) == 2 and ":" in args[1]):
        local_port = port_argument(ctx, args[0], "LOCAL_PORT")
        host, port = relay_address(ctx, args[1:])
        services = [Service(local_port)]
    elif opts["service"] and (len(args) == 2 or (len(args) == 1 and ":" in args[0])):
        host, port = relay_address(ctx, args)  # every service from --service
        services = []
    elif opts["relays"] and (len(args) == 1 or (not args and opts["service"])):
        (host, port), *more = opts["relays"]  # the relays are all --relay
        opts = {**opts, "relays": tuple(more)}
        services = [Service(port_argument(ctx, args[0], "LOCAL_PORT"))] if args else []
    elif not args and found is not None and "relay" in file_forward:
        host, port = relay_address(ctx, (str(file_forward["relay"]),))
        services = file_services(ctx, found)
    elif len(args) == 1 and found is not None and "relay" in file_forward:
        host, port = relay_address(ctx, (str(file_forward["relay"]),))
        services = [Service(port_argument(ctx, args[0], "LOCAL_PORT"))]
    elif len(args) == 2:
        raise click.UsageError(
            f"got {' '.join(args)}: give LOCAL_PORT and the relay as HOST PORT or HOST:PORT, "
            f"e.g. relay forward 6379 {args[1]} 7000",
            ctx,
        )
    else:
        raise click.UsageError(
            f"expected LOCAL_PORT HOST PORT (or LOCAL_PORT HOST:PORT), got "
            f"{len(args)} argument{'s' if len(args) != 1 else ''}"
            f"{': ' + ' '.join(args) if args else ''}; "
            f"e.g. relay forward 6379 relay.example.com 7000",
            ctx,
        )
    run_forward(ctx, host, port, services, opts)


forward_command = GroupedCommand(
    "forward",
    callback=click.pass_context(_forward),
    help=FORWARD_HELP,
    context_settings=CONTEXT,
    short_help="Run a forwarder: expose LOCAL_PORT through the relay at HOST PORT.",
    usages=(
        "[OPTIONS] LOCAL_PORT HOST PORT",
        "[OPTIONS] LOCAL_PORT HOST:PORT",
        "[OPTIONS] --service NAME=LOCAL_PORT[:REMOTE_PORT]... HOST PORT",
        "[OPTIONS] --relay HOST:PORT... LOCAL_PORT",
        "[OPTIONS] --config FILE [LOCAL_PORT]",
    ),
    params=[
        click.Argument(["args"], nargs=-1, metavar="LOCAL_PORT HOST PORT"),
        *command_params(FORWARDER, COMMON),
    ],
)


def _gen_secret(output: str | None) -> None:
    secret = generate_secret()
    if output is None:
        click.echo(secret)
        return
    try:
        write_secret_file(output, secret)
    except FileExistsError:
        raise click.ClickException(
            f"{output} exists: a secret file is never overwritten (its clients would be "
            f"locked out); remove it first or choose another name"
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote a new secret to {output} (mode 0600)", err=True)


gen_secret_command = click.Command(
    "gen-secret",
    callback=_gen_secret,
    help=GEN_SECRET_HELP,
    context_settings=CONTEXT,
    short_help=f"Print a new secret (at least {MIN_SECRET_BITS} bits are required).",
    params=[
        click.Option(
            ["-o", "--output"],
            metavar="FILE",
            help="Write it to FILE (created with mode 0600; an existing file is left alone).",
        )
    ],
)


class RelayCLI(click.Group):
    """``relay server|forward ...``; anything else is the seed form (``seed_command``)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if not args or args[0] not in self.commands:
            return seed_command.make_context(info_name, args, parent, **extra)
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.command is seed_command:
            return seed_command.invoke(ctx)
        return super().invoke(ctx)


cli = RelayCLI(
    "relay",
    commands=[server_command, forward_command, gen_secret_command],
    context_settings=CONTEXT,
    help=SEED_HELP,
)
