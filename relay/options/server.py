"""The relay's options: ``relay server``'s flags and ``RelayServer``'s keywords, declared once.

The limits bound what a stranger can make the relay hold (see
``relay.server.limits``): ``max_sessions`` registrations, ``max_connections``
public connections per session, shares of both per source address, and the
idle timeout.
"""

from __future__ import annotations

import dataclasses
import ssl as ssl_module
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self, get_args

from ..wire.hostname import normal_host
from ..wire.tls import server_context
from .declare import OptionError, option
from .kinds import Choice, Flag, Instance, Integer, PortRange, Seconds, Text, Workers
from .kinds import Path as PathKind
from .shared import SharedOptions

if TYPE_CHECKING:
    from ..server.auth import AuthClient

ProtocolChoice = Literal["seed", "v2", "notify"]
"""``seed``: the port line first, then yamux (the Go design); ``v2``: the relay challenges
first (docs/protocol.md); ``notify``: the first seed design, served by ``NotifyRelay``."""
PROTOCOLS: tuple[ProtocolChoice, ...] = get_args(ProtocolChoice)
CLUSTER_SCHEMES = ("redis", "rediss", "unix")


def check_cluster_url(url: str) -> None:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://`` (TLS) or
    ``unix:///PATH[?db=DB]``; ValueError with the reason (never the password) otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(
            "must be a Redis URL: redis://HOST:PORT/DB, rediss://... (TLS) or unix:///PATH"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"a {parts.scheme}:// URL needs a host, e.g. redis://10.0.0.5:6379/0")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("the port of the Redis URL is not a port number") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"the database of the Redis URL must be a number, not {db!r}")


class ClusterURL(Text):
    """A Redis URL; never shown, since it may carry a password."""

    name = "URL"
    hidden = True

    def __init__(self) -> None:
        super().__init__(check_cluster_url)


MAX_WORKERS = 256
"""More worker processes than this is a typo, not a host."""


