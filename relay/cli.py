"""Command line: ``relay PORT`` is a relay, ``relay --localForwardPort=P HOST PORT`` a forwarder."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

import yamux

from .forwarder import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCAL_HOST,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_RECONNECT_MAX_DELAY,
    Forwarder,
)
from .server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_SESSIONS,
    RelayServer,
)

logger = logging.getLogger("relay.cli")

PORT = click.IntRange(1, 65535)
SECONDS = click.FloatRange(min=0, min_open=True)
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop to run on: uvloop if asked for, or with ``auto`` when it is installed.

    uvloop (the ``fast`` extra) makes the transports cheaper; the relay is
    correct on either loop (the test suite runs both).
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise click.UsageError(
                "--event-loop uvloop: uvloop is not installed (pip install 'relay[fast]')"
            ) from None
        return None
    return uvloop.new_event_loop
EXIT_SIGINT = 130
EXIT_SIGTERM = 0


class PortRange(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 only
    """``LOW-HIGH``, both ports, LOW <= HIGH."""

    name = "LOW-HIGH"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        low_text, sep, high_text = text.partition("-")
        try:
            if not sep:
                raise ValueError
            low, high = int(low_text), int(high_text)
        except ValueError:
            self.fail(f"{value!r} is not a port range LOW-HIGH, e.g. 5000-5100", param, ctx)
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            self.fail(f"{value!r}: ports must be 1-65535", param, ctx)
        if low > high:
            self.fail(f"{value!r}: LOW must not be greater than HIGH", param, ctx)
        return low, high


class GroupedOption(click.Option):
    """An option listed under a heading of ``relay --help`` (relay, forwarder or common)."""

    def __init__(self, *args: Any, group: str = "common", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


GROUPS = (
    ("relay", "Relay options (relay PORT)"),
    ("forwarder", "Forwarder options (relay --local-forward-port LOCAL_PORT HOST PORT)"),
    ("common", "Common options"),
)


class RelayCommand(click.Command):
    """Two usage lines, and options grouped by mode in --help."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] PORT")
        forwarder_usage = "[OPTIONS] --local-forward-port LOCAL_PORT HOST PORT"
        formatter.write_usage(ctx.command_path, forwarder_usage, prefix="   or: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for group, heading in GROUPS:
            rows = []
            for param in self.get_params(ctx):
                if getattr(param, "group", "common") != group:
                    continue
                record = param.get_help_record(ctx)
                if record is not None:
                    rows.append(record)
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)


def option(*names: str, group: str = "common", **kwargs: Any) -> Callable[..., Any]:
    return click.option(*names, cls=GroupedOption, group=group, **kwargs)


HELP = """Expose a TCP service behind NAT on a public port of a relay.

\b
Relay mode, one argument:
  Listen for registrations on control PORT. Each registering service gets a
  public port of its own, sent to it as one line (e.g. "4532\\n"); then the
  connection becomes a yamux session, and every connection to the public
  port is relayed to the service as one stream of that session.

\b
Forwarder mode, --local-forward-port and two arguments:
  Register with the relay at HOST PORT, print the public endpoint
  HOST:PUBLIC_PORT alone on a line of stdout, and forward every relayed
  connection to LOCAL_HOST:LOCAL_PORT. Reconnects with exponential backoff
  when the relay goes away, and prints the new endpoint.

\b
Examples:
  relay 7000                                 # a relay, control port 7000
  relay --port-range 5000-5099 7000          # public ports from a range
  relay --localForwardPort=6379 relay.example.com 7000
                                             # expose the local redis
  redis-cli -h relay.example.com -p 4532     # use the printed endpoint

\b
Logs go to stderr; the forwarder's stdout carries only endpoints.
Exit status: 0 on success and after SIGTERM, 130 after Ctrl-C (SIGINT),
2 on a usage error, 1 on a runtime failure (the control port is in use,
the relay is lost with --no-reconnect, ...).
"""


