"""The declaration of every option of the relay and the forwarder, grouped by mode.

To add an option: add one ``option(...)`` call in its section, then read
``opts["its_name"]`` in ``build.build_server`` or ``build.build_forwarder``.
"""

from __future__ import annotations

import click

from yamux.const import INITIAL_STREAM_WINDOW

from ..client.forwarder import DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCAL_HOST
from ..client.reconnect import DEFAULT_RECONNECT_DELAY, DEFAULT_RECONNECT_MAX_DELAY
from ..ops import drain, logs
from ..server.leases import DEFAULT_LEASE_TTL
from ..server.limits import DEFAULT_IDLE_TIMEOUT
from ..server.ports import DEFAULT_MAX_NAME_LEASES
from ..server.relay import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_SESSIONS,
)
from ..server.relay import PROTOCOLS as RELAY_PROTOCOLS
from .params import PORT, SECONDS, ByteSize, Endpoint, PortRange
from .registry import COMMON, FORWARDER, RELAY, option

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
PROTOCOLS = (*RELAY_PROTOCOLS, "notify")
"""Registration protocols of ``relay server --protocol``; the first is the default (the seed's)."""
PROXY_VERSIONS = {"v1": 1, "v2": 2}

# -- relay (server) options
option(
    "--bind",
    metavar="ADDRESS",
    group=RELAY,
    help="Address of the control port and of the public ports.  "
    "[default: all interfaces, IPv4 and IPv6]",
)
option(
    "--port-range",
    type=PortRange(),
    group=RELAY,
    help="Open public ports only in this range, e.g. 5000-5099.  "
    "[default: any port the OS chooses]",
)
option(
    "--max-sessions",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_SESSIONS,
    show_default=True,
    group=RELAY,
    help="Most registered services at once; beyond it a registration gets an error line.",
)
option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    group=RELAY,
    help="Most open public connections per registered service; beyond it they are reset.",
)
option(
    "--handshake-timeout",
    type=SECONDS,
    default=DEFAULT_HANDSHAKE_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    group=RELAY,
    help="A registering side must answer a yamux ping within this, or it is dropped.",
)
option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_IDLE_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    group=RELAY,
    help="Reset a public connection that moved no byte either way for this long; 0: never.",
)
option(
    "--max-connections-per-source",
    type=click.IntRange(min=0),
    metavar="N",
    group=RELAY,
    help="Most public connections per service from one address (IPv6: one /64); 0: no "
    "limit.  [default: nine tenths of --max-connections]",
)
option(
    "--max-pending-registrations-per-source",
    type=click.IntRange(min=0),
    metavar="N",
    group=RELAY,
    help="Most registrations from one address still in their handshake; 0: no limit.  "
    "[default: nine tenths of --max-sessions]",
)
option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default=PROTOCOLS[0],
    show_default=True,
    group=RELAY,
    help="Registration protocol: yamux is the seed's (port line, then yamux); "
    "v2 challenges first (docs/protocol.md), implied by --secret and "
    "--auth-file; notify is the first seed design ([NEW]<port> lines, the "
    "server dials back, one TCP connection per client; "
    "docs/notify-protocol.md).",
)
option(
    "--auth-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    group=RELAY,
    help="TOML file of named clients, each with its own secret and the ports it may hold "
    '([clients.NAME] secret = ..., ports = "5000-5009"). Re-read when it changes: '
    "a removed client is disconnected.",
)
option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    group=RELAY,
    help="Require a client certificate signed by this CA (mutual TLS; needs --tls-cert).",
)
option(
    "--state-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    group=RELAY,
    help="Keep port leases here (SQLite), so services get their ports back after a relay "
    "restart; implies --protocol v2 (names need it).  [default: leases in memory "
    "only]",
)
option(
    "--lease-ttl",
    type=SECONDS,
    default=DEFAULT_LEASE_TTL,
    show_default=True,
    metavar="SECONDS",
    group=RELAY,
    help="A client's port stays reserved for it this long after it went away.",
)
option(
    "--max-name-leases",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_NAME_LEASES,
    show_default=True,
    group=RELAY,
    help="Most leases of unauthenticated names; beyond it a new name is refused.",
)

