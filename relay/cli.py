"""Command line: ``relay server PORT``, ``relay forward LOCAL_PORT HOST PORT``, and the seed forms.

Every option is declared ONCE below with ``option(...)``, under the mode it
belongs to (``relay``, ``forwarder`` or ``common``). From that one declaration
it becomes an option of the subcommand of its mode and of the seed command
(``relay PORT`` / ``relay --localForwardPort=P HOST PORT``), gets its
``RELAY_<NAME>`` environment variable (shown in --help) and may be set in the
config file. To add an option: add one ``option(...)`` call in its section,
then read ``opts["its_name"]`` in ``build_server`` or ``build_forwarder``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import click

import yamux

from . import config as config_file
from . import drain, logs, sdnotify
from .auth import AuthConfigError, Authenticator, parse_auth_clients, read_secret_file
from .forwarder import DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCAL_HOST, Forwarder, print_endpoint
from .forwarder import Service as ForwardedService
from .handshake import NAME
from .leases import DEFAULT_LEASE_TTL, StateDirError
from .limits import DEFAULT_IDLE_TIMEOUT, Limits
from .net import format_endpoint
from .notify import NotifyRelay
from .ports import DEFAULT_MAX_NAME_LEASES
from .reconnect import DEFAULT_RECONNECT_DELAY, DEFAULT_RECONNECT_MAX_DELAY
from .server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_SESSIONS,
    RelayServer,
)
from .server import PROTOCOLS as RELAY_PROTOCOLS
from .tls import TLSConfigError, client_context, server_context

logger = logging.getLogger("relay.cli")

DISTRIBUTION = "yamux-relay"
"""The name on PyPI (``relay`` there is an unrelated project); the command stays ``relay``."""
PORT = click.IntRange(1, 65535)
SECONDS = click.FloatRange(min=0, min_open=True)
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
PROTOCOLS = (*RELAY_PROTOCOLS, "notify")
"""Registration protocols of ``relay server --protocol``; the first is the default (the seed's)."""
PROXY_VERSIONS = {"v1": 1, "v2": 2}
EXIT_SIGINT = drain.EXIT_SIGINT
ENV_PREFIX = "RELAY_"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

RELAY, FORWARDER, COMMON = "relay", "forwarder", "common"
"""Option groups: relay-only, forwarder-only, both."""


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
                f"--event-loop uvloop: uvloop is not installed "
                f"(pip install '{DISTRIBUTION}[fast]')"
            ) from None
        return None
    return uvloop.new_event_loop


class PortRange(click.ParamType):  # type: ignore[type-arg]
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


