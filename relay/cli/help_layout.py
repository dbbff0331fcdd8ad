"""What --help shows: the help texts, options grouped by mode, usage lines, --version."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from .configfile import config_option
from .registry import COMMON, FORWARDER, RELAY, GroupedOption, options_of

DISTRIBUTION = "yamux-relay"
"""The name on PyPI (``relay`` there is an unrelated project); the command stays ``relay``."""
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

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
            formatter.write_usage(
                ctx.command_path, usage, prefix="Usage: " if i == 0 else "   or: "
            )

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

    return GroupedOption(
        ["-V", "--version"],
        group=COMMON,
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show,
        help="Show the version and exit.",
    )


def command_params(*groups: str) -> list[click.Parameter]:
    return [*options_of(*groups), config_option(), version_option()]


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
  server      run a relay:      relay server [OPTIONS] PORT
  forward     run a forwarder:  relay forward [OPTIONS] LOCAL_PORT HOST PORT
  gen-secret  make a secret:    relay gen-secret [--output FILE]

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
in the --config file (keys are the long option names; see docs/operations.md).
Precedence: command line > environment > config file > default.
Logs go to stderr; the forwarder's stdout carries only endpoints.
Exit status: 0 on success and after SIGTERM, 130 after Ctrl-C (SIGINT),
2 on a usage error, 1 on a runtime failure (the control port is in use,
the relay is lost with --no-reconnect, ...), 78 when the forwarder stops
on a permanent refusal (a wrong secret, a port not allowed, ...).
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
A permanent refusal (a wrong secret, an unknown client, a port not allowed)
stops it with one ERROR line that says what to fix; --retry-permanent keeps
trying instead, every few minutes at most.

\b
Exit status: 0 after SIGTERM, 130 after Ctrl-C, 2 on a usage error, 1 when
the relay is lost with --no-reconnect, 78 on a permanent refusal.
"""

GEN_SECRET_HELP = """Print a new secret: 256 random bits as 64 hex digits.

\b
The relay and the forwarder refuse secrets of less than 128 bits (estimated
from length and characters). openssl rand -hex 32 makes the same kind.

\b
Examples:
  relay gen-secret --output relay.secret    # mode 0600, never overwrites
  relay server --secret-file relay.secret 7000
  relay forward --secret-file relay.secret 6379 relay.example.com:7000
"""