# -- forwarder options
option(
    "--local-forward-host",
    default=DEFAULT_LOCAL_HOST,
    show_default=True,
    metavar="HOST",
    group=FORWARDER,
    help="Host of the local service.",
)
option(
    "--remote-port",
    type=PORT,
    metavar="PORT",
    group=FORWARDER,
    help="Ask the relay for this public port (it refuses it with the reason if it cannot "
    "be had).  [default: the port leased to --name, or any]",
)
option(
    "--name",
    metavar="NAME",
    group=FORWARDER,
    help="Name of the service: the relay keeps its public port for it across reconnects "
    "and restarts (a lease; without auth a convenience, not security).",
)
option(
    "--service",
    "service",
    metavar="NAME=[HOST:]LOCAL_PORT[:REMOTE_PORT]",
    multiple=True,
    group=FORWARDER,
    help="One more service to expose, with its own registration and lease; repeatable, "
    "e.g. --service redis=6379:7201 --service web=8080.",
)
option(
    "--reconnect/--no-reconnect",
    default=True,
    show_default=True,
    group=FORWARDER,
    help="Reconnect when the relay connection is lost or cannot be made (else exit 1).",
)
option(
    "--reconnect-delay",
    type=SECONDS,
    default=DEFAULT_RECONNECT_DELAY,
    show_default=True,
    metavar="SECONDS",
    group=FORWARDER,
    help="First reconnect delay; it doubles (+-20% jitter) after each failure.",
)
option(
    "--reconnect-max-delay",
    type=SECONDS,
    default=DEFAULT_RECONNECT_MAX_DELAY,
    show_default=True,
    metavar="SECONDS",
    group=FORWARDER,
    help="Longest reconnect delay.",
)
option(
    "--connect-timeout",
    type=SECONDS,
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    group=FORWARDER,
    help="Time to connect to the relay and get the port line; also to reach the local service.",
)
option(
    "--client-name",
    metavar="NAME",
    group=FORWARDER,
    help="Our name at the relay (registration v2): selects our secret in its --auth-file.",
)
option(
    "--tls",
    is_flag=True,
    group=FORWARDER,
    help="Connect to the relay over TLS, verifying its certificate (system CAs) and host name.",
)
option(
    "--tls-ca",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    group=FORWARDER,
    help="Verify the relay's certificate with this CA instead of the system's (implies --tls).",
)
option(
    "--tls-server-name",
    metavar="NAME",
    group=FORWARDER,
    help="The name the relay's certificate must carry, if not HOST (e.g. HOST is an IP "
    "address; implies --tls).",
)
option(
    "--proxy-protocol",
    type=click.Choice(tuple(PROXY_VERSIONS)),
    group=FORWARDER,
    help="Send the local service a PROXY protocol header (v1 text, v2 binary) with the "
    "public client's address before the first byte.",
)
option(
    "--require-v2",
    is_flag=True,
    group=FORWARDER,
    help="Refuse a relay that does not offer registration v2 (one that sends its port line "
    "at once: the seed protocol, no authentication) instead of registering in seed "
    "mode; without TLS someone in between could remove the relay's challenge.",
)

# -- registration secrets and TLS files: the relay's and the forwarder's
option(
    "--secret",
    metavar="SECRET",
    group=COMMON,
    help="Shared secret: the relay requires it (registration v2), the forwarder proves it. "
    "Prefer RELAY_SECRET or --secret-file: a flag shows in the process list.",
)
option(
    "--secret-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    group=COMMON,
    help="Read the secret from FILE (its content without the final newline).",
)
option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    group=COMMON,
    help="Relay: its TLS certificate (chain), so the control port speaks TLS. Forwarder: "
    "a client certificate for mutual TLS.",
)
option(
    "--tls-key",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    group=COMMON,
    help="The private key of --tls-cert (if not in the same file).",
)

# -- common options
option(
    "--keepalive-interval",
    type=SECONDS,
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    group=COMMON,
    help="Interval of yamux keepalive pings on the relay connection.",
)
option(
    "--keepalive-timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    group=COMMON,
    help="After a keepalive ping, nothing at all from the peer this long ends the "
    "session (any frame proves it alive; a busy link is not a dead one).",
)
option(
    "--max-stream-window",
    type=ByteSize(),
    default="16MiB",
    show_default=True,
    group=COMMON,
    help="Largest receive window of one yamux stream. With --window-autotune (the default) a "
    "stream starts at 256 KiB and grows towards this only while the window limits its "
    "throughput (16MiB fills 1 Gbit/s at 50 ms); without, every stream is granted all "
    "of it at once. 256KiB: hashicorp's fixed window, the seed's wire exactly.",
)
option(
    "--max-session-window",
    type=ByteSize(),
    default="64MiB",
    show_default=True,
    group=COMMON,
    help="With --window-autotune: windows grow only while the sum of one session's stream "
    "windows stays within this (each stream's first 256 KiB always counts).",
)
option(
    "--max-total-window",
    type=ByteSize(minimum=INITIAL_STREAM_WINDOW),
    default="256MiB",
    show_default=True,
    group=COMMON,
    help="With --window-autotune: the same bound for all sessions of this process together "
    "(every registration, every reconnect), so many sessions cannot pin many times "
    "--max-session-window. At least 256KiB.",
)
option(
    "--window-autotune/--no-window-autotune",
    default=True,
    show_default=True,
    group=COMMON,
    help="Grow stream windows as measured (needs --max-stream-window above 256KiB); "
    "--no-window-autotune: hashicorp's fixed window of --max-stream-window.",
)
option(
    "--event-loop",
    type=click.Choice(EVENT_LOOPS),
    default="auto",
    show_default=True,
    group=COMMON,
    help="asyncio's own loop or uvloop; auto uses uvloop when it is installed.",
)
option(
    "-v", "--verbose", is_flag=True, group=COMMON, help="Debug logging (same as --log-level debug)."
)
option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    group=COMMON,
    help="Logging threshold (logs go to stderr).",
)
option(
    "--log-format",
    type=click.Choice(logs.LOG_FORMATS),
    default="text",
    show_default=True,
    group=COMMON,
    help="text: TIME LEVEL logger: message key=value...; logfmt; json: one "
    "object per line. Times are UTC ISO-8601.",
)
option(
    "--metrics",
    type=Endpoint(),
    group=COMMON,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics and a JSON status of every "
    "registration at /status.  [default: off]",
)
option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=drain.DEFAULT_DRAIN_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    group=COMMON,
    help="On SIGTERM stop taking new connections at once (Go Away) and give the ones in "
    "flight this long to finish; 0 closes them at once. A second signal stops at once.",
)
option(
    "--connection-log/--no-connection-log",
    default=True,
    show_default=True,
    group=COMMON,
    help="One INFO line per relayed connection when it ends (bytes both ways, duration).",
)