class Endpoint(click.ParamType):  # type: ignore[type-arg]
    """``HOST:PORT`` (``[v6]:PORT``) to listen on; port 0 lets the OS choose."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        host, sep, port_text = str(value).strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host:
            self.fail(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:9100", param, ctx)
        try:
            port = int(port_text)
        except ValueError:
            self.fail(f"{value!r}: {port_text!r} is not a port number", param, ctx)
        if not 0 <= port <= 65535:
            self.fail(f"{value!r}: ports must be 0-65535", param, ctx)
        return host, port


SIZE_UNITS: Final = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
                     "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30}


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes: a plain integer, or with a binary unit (``256KiB``, ``16MiB``, ``1GiB``)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        number = text.rstrip("BbIiKkMmGg")
        unit = SIZE_UNITS.get(text[len(number):].upper())
        if not number.isdigit() or unit is None:
            self.fail(f"{value!r} is not a size: bytes, or a number with KiB, MiB or GiB",
                      param, ctx)
        return int(number) * unit


# ------------------------------------------------------------ option registry
class GroupedOption(click.Option):
    """An option listed under the heading of its mode in --help."""

    def __init__(self, *args: Any, group: str = COMMON, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def consume_value(self, ctx: click.Context,
                      opts: Mapping[str, Any]) -> tuple[Any, click.core.ParameterSource]:
        value, source = super().consume_value(ctx, opts)
        ctx.meta[f"relay.source.{self.name}"] = source  # for get_error_hint, called before
        return value, source                           # click records the source itself

    def get_error_hint(self, ctx: click.Context | None) -> str:
        """Name where a bad value came from: the flag, its env var, or the config file."""
        hint = " / ".join(f"'{name}'" for name in self.opts)
        source = ctx.meta.get(f"relay.source.{self.name}") if ctx is not None else None
        if source is click.core.ParameterSource.ENVIRONMENT and self.envvar:
            return f"{hint} (env var {self.envvar})"
        if source is click.core.ParameterSource.DEFAULT_MAP and ctx is not None:
            found = loaded_config(ctx)
            return f"{hint} (in {found.path if found is not None else 'the config file'})"
        return hint


@dataclass(frozen=True)
class OptionSpec:
    decls: tuple[str, ...]
    group: str
    kwargs: dict[str, Any]

    def build(self) -> GroupedOption:
        opt = GroupedOption(self.decls, group=self.group, **self.kwargs)
        if opt.envvar is None and opt.name is not None and self.kwargs.get("expose_value", True):
            opt.envvar = ENV_PREFIX + opt.name.upper()
            opt.show_envvar = True
        return opt


OPTIONS: list[OptionSpec] = []


def option(*decls: str, group: str, **kwargs: Any) -> None:
    """Declare an option once: subcommand of its group, seed form, env var and config file."""
    OPTIONS.append(OptionSpec(decls, group, kwargs))


def options_of(*groups: str) -> list[GroupedOption]:
    return [spec.build() for spec in OPTIONS if spec.group in groups]


def option_names(*groups: str) -> set[str]:
    return {name for opt in options_of(*groups) if (name := opt.name) is not None}


# -- relay (server) options
option("--bind", metavar="ADDRESS", group=RELAY,
       help="Address of the control port and of the public ports.  "
            "[default: all interfaces, IPv4 and IPv6]")
option("--port-range", type=PortRange(), group=RELAY,
       help="Open public ports only in this range, e.g. 5000-5099.  "
            "[default: any port the OS chooses]")
option("--max-sessions", type=click.IntRange(min=1), default=DEFAULT_MAX_SESSIONS,
       show_default=True, group=RELAY,
       help="Most registered services at once; beyond it a registration gets an error line.")
option("--max-connections", type=click.IntRange(min=1), default=DEFAULT_MAX_CONNECTIONS,
       show_default=True, group=RELAY,
       help="Most open public connections per registered service; beyond it they are reset.")
option("--handshake-timeout", type=SECONDS, default=DEFAULT_HANDSHAKE_TIMEOUT,
       show_default=True, metavar="SECONDS", group=RELAY,
       help="A registering side must answer a yamux ping within this, or it is dropped.")
option("--idle-timeout", type=click.FloatRange(min=0), default=DEFAULT_IDLE_TIMEOUT,
       show_default=True, metavar="SECONDS", group=RELAY,
       help="Reset a public connection that moved no byte either way for this long; 0: never.")
option("--max-connections-per-source", type=click.IntRange(min=0), metavar="N", group=RELAY,
       help="Most public connections per service from one address (IPv6: one /64); 0: no "
            "limit.  [default: nine tenths of --max-connections]")
option("--max-pending-registrations-per-source", type=click.IntRange(min=0), metavar="N",
       group=RELAY,
       help="Most registrations from one address still in their handshake; 0: no limit.  "
            "[default: nine tenths of --max-sessions]")
option("--protocol", type=click.Choice(PROTOCOLS), default=PROTOCOLS[0], show_default=True,
       group=RELAY, help="Registration protocol: yamux is the seed's (port line, then yamux); "
                         "v2 challenges first (docs/protocol.md), implied by --secret and "
                         "--auth-file; notify is the first seed design ([NEW]<port> lines, the "
                         "server dials back, one TCP connection per client; "
                         "docs/notify-protocol.md).")
option("--auth-file", type=click.Path(dir_okay=False), metavar="FILE", group=RELAY,
       help="TOML file of named clients, each with its own secret and the ports it may hold "
            "([clients.NAME] secret = ..., ports = \"5000-5009\"). Re-read when it changes: "
            "a removed client is disconnected.")
option("--tls-client-ca", type=click.Path(dir_okay=False), metavar="FILE", group=RELAY,
       help="Require a client certificate signed by this CA (mutual TLS; needs --tls-cert).")
option("--state-dir", type=click.Path(file_okay=False), metavar="DIR", group=RELAY,
       help="Keep port leases here (SQLite), so services get their ports back after a relay "
            "restart; implies --protocol v2 (names need it).  [default: leases in memory "
            "only]")
option("--lease-ttl", type=SECONDS, default=DEFAULT_LEASE_TTL, show_default=True,
       metavar="SECONDS", group=RELAY,
       help="A client's port stays reserved for it this long after it went away.")
option("--max-name-leases", type=click.IntRange(min=0), default=DEFAULT_MAX_NAME_LEASES,
       show_default=True, group=RELAY,
       help="Most leases of unauthenticated names; beyond it a new name is refused.")

# -- forwarder options
option("--local-forward-host", default=DEFAULT_LOCAL_HOST, show_default=True, metavar="HOST",
       group=FORWARDER, help="Host of the local service.")
option("--remote-port", type=PORT, metavar="PORT", group=FORWARDER,
       help="Ask the relay for this public port (it refuses it with the reason if it cannot "
            "be had).  [default: the port leased to --name, or any]")
option("--name", metavar="NAME", group=FORWARDER,
       help="Name of the service: the relay keeps its public port for it across reconnects "
            "and restarts (a lease; without auth a convenience, not security).")
option("--service", "service", metavar="NAME=[HOST:]LOCAL_PORT[:REMOTE_PORT]", multiple=True,
       group=FORWARDER,
       help="One more service to expose, with its own registration and lease; repeatable, "
            "e.g. --service redis=6379:7201 --service web=8080.")
option("--reconnect/--no-reconnect", default=True, show_default=True, group=FORWARDER,
       help="Reconnect when the relay connection is lost or cannot be made (else exit 1).")
option("--reconnect-delay", type=SECONDS, default=DEFAULT_RECONNECT_DELAY, show_default=True,
       metavar="SECONDS", group=FORWARDER,
       help="First reconnect delay; it doubles (+-20% jitter) after each failure.")
option("--reconnect-max-delay", type=SECONDS, default=DEFAULT_RECONNECT_MAX_DELAY,
       show_default=True, metavar="SECONDS", group=FORWARDER, help="Longest reconnect delay.")
option("--connect-timeout", type=SECONDS, default=DEFAULT_CONNECT_TIMEOUT, show_default=True,
       metavar="SECONDS", group=FORWARDER,
       help="Time to connect to the relay and get the port line; also to reach the local "
            "service.")
option("--client-name", metavar="NAME", group=FORWARDER,
       help="Our name at the relay (registration v2): selects our secret in its --auth-file.")
option("--tls", is_flag=True, group=FORWARDER,
       help="Connect to the relay over TLS, verifying its certificate (system CAs) and host name.")
option("--tls-ca", type=click.Path(dir_okay=False), metavar="FILE", group=FORWARDER,
       help="Verify the relay's certificate with this CA instead of the system's (implies --tls).")
option("--tls-server-name", metavar="NAME", group=FORWARDER,
       help="The name the relay's certificate must carry, if not HOST (e.g. HOST is an IP "
            "address; implies --tls).")
option("--proxy-protocol", type=click.Choice(tuple(PROXY_VERSIONS)), group=FORWARDER,
       help="Send the local service a PROXY protocol header (v1 text, v2 binary) with the "
            "public client's address before the first byte.")

# -- registration secrets and TLS files: the relay's and the forwarder's
option("--secret", metavar="SECRET", group=COMMON,
       help="Shared secret: the relay requires it (registration v2), the forwarder proves it. "
            "Prefer RELAY_SECRET or --secret-file: a flag shows in the process list.")
option("--secret-file", type=click.Path(dir_okay=False), metavar="FILE", group=COMMON,
       help="Read the secret from FILE (its content without the final newline).")
option("--tls-cert", type=click.Path(dir_okay=False), metavar="FILE", group=COMMON,
       help="Relay: its TLS certificate (chain), so the control port speaks TLS. Forwarder: "
            "a client certificate for mutual TLS.")
option("--tls-key", type=click.Path(dir_okay=False), metavar="FILE", group=COMMON,
       help="The private key of --tls-cert (if not in the same file).")

# -- common options
option("--keepalive-interval", type=SECONDS, default=30.0, show_default=True,
       metavar="SECONDS", group=COMMON,
       help="Interval of yamux keepalive pings on the relay connection.")
option("--keepalive-timeout", type=SECONDS, default=10.0, show_default=True, metavar="SECONDS",
       group=COMMON,
       help="After a keepalive ping, nothing at all from the peer this long ends the "
            "session (any frame proves it alive; a busy link is not a dead one).")
option("--max-stream-window", type=ByteSize(), default="16MiB", show_default=True,
       group=COMMON,
       help="Largest receive window of one yamux stream. With --window-autotune (the default) a "
            "stream starts at 256 KiB and grows towards this only while the window limits its "
            "throughput (16MiB fills 1 Gbit/s at 50 ms); without, every stream is granted all "
            "of it at once. 256KiB: hashicorp's fixed window, the seed's wire exactly.")
option("--max-session-window", type=ByteSize(), default="64MiB", show_default=True,
       group=COMMON,
       help="With --window-autotune: windows grow only while the sum of one session's stream "
            "windows stays within this (each stream's first 256 KiB always counts).")
option("--window-autotune/--no-window-autotune", default=True, show_default=True,
       group=COMMON,
       help="Grow stream windows as measured (needs --max-stream-window above 256KiB); "
            "--no-window-autotune: hashicorp's fixed window of --max-stream-window.")
option("--event-loop", type=click.Choice(EVENT_LOOPS), default="auto", show_default=True,
       group=COMMON, help="asyncio's own loop or uvloop; auto uses uvloop when it is installed.")
option("-v", "--verbose", is_flag=True, group=COMMON,
       help="Debug logging (same as --log-level debug).")
option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info",
       show_default=True, group=COMMON, help="Logging threshold (logs go to stderr).")
option("--log-format", type=click.Choice(logs.LOG_FORMATS), default="text", show_default=True,
       group=COMMON, help="text: TIME LEVEL logger: message key=value...; logfmt; json: one "
                          "object per line. Times are UTC ISO-8601.")
option("--metrics", type=Endpoint(), group=COMMON,
       help="Serve Prometheus metrics at http://HOST:PORT/metrics and a JSON status of every "
            "registration at /status.  [default: off]")
option("--drain-timeout", type=click.FloatRange(min=0), default=drain.DEFAULT_DRAIN_TIMEOUT,
       show_default=True, metavar="SECONDS", group=COMMON,
       help="On SIGTERM stop taking new connections at once (Go Away) and give the ones in "
            "flight this long to finish; 0 closes them at once. A second signal stops at once.")
option("--connection-log/--no-connection-log", default=True, show_default=True, group=COMMON,
       help="One INFO line per relayed connection when it ends (bytes both ways, duration).")


# ------------------------------------------------------------- config file
def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Eager: read the file before any other option, as the ``default_map`` of the command."""
    if value is None:
        return
    try:
        loaded = config_file.load(
            value, common=option_names(COMMON), server=option_names(RELAY),
            forward=option_names(FORWARDER) | {"local_forward_port"},
        )
    except config_file.ConfigFileError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    modes: dict[str, tuple[str, ...]] = {
        "server": (config_file.SERVER_SECTION,),
        "forward": (config_file.FORWARD_SECTION,),
    }
    defaults = loaded.defaults(*modes.get(ctx.info_name or "", (
        config_file.SERVER_SECTION, config_file.FORWARD_SECTION)))
    arguments = config_file.SERVER_ARGUMENTS | config_file.FORWARD_ARGUMENTS
    ctx.default_map = {k: v for k, v in defaults.items() if k not in arguments}
    ctx.meta["relay.config"] = loaded