@click.command(cls=RelayCommand, help=HELP, context_settings={
    "help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("args", nargs=-1, metavar="PORT | HOST PORT")
@option("--bind", metavar="ADDRESS", group="relay",
        help="Address of the control port and of the public ports.  "
             "[default: all interfaces, IPv4 and IPv6]")
@option("--port-range", type=PortRange(), group="relay",
        help="Open public ports only in this range, e.g. 5000-5099.  "
             "[default: any port the OS chooses]")
@option("--max-sessions", type=click.IntRange(min=1), default=DEFAULT_MAX_SESSIONS,
        show_default=True, group="relay",
        help="Most registered services at once; beyond it a registration gets an error line.")
@option("--max-connections", type=click.IntRange(min=1), default=DEFAULT_MAX_CONNECTIONS,
        show_default=True, group="relay",
        help="Most open public connections per registered service; beyond it they are reset.")
@option("--handshake-timeout", type=SECONDS, default=DEFAULT_HANDSHAKE_TIMEOUT,
        show_default=True, metavar="SECONDS", group="relay",
        help="A registering side must answer a yamux ping within this, or it is dropped.")
@option("--local-forward-port", "--localForwardPort", "local_forward_port", type=PORT,
        metavar="LOCAL_PORT", group="forwarder",
        help="Port of the local service to expose; selects forwarder mode.")
@option("--local-forward-host", default=DEFAULT_LOCAL_HOST, show_default=True, metavar="HOST",
        group="forwarder", help="Host of the local service.")
@option("--reconnect/--no-reconnect", default=True, show_default=True, group="forwarder",
        help="Reconnect when the relay connection is lost or cannot be made (else exit 1).")
@option("--reconnect-delay", type=SECONDS, default=DEFAULT_RECONNECT_DELAY, show_default=True,
        metavar="SECONDS", group="forwarder",
        help="First reconnect delay; it doubles (+-20% jitter) after each failure.")
@option("--reconnect-max-delay", type=SECONDS, default=DEFAULT_RECONNECT_MAX_DELAY,
        show_default=True, metavar="SECONDS", group="forwarder",
        help="Longest reconnect delay.")
@option("--connect-timeout", type=SECONDS, default=DEFAULT_CONNECT_TIMEOUT, show_default=True,
        metavar="SECONDS", group="forwarder",
        help="Time to connect to the relay and get the port line; also to reach the local "
             "service.")
@option("--keepalive-interval", type=SECONDS, default=30.0, show_default=True, metavar="SECONDS",
        help="Interval of yamux keepalive pings on the relay connection.")
@option("--keepalive-timeout", type=SECONDS, default=10.0, show_default=True, metavar="SECONDS",
        help="A ping unanswered (or a connection not writable) this long ends the session.")
@option("--event-loop", type=click.Choice(EVENT_LOOPS), default="auto", show_default=True,
        help="asyncio's own loop or uvloop; auto uses uvloop when it is installed.")
@option("-v", "--verbose", is_flag=True, help="Debug logging (same as --log-level debug).")
@option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info",
        show_default=True, help="Logging threshold (logs go to stderr).")
@click.version_option(package_name="relay", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, /, args: tuple[str, ...], **opts: Any) -> None:
    forwarder_mode = opts["local_forward_port"] is not None
    _check_mode(ctx, args, forwarder_mode)
    _check_options(ctx, forwarder_mode, opts)
    level = "debug" if opts["verbose"] else opts["log_level"]
    _setup_logging(level)
    loop_factory = event_loop_factory(opts["event_loop"])
    try:
        yamux_config = yamux.Config(
            keepalive_interval=opts["keepalive_interval"],
            connection_write_timeout=opts["keepalive_timeout"],
        )
    except yamux.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if forwarder_mode:
        host, port_text = args
        port = _port_argument(ctx, port_text, "PORT")
        forwarder = Forwarder(
            relay_host=host, relay_port=port,
            local_port=opts["local_forward_port"], local_host=opts["local_forward_host"],
            reconnect=opts["reconnect"], reconnect_delay=opts["reconnect_delay"],
            reconnect_max_delay=opts["reconnect_max_delay"],
            connect_timeout=opts["connect_timeout"], yamux_config=yamux_config,
        )
        code = run_until_signal(forwarder.run, loop_factory)
    else:
        port = _port_argument(ctx, args[0], "PORT")
        server = RelayServer(
            port, host=opts["bind"], port_range=opts["port_range"],
            max_sessions=opts["max_sessions"], max_connections=opts["max_connections"],
            handshake_timeout=opts["handshake_timeout"], yamux_config=yamux_config,
        )
        code = run_until_signal(lambda: _serve_relay(server, port), loop_factory)
    ctx.exit(code)


def _check_mode(ctx: click.Context, args: tuple[str, ...], forwarder_mode: bool) -> None:
    if forwarder_mode:
        if len(args) != 2:
            raise click.UsageError(
                f"forwarder mode (--local-forward-port) takes two arguments, HOST and PORT of "
                f"the relay; got {len(args)}: {' '.join(args) or 'none'}", ctx)
        if not args[0]:
            raise click.BadParameter("the relay host must not be empty", ctx, param_hint="'HOST'")
        return
    if not args:
        raise click.UsageError(
            "missing argument: PORT to run a relay, or --local-forward-port LOCAL_PORT HOST PORT "
            "to run a forwarder", ctx)
    if len(args) == 2:
        raise click.UsageError(
            f"got HOST PORT ({' '.join(args)}) but no --local-forward-port: which local port "
            f"should be exposed?", ctx)
    if len(args) > 2:
        raise click.UsageError(
            f"too many arguments ({len(args)}): expected PORT, or HOST PORT with "
            f"--local-forward-port", ctx)


def _check_options(ctx: click.Context, forwarder_mode: bool, opts: dict[str, Any]) -> None:
    wrong_group = "relay" if forwarder_mode else "forwarder"
    for param in ctx.command.params:
        if getattr(param, "group", None) != wrong_group or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
            mode = "forwarder mode" if forwarder_mode else "relay mode"
            raise click.UsageError(
                f"{param.opts[0]} is a {wrong_group} option; it does not apply to {mode}", ctx)
    if opts["reconnect_max_delay"] < opts["reconnect_delay"]:
        raise click.BadParameter(
            f"{opts['reconnect_max_delay']:g} is less than --reconnect-delay "
            f"{opts['reconnect_delay']:g}", ctx, param_hint="'--reconnect-max-delay'")


def _port_argument(ctx: click.Context, text: str, name: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a port number (1-65535)", ctx,
                                 param_hint=f"'{name}'") from None
    if not 1 <= port <= 65535:
        raise click.BadParameter(f"{port} is not a port number (1-65535)", ctx,
                                 param_hint=f"'{name}'")
    return port


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _serve_relay(server: RelayServer, port: int) -> int:
    try:
        await server.start()
    except OSError as exc:
        logger.error("cannot listen on port %d: %s", port, exc.strerror or exc)
        return 1
    try:
        await server.serve_forever()
    finally:
        server.close()
        await server.wait_closed()
    return 0


def run_until_signal(
    main: Callable[[], Awaitable[int]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run ``main()`` in a fresh event loop; SIGINT/SIGTERM cancel it for a clean shutdown.

    Returns main's exit status, 130 after SIGINT and 0 after SIGTERM. A second
    signal during the shutdown exits at once.
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if received:
                logger.warning("%s again: exiting now", name)
                os._exit(EXIT_SIGINT if signum == signal.SIGINT else 128 + signum)
            received.append(signum)
            logger.info("%s received: shutting down", name)
            task.cancel()

        logger.debug("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await main()
        except asyncio.CancelledError:
            if not received:
                raise
            return EXIT_SIGINT if received[0] == signal.SIGINT else EXIT_SIGTERM
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner_:
            return runner_.run(runner())
    except KeyboardInterrupt:
        return EXIT_SIGINT


def main() -> None:
    """Console script entry point (``relay``)."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(EXIT_SIGINT)