@dataclass(frozen=True, kw_only=True)
class RelayOptions(SharedOptions):
    """How a relay runs: ``RelayServer(port, **options)``, ``relay server [OPTIONS] PORT``."""

    bind: str | None = option(
        None,
        Text(),
        "Address of the control port and of the public ports.  "
        "[default: all interfaces, IPv4 and IPv6]",
        metavar="ADDRESS",
    )
    port_range: tuple[int, int] | None = option(
        None,
        PortRange(),
        "Open public ports only in this range, e.g. 5000-5099.  [default: any port the OS chooses]",
    )
    max_sessions: int = option(
        100,
        Integer(1),
        "Most registered services at once; beyond it a registration gets an error line.",
    )
    max_connections: int = option(
        # A busy service meets thousands at once (a burst of 5,000 from one address
        # must pass the per-source share); each costs a descriptor and ~5 KB.
        10_000,
        Integer(1),
        "Most open public connections per registered service; beyond it they are reset.",
    )
    handshake_timeout: float = option(
        10.0,
        Seconds(),
        "A registering side must answer a yamux ping within this, or it is dropped.",
        metavar="SECONDS",
    )
    answer_timeout: float = option(
        # A client answers at once: one round trip. Until then the connection holds a place.
        5.0,
        Seconds(),
        "A v2 client must answer the challenge within this, or it is dropped (and it "
        "counts as a failed registration of its address).",
        metavar="SECONDS",
    )
    tls_handshake_timeout: float = option(
        5.0,
        Seconds(),
        "A TLS handshake on the control port must be done within this, or it is dropped "
        "(and it counts as a failed registration of its address).",
        metavar="SECONDS",
    )
    idle_timeout: float = option(
        # Ten minutes of no byte either way: ssh or a database connection without
        # keepalives usually says something sooner; an idle browser connection is long gone.
        600.0,
        Seconds(zero_off=True),
        "Reset a public connection that moved no byte either way for this long; 0: never.",
        metavar="SECONDS",
    )
    max_connections_per_source: int | None = option(
        None,
        Integer(0),
        "Most public connections per service from one address (IPv6: one /64); 0: no "
        "limit.  [default: nine tenths of --max-connections]",
        metavar="N",
    )
    max_pending_registrations_per_source: int | None = option(
        None,
        Integer(0),
        "Most registrations from one address (IPv6: one /64) still in their handshake; "
        "beyond it a newer one takes the place of its oldest unchecked one; 0: no limit.  "
        "[default: nine tenths of --max-sessions]",
        metavar="N",
    )
    max_pending: int = option(
        # An unanswered challenge costs a socket and a few KiB; a TLS handshake more
        # (--max-tls-handshakes).
        10_000,
        Integer(1),
        "Most registrations in progress (TLS handshake, challenge, waiting for the yamux "
        "ping), all sources. When full, a newcomer takes the oldest place of the source "
        "holding the most (its /24 or /48, then its address), if its own holds fewer.",
        metavar="N",
    )
    max_tls_handshakes: int = option(
        # Each costs about 300 KiB on asyncio's loop (its TLS read buffer is 256 KiB), about
        # 60 KiB on uvloop: 256 of them about 80 MiB, 15 MiB. Legitimate handshakes last a
        # round trip or two; a relay of --max-sessions 100 never needs this many at once.
        256,
        Integer(1),
        "Most TLS handshakes in progress on the control port (each takes a place among "
        "--max-pending too); when full, the same rule as there.",
        metavar="N",
    )
    max_failure_sources: int = option(
        10_000,
        Integer(1),
        "Most addresses (with --auth-file: address and client pairs) whose failed "
        "registrations the relay remembers; beyond it those with the fewest are forgotten.",
        metavar="N",
    )
    protocol: ProtocolChoice = option(
        PROTOCOLS[0],
        Choice(PROTOCOLS),
        "Registration protocol: seed is the seed's (port line, then yamux); "
        "v2 challenges first (docs/protocol.md), implied by --secret and "
        "--auth-file; notify is the first seed design ([NEW]<port> lines, the "
        "server dials back, one TCP connection per client; "
        "docs/notify-protocol.md).",
    )
    notify_token: bool = option(
        False,
        Flag(),
        "With --protocol notify: each [NEW] line carries a token ([NEW]<port> <token>) that "
        "the server sends first on its dial-back, so only the registered server can take "
        "a client. Servers of the original design do not send it: they need this off.",
    )
    auth_file: str | None = option(
        None,
        PathKind(),
        "TOML file of named clients, each with its own secret and the ports it may hold "
        '([clients.NAME] secret = ..., ports = "5000-5009"). Re-read when it (or a secret '
        "file it names) changes: a removed client is disconnected; deleted or emptied, "
        "every client of it is.",
        metavar="FILE",
    )
    tls_client_ca: str | None = option(
        None,
        PathKind(),
        "Require a client certificate signed by this CA (mutual TLS; needs --tls-cert).",
        metavar="FILE",
    )
    state_dir: str | None = option(
        None,
        PathKind("DIR"),
        "Keep port leases here (SQLite), so services get their ports back after a relay "
        "restart; implies --protocol v2 (names need it).  [default: leases in memory "
        "only]",
        metavar="DIR",
    )
    cluster: str | None = option(
        None,
        ClusterURL(),
        "Share leases, claimed ports and failure counts with other relays in this Redis "
        "(redis://HOST:PORT/DB, rediss:// for TLS, a password as redis://:PASSWORD@HOST; "
        "prefer RELAY_CLUSTER for that): a service registered with each relay gets the "
        "same public port on all of them; implies --protocol v2 (docs/cluster.md).  "
        "[default: the --state-dir store of this relay alone]",
        metavar="URL",
    )
    lease_ttl: float = option(
        24 * 3600.0,  # frp keeps a port 24 h
        Seconds(),
        "A client's port stays reserved for it this long after it went away.",
        metavar="SECONDS",
    )
    max_name_leases: int = option(
        # A stranger registering under ever new names must not reserve every port for a
        # day (authenticated clients are not counted).
        1000,
        Integer(0),
        "Most leases of unauthenticated names; beyond it a new name is refused.",
    )
    domain: str | None = option(
        None,
        Text(normal_host),
        "Serve services by name under this domain (a DNS wildcard *.DOMAIN points at the "
        "relay): one that registers with --route http or tls is NAME.DOMAIN on --http-port "
        "(by the Host header) or --tls-port (by the TLS server name, never decrypted); "
        "implies --protocol v2.",
        metavar="DOMAIN",
    )
    http_port: int | None = option(
        None,
        Integer(0, 65535, "a port number (0-65535; 0: the OS chooses)"),
        "The shared port of services reached by name over HTTP (80; needs --domain).",
        metavar="PORT",
    )
    tls_port: int | None = option(
        None,
        Integer(0, 65535, "a port number (0-65535; 0: the OS chooses)"),
        "The shared port of services reached by name over TLS (443; needs --domain).",
        metavar="PORT",
    )
    route_timeout: float = option(
        5.0,
        Seconds(),
        "A connection on a shared port must name its service (request head, TLS "
        "ClientHello) within this, or it gets 408 (HTTP) or is closed (TLS).",
        metavar="SECONDS",
    )
    workers: int = option(
        1,
        Workers(MAX_WORKERS),
        "Worker processes that share the control port (SO_REUSEPORT); each registration "
        "lives in the worker that admitted it, with its public port and all its "
        "connections. auto: one per usable core. 1: a single process, no supervisor.",
        metavar="N|auto",
    )
    auth_clients: Mapping[str, AuthClient] | None = option(
        None,
        Instance(Mapping, what="a mapping of names to clients (relay.server.auth)"),
        "Named clients, as ``relay.server.auth.parse_auth_clients`` returns them (the "
        "config file's [[server.clients]]); with or instead of ``auth_file``.",
        cli=False,
        spelled="[[server.clients]]",
    )
    ssl: ssl_module.SSLContext | None = option(
        None,
        Instance(ssl_module.SSLContext, what="an ssl.SSLContext"),
        "The control port's TLS context, instead of one made from ``tls_cert``.",
        cli=False,
    )

    def check_together(self) -> None:
        super().check_together()
        if self.tls_cert is None and (self.tls_key is not None or self.tls_client_ca is not None):
            raise OptionError(
                "tls_key" if self.tls_key is not None else "tls_client_ca",
                "{tls_key} and {tls_client_ca} need {tls_cert}",
            )
        secret = self.secret is not None or self.secret_file is not None
        if secret and (self.auth_file is not None or self.auth_clients):
            raise OptionError(
                "auth_file" if self.auth_file is not None else "auth_clients",
                "give a shared secret ({secret}, {secret_file}) or named clients "
                "({auth_file}, {auth_clients}), not both",
            )
        self._check_routing()
        if self.protocol == "notify" and self.workers > 1:
            raise OptionError(
                "workers",
                "the notify protocol runs in one process: drop {workers} or use --protocol v2",
                self.workers,
            )
        if self.notify_token and self.protocol != "notify":
            raise OptionError("notify_token", "is an option of {protocol} notify only")
        unsupported = (
            self.auth_file,
            self.auth_clients,
            self.tls_cert,
            self.ssl,
            self.state_dir,
            self.cluster,
            self.domain,
        )
        if self.protocol == "notify" and (secret or any(unsupported)):
            raise OptionError(
                "protocol",
                "the notify protocol has no authentication, TLS or leases: drop {secret}, "
                "{auth_file}, {auth_clients}, {tls_cert}, {state_dir}, {cluster}, {domain}",
                self.protocol,
            )

    def _check_routing(self) -> None:
        shared = [name for name in ("http_port", "tls_port") if getattr(self, name) is not None]
        if shared and self.domain is None:
            raise OptionError(shared[0], "{http_port} and {tls_port} need {domain}")
        if self.domain is not None and not shared:
            raise OptionError("domain", "needs {http_port} or {tls_port} (or both)", self.domain)
        if len(shared) == 2 and self.http_port == self.tls_port != 0:
            raise OptionError("tls_port", "must differ from {http_port}", self.tls_port)

    def with_files_read(self) -> Self:
        """These options with the secret file read and the TLS context made (once, here)."""
        options = self.with_secret_read()
        if options.ssl is None and options.tls_cert is not None:
            context = server_context(
                options.tls_cert, options.tls_key or options.tls_cert, options.tls_client_ca
            )
            options = dataclasses.replace(options, ssl=context)
        return options