def config_option() -> click.Option:
    return GroupedOption(
        ["--config"], group=COMMON, metavar="FILE", envvar=ENV_PREFIX + "CONFIG",
        show_envvar=True, is_eager=True, expose_value=False, callback=_load_config,
        type=click.Path(dir_okay=False),
        help="TOML file of option defaults, forwarded services and auth clients "
             "(flag > environment > file > default).",
    )


def loaded_config(ctx: click.Context) -> config_file.ConfigFile | None:
    found: config_file.ConfigFile | None = ctx.meta.get("relay.config")
    return found


# --------------------------------------------------------------- help layout
GROUP_HEADINGS = {
    RELAY: "Relay options (relay server / relay PORT)",
    FORWARDER: "Forwarder options (relay forward / relay --local-forward-port)",
    COMMON: "Common options",
}


class GroupedCommand(click.Command):
    """Options grouped by mode in --help; ``usages`` replace click's usage line."""

    def __init__(self, *args: Any, usages: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usages = usages

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.usages:
            super().format_usage(ctx, formatter)
            return
        for i, usage in enumerate(self.usages):
            formatter.write_usage(ctx.command_path, usage, prefix="Usage: " if i == 0
                                  else "   or: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for group, heading in GROUP_HEADINGS.items():
            rows = []
            for param in self.get_params(ctx):
                if getattr(param, "group", COMMON) != group:
                    continue
                record = param.get_help_record(ctx)
                if record is not None:
                    rows.append(record)
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)


def version_option() -> click.Option:
    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        from importlib.metadata import PackageNotFoundError, version
        try:
            found = version(DISTRIBUTION)
        except PackageNotFoundError:
            found = "unknown (not installed)"
        click.echo(f"relay {found} ({DISTRIBUTION}, Python {sys.version.split()[0]})")
        ctx.exit(0)

    return GroupedOption(["-V", "--version"], group=COMMON, is_flag=True, expose_value=False,
                         is_eager=True, callback=show, help="Show the version and exit.")


def command_params(*groups: str) -> list[click.Parameter]:
    return [*options_of(*groups), config_option(), version_option()]


# ----------------------------------------------------------------- commands
SEED_HELP = """Expose a TCP service behind NAT on a public port of a relay.

\b
Relay mode, one argument (the same as relay server PORT):
  Listen for registrations on control PORT. Each registering service gets a
  public port of its own, sent to it as one line (e.g. "4532\\n"); then the
  connection becomes a yamux session, and every connection to the public
  port is relayed to the service as one stream of that session.

\b
Forwarder mode, --local-forward-port and two arguments (the same as
relay forward LOCAL_PORT HOST PORT):
  Register with the relay at HOST PORT, print the public endpoint
  HOST:PUBLIC_PORT alone on a line of stdout, and forward every relayed
  connection to LOCAL_HOST:LOCAL_PORT. Reconnects with exponential backoff
  when the relay goes away, and prints the new endpoint.

\b
Commands (each with its own --help):
  server   run a relay:      relay server [OPTIONS] PORT
  forward  run a forwarder:  relay forward [OPTIONS] LOCAL_PORT HOST PORT

\b
Examples:
  relay 7000                                 # a relay, control port 7000
  relay server --port-range 5000-5099 7000   # public ports from a range
  relay --localForwardPort=6379 relay.example.com 7000
                                             # expose the local redis
  relay forward 6379 relay.example.com:7000  # the same
  redis-cli -h relay.example.com -p 4532     # use the printed endpoint
  RELAY_BIND=127.0.0.1 relay 7000            # any option from the environment
  relay server --config relay.toml           # or from a TOML file

\b
Every option can also be set by the environment variable shown with it, or
in the --config file (keys are the long option names; see the README).
Precedence: command line > environment > config file > default.
Logs go to stderr; the forwarder's stdout carries only endpoints.
Exit status: 0 on success and after SIGTERM, 130 after Ctrl-C (SIGINT),
2 on a usage error, 1 on a runtime failure (the control port is in use,
the relay is lost with --no-reconnect, ...).
"""

SERVER_HELP = """Run a relay: accept registrations on control PORT.

\b
Each registering service gets a public port of its own, sent to it as one
line (e.g. "4532\\n"); then the connection becomes a yamux session, and
every connection to the public port is relayed to the service as one stream.

\b
Examples:
  relay server 7000
  relay server --bind 0.0.0.0 --port-range 5000-5099 7000
  RELAY_MAX_SESSIONS=20 relay server 7000
  relay server --config /etc/relay/relay.toml      # PORT from [server] port

\b
The seed form "relay PORT" is the same command.
Exit status: 0 on success and after SIGTERM, 130 after Ctrl-C, 2 on a usage
error, 1 on a runtime failure (e.g. the control port is in use).
"""

FORWARD_HELP = """Run a forwarder: expose LOCAL_PORT through the relay at HOST PORT.

\b
Registers with the relay, prints the public endpoint HOST:PUBLIC_PORT alone
on a line of stdout, and forwards every relayed connection to
LOCAL_HOST:LOCAL_PORT (--local-forward-host). Reconnects with exponential
backoff when the relay goes away, and prints the new endpoint.
The relay may be given as HOST PORT or HOST:PORT ([v6addr]:PORT for IPv6).

\b
Examples:
  relay forward 6379 relay.example.com 7000
  relay forward 6379 relay.example.com:7000
  relay forward --name redis --remote-port 7201 6379 relay.example.com:7000
  relay forward --service redis=6379 --service web=8080:7202 relay.example.com:7000
  relay forward --config services.toml     # every [[forward.services]]

\b
With --name the relay keeps the service's public port for it (a lease) across
reconnects and restarts of either side. With several services each endpoint
line is NAME HOST:PUBLIC_PORT.

\b
The seed form "relay --localForwardPort=6379 HOST PORT" is the same command.
Exit status: 0 after SIGTERM, 130 after Ctrl-C, 2 on a usage error, 1 when
the relay is lost with --no-reconnect.
"""


def _seed(ctx: click.Context, **opts: Any) -> None:
    args: tuple[str, ...] = opts.pop("args")
    local_port = opts.pop("local_forward_port")
    forwarder_mode = local_port is not None or bool(opts["service"])
    _check_seed_arguments(ctx, args, forwarder_mode)
    _check_mode_options(ctx, forwarder_mode)
    if forwarder_mode:
        host, port = _relay_address(ctx, args)
        services = [] if local_port is None else [Service(local_port)]
        _run_forward(ctx, host, port, services, opts)
    else:
        _run_server(ctx, _port_argument(ctx, args[0], "PORT"), opts)


seed_command = GroupedCommand(
    "relay", callback=click.pass_context(_seed), help=SEED_HELP, context_settings=CONTEXT,
    usages=("[OPTIONS] PORT", "[OPTIONS] --local-forward-port LOCAL_PORT HOST PORT",
            "server [OPTIONS] PORT", "forward [OPTIONS] LOCAL_PORT HOST PORT"),
    params=[
        click.Argument(["args"], nargs=-1, metavar="PORT | HOST PORT"),
        GroupedOption(["--local-forward-port", "--localForwardPort", "local_forward_port"],
                      type=PORT, metavar="LOCAL_PORT", group=FORWARDER,
                      help="Port of the local service to expose; selects forwarder mode."),
        *command_params(RELAY, FORWARDER, COMMON),
    ],
)


def _server(ctx: click.Context, port: int | None, **opts: Any) -> None:
    if port is None:
        found = loaded_config(ctx)
        if found is None or "port" not in found.server:
            raise click.UsageError("missing argument PORT (or port in the [server] table of "
                                   "the --config file)", ctx)
        port = _port_argument(ctx, str(found.server["port"]), "PORT")
    _run_server(ctx, port, opts)


server_command = GroupedCommand(
    "server", callback=click.pass_context(_server), help=SERVER_HELP, context_settings=CONTEXT,
    short_help="Run a relay: accept registrations on control PORT.",
    params=[click.Argument(["port"], type=PORT, required=False),
            *command_params(RELAY, COMMON)],
)


def _forward(ctx: click.Context, args: tuple[str, ...], **opts: Any) -> None:
    found = loaded_config(ctx)
    file_forward = found.forward if found is not None else {}
    if len(args) == 3 or (len(args) == 2 and ":" in args[1]):
        local_port = _port_argument(ctx, args[0], "LOCAL_PORT")
        host, port = _relay_address(ctx, args[1:])
        services = [Service(local_port)]
    elif opts["service"] and (len(args) == 2 or (len(args) == 1 and ":" in args[0])):
        host, port = _relay_address(ctx, args)  # every service from --service
        services = []
    elif not args and found is not None and "relay" in file_forward:
        host, port = _relay_address(ctx, (str(file_forward["relay"]),))
        services = _file_services(ctx, found)
    elif len(args) == 1 and found is not None and "relay" in file_forward:
        host, port = _relay_address(ctx, (str(file_forward["relay"]),))
        services = [Service(_port_argument(ctx, args[0], "LOCAL_PORT"))]
    elif len(args) == 2:
        raise click.UsageError(
            f"got {' '.join(args)}: give LOCAL_PORT and the relay as HOST PORT or HOST:PORT, "
            f"e.g. relay forward 6379 {args[1]} 7000", ctx)
    else:
        raise click.UsageError(
            f"expected LOCAL_PORT HOST PORT (or LOCAL_PORT HOST:PORT), got "
            f"{len(args)} argument{'s' if len(args) != 1 else ''}"
            f"{': ' + ' '.join(args) if args else ''}; "
            f"e.g. relay forward 6379 relay.example.com 7000", ctx)
    _run_forward(ctx, host, port, services, opts)


forward_command = GroupedCommand(
    "forward", callback=click.pass_context(_forward), help=FORWARD_HELP,
    context_settings=CONTEXT,
    short_help="Run a forwarder: expose LOCAL_PORT through the relay at HOST PORT.",
    usages=("[OPTIONS] LOCAL_PORT HOST PORT", "[OPTIONS] LOCAL_PORT HOST:PORT",
            "[OPTIONS] --service NAME=LOCAL_PORT[:REMOTE_PORT]... HOST PORT",
            "[OPTIONS] --config FILE [LOCAL_PORT]"),
    params=[click.Argument(["args"], nargs=-1, metavar="LOCAL_PORT HOST PORT"),
            *command_params(FORWARDER, COMMON)],
)


class RelayCLI(click.Group):
    """``relay server|forward ...``; anything else is the seed form (``seed_command``)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        if not args or args[0] not in self.commands:
            return seed_command.make_context(info_name, args, parent, **extra)
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.command is seed_command:
            return seed_command.invoke(ctx)
        return super().invoke(ctx)


cli = RelayCLI("relay", commands=[server_command, forward_command], context_settings=CONTEXT,
               help=SEED_HELP)


# ------------------------------------------------------------ argument checks
def _check_seed_arguments(ctx: click.Context, args: tuple[str, ...],
                          forwarder_mode: bool) -> None:
    if forwarder_mode:
        if len(args) == 1 and ":" in args[0]:
            return
        if len(args) != 2:
            raise click.UsageError(
                f"forwarder mode (--local-forward-port) takes two arguments, HOST and PORT of "
                f"the relay; got {len(args)}: {' '.join(args) or 'none'}", ctx)
        return
    if not args:
        raise click.UsageError(
            "missing argument: PORT to run a relay, or --local-forward-port LOCAL_PORT HOST PORT "
            "to run a forwarder (see relay server --help, relay forward --help)", ctx)
    if len(args) == 2:
        raise click.UsageError(
            f"got HOST PORT ({' '.join(args)}) but no --local-forward-port: which local port "
            f"should be exposed?", ctx)
    if len(args) > 2:
        raise click.UsageError(
            f"too many arguments ({len(args)}): expected PORT, or HOST PORT with "
            f"--local-forward-port", ctx)


def _check_mode_options(ctx: click.Context, forwarder_mode: bool) -> None:
    wrong_group = RELAY if forwarder_mode else FORWARDER
    for param in ctx.command.params:
        if getattr(param, "group", None) != wrong_group or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
            mode = "forwarder mode" if forwarder_mode else "relay mode"
            raise click.UsageError(
                f"{param.opts[0]} is a {wrong_group} option; it does not apply to {mode}", ctx)


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


def _relay_address(ctx: click.Context, args: Sequence[str]) -> tuple[str, int]:
    """``HOST PORT`` or ``HOST:PORT`` (``[v6]:PORT``) of the relay."""
    if len(args) == 2:
        host, port_text = args
    else:
        host, sep, port_text = args[0].rpartition(":")
        if not sep or not host:
            raise click.BadParameter(
                f"{args[0]!r}: the relay is HOST PORT or HOST:PORT, e.g. relay.example.com:7000",
                ctx, param_hint="'HOST:PORT'")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    if not host:
        raise click.BadParameter("the relay host must not be empty", ctx, param_hint="'HOST'")
    return host, _port_argument(ctx, port_text, "PORT")


@dataclass(frozen=True)
class Service:
    """One local service to expose (``[[forward.services]]`` or LOCAL_PORT)."""

    local_port: int
    local_host: str | None = None
    name: str | None = None
    remote_port: int | None = None


def _file_services(ctx: click.Context, found: config_file.ConfigFile) -> list[Service]:
    if not found.services:
        local_port = found.forward.get("local_port")
        if local_port is None:
            raise click.UsageError(
                f"{found.path}: [forward] has a relay but no local-port and no "
                f"[[forward.services]]", ctx)
        return [Service(_port_argument(ctx, str(local_port), "local-port"))]
    services = []
    for i, table in enumerate(found.services):
        if "local_port" not in table:
            raise click.UsageError(f"{found.path}: [[forward.services]] #{i + 1} has no "
                                   f"local-port", ctx)
        remote_port = table.get("remote_port")
        services.append(Service(
            _port_argument(ctx, str(table["local_port"]), "local-port"),
            local_host=table.get("local_host"), name=table.get("name"),
            remote_port=None if remote_port is None else _port_argument(
                ctx, str(remote_port), "remote-port"),
        ))
    return services


# ------------------------------------------------------------------ running
def _yamux_config(opts: dict[str, Any]) -> yamux.Config:
    try:
        return yamux.Config(
            keepalive_interval=opts["keepalive_interval"],
            keepalive_timeout=opts["keepalive_timeout"],
            max_stream_window_size=opts["max_stream_window"],
            max_session_window=opts["max_session_window"],
            window_autotune=opts["window_autotune"],
        )
    except yamux.ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _secret(ctx: click.Context, opts: dict[str, Any]) -> bytes | None:
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
    secret = _secret(ctx, opts)
    found = loaded_config(ctx)
    try:
        clients = {}
        if found is not None and found.clients:
            clients = parse_auth_clients(found.clients, found.path.parent)
        if secret is not None and (clients or opts["auth_file"]):
            raise AuthConfigError("give a shared secret (--secret, RELAY_SECRET, --secret-file) "
                                  "or named clients (--auth-file, [[server.clients]]), not both")
        if secret is None and not clients and not opts["auth_file"]:
            return None
        return Authenticator(secret=secret, clients=clients, auth_file=opts["auth_file"])
    except AuthConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None


def build_server(ctx: click.Context, port: int,
                 opts: dict[str, Any]) -> RelayServer | NotifyRelay:
    """The relay that ``relay server`` runs, from the merged options."""
    if opts["protocol"] == "notify":
        found = loaded_config(ctx)
        if (opts["secret"] or opts["secret_file"] or opts["auth_file"] or opts["tls_cert"]
                or opts["state_dir"] or (found is not None and found.clients)):
            raise click.UsageError("the notify protocol has no authentication, TLS or leases: "
                                   "drop --secret, --auth-file, [[server.clients]], --tls-cert, "
                                   "--state-dir", ctx)
        return NotifyRelay(
            port, host=opts["bind"], port_range=opts["port_range"],
            max_sessions=opts["max_sessions"], max_connections=opts["max_connections"],
            handshake_timeout=opts["handshake_timeout"])
    tls = None
    if opts["tls_cert"] is not None:
        try:
            tls = server_context(opts["tls_cert"], opts["tls_key"] or opts["tls_cert"],
                                 opts["tls_client_ca"])
        except TLSConfigError as exc:
            raise click.UsageError(str(exc), ctx) from None
    elif opts["tls_key"] is not None or opts["tls_client_ca"] is not None:
        raise click.UsageError("--tls-key and --tls-client-ca need --tls-cert", ctx)
    return RelayServer(
        port, host=opts["bind"], port_range=opts["port_range"],
        max_sessions=opts["max_sessions"], max_connections=opts["max_connections"],
        handshake_timeout=opts["handshake_timeout"], yamux_config=_yamux_config(opts),
        limits=Limits(
            idle_timeout=opts["idle_timeout"],
            max_connections_per_source=opts["max_connections_per_source"],
            max_pending_registrations_per_source=opts["max_pending_registrations_per_source"],
        ),
        protocol=opts["protocol"], auth=_authenticator(ctx, opts), ssl=tls,
        state_dir=opts["state_dir"], lease_ttl=opts["lease_ttl"],
        max_name_leases=opts["max_name_leases"],
    )


def _client_tls(ctx: click.Context, opts: dict[str, Any]) -> ssl.SSLContext | None:
    if not (opts["tls"] or opts["tls_ca"] or opts["tls_cert"] or opts["tls_server_name"]):
        if opts["tls_key"] is not None:
            raise click.UsageError("--tls-key needs --tls-cert", ctx)
        return None
    try:
        return client_context(opts["tls_ca"], opts["tls_cert"], opts["tls_key"])
    except TLSConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None


def build_forwarder(ctx: click.Context, host: str, port: int, services: Sequence[Service],
                    opts: dict[str, Any]) -> Forwarder:
    """The forwarder of every service (each its own registration), from the merged options.

    ``--name`` and ``--remote-port`` belong to the LOCAL_PORT service (the
    first, when the file's services are not used); ``--service`` adds more.
    """
    if opts["reconnect_max_delay"] < opts["reconnect_delay"]:
        raise click.BadParameter(
            f"{opts['reconnect_max_delay']:g} is less than --reconnect-delay "
            f"{opts['reconnect_delay']:g}", ctx, param_hint="'--reconnect-max-delay'")
    secret = _secret(ctx, opts)
    tls = _client_tls(ctx, opts)
    if opts["client_name"] is not None and not NAME.fullmatch(opts["client_name"]):
        raise click.BadParameter("use 1-64 of A-Z a-z 0-9 . _ @ -", ctx,
                                 param_hint="'--client-name'")
    default_host = opts["local_forward_host"]
    try:
        forwarded = [
            ForwardedService(s.local_port, s.local_host or default_host, s.name, s.remote_port)
            for s in services
        ]
        if forwarded and len(forwarded) == 1 and (opts["name"] or opts["remote_port"]):
            only = forwarded[0]
            forwarded[0] = ForwardedService(
                only.local_port, only.local_host, opts["name"] or only.name,
                opts["remote_port"] or only.remote_port)
        elif opts["name"] or opts["remote_port"]:
            raise click.UsageError(
                "--name and --remote-port apply to a single LOCAL_PORT service; give each of "
                "several services its own with --service NAME=LOCAL_PORT[:REMOTE_PORT]", ctx)
        forwarded += [ForwardedService.parse(text, default_host) for text in opts["service"]]
        return Forwarder(
            relay_host=host, relay_port=port, services=forwarded,
            reconnect=opts["reconnect"], reconnect_delay=opts["reconnect_delay"],
            reconnect_max_delay=opts["reconnect_max_delay"],
            connect_timeout=opts["connect_timeout"], yamux_config=_yamux_config(opts),
            secret=secret, client_name=opts["client_name"], ssl=tls,
            tls_server_name=opts["tls_server_name"],
            proxy_protocol=PROXY_VERSIONS.get(opts["proxy_protocol"] or ""),
            on_endpoint=_ReadyWhenAllRegistered(len(forwarded)),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx) from None


class _ReadyWhenAllRegistered:
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


def _run_server(ctx: click.Context, port: int, opts: dict[str, Any]) -> NoReturn:
    server = build_server(ctx, port, opts)
    loop_factory = event_loop_factory(opts["event_loop"])
    _setup_logging(opts)
    ctx.exit(drain.run_until_signal(
        lambda: _serve_relay(server, port, opts["metrics"]), loop_factory,
        drain=drain.relay_drain(server), drain_timeout=opts["drain_timeout"],
        on_drain=lambda: sdnotify.stopping("draining")))


def _run_forward(ctx: click.Context, host: str, port: int, services: Sequence[Service],
                 opts: dict[str, Any]) -> NoReturn:
    forwarder = build_forwarder(ctx, host, port, services, opts)
    loop_factory = event_loop_factory(opts["event_loop"])
    _setup_logging(opts)
    ctx.exit(drain.run_until_signal(
        lambda: _run_forwarder(forwarder, opts["metrics"]), loop_factory,
        drain=drain.forwarder_drain(forwarder), drain_timeout=opts["drain_timeout"],
        on_drain=lambda: sdnotify.stopping("draining")))


async def _run_forwarder(forwarder: Forwarder, metrics_address: tuple[str, int] | None) -> int:
    from . import metrics
    async with metrics.exposed(metrics_address, metrics.ForwarderCollector(forwarder),
                               lambda: metrics.forwarder_status(forwarder)):
        return await forwarder.run()


def _setup_logging(opts: dict[str, Any]) -> None:
    level = "debug" if opts["verbose"] else str(opts["log_level"])
    logs.setup(level, opts["log_format"], connection_log=opts["connection_log"])


async def _serve_relay(server: RelayServer | NotifyRelay, port: int,
                       metrics_address: tuple[str, int] | None) -> int:
    from . import metrics
    try:
        await server.start()
    except StateDirError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("cannot listen on port %d: %s", port, exc.strerror or exc)
        return 1
    sdnotify.ready(f"serving relay requests on port {server.port}")
    try:
        async with metrics.exposed(metrics_address, metrics.RelayCollector(server),
                                   lambda: metrics.relay_status(server)):
            await server.serve_forever()
    except OSError as exc:
        logger.error("cannot serve metrics on %s: %s", format_endpoint(*metrics_address or
                     ("?", 0)), exc.strerror or exc)
        return 1
    finally:
        server.close()
        await server.wait_closed()
    return 0


def _json_requested(argv: Sequence[str]) -> bool:
    """``--log-format json`` on the command line or in RELAY_LOG_FORMAT (before parsing)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1:i + 2] == ["json"]):
            return True
    return os.environ.get(ENV_PREFIX + "LOG_FORMAT") == "json"


def main() -> None:
    """Console script entry point (``relay``).

    With ``--log-format json`` a usage error is one JSON log line too, so that
    every stderr line stays a JSON object; otherwise click prints it as usual.
    """
    argv = sys.argv[1:]
    try:
        code = cli.main(argv, prog_name="relay", standalone_mode=False)
    except click.ClickException as exc:
        if not _json_requested(argv):
            exc.show()
        else:
            logs.setup("info", "json")
            usage = exc.ctx.get_usage() if isinstance(exc, click.UsageError) and exc.ctx else None
            logger.error("%s", exc.format_message(),
                         extra={"exit_code": exc.exit_code, "usage": usage})
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(EXIT_SIGINT)
    sys.exit(code if isinstance(code, int) else 0)
