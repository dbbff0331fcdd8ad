"""The registering side's options: ``relay.register``, ``relay.start_server``, ``Forwarder``.

``RegistrationOptions`` is what one registration needs (and how a server
that registers again reconnects); ``ForwardOptions`` adds what the forwarder
does with the relayed streams. Names follow the command line: ``name`` is a
service's name (its lease), ``client_name`` who we are at a relay with an
auth file, ``remote_port`` the public port we ask for (``port=`` on the wire).
"""

from __future__ import annotations

import dataclasses
import ssl as ssl_module
from dataclasses import dataclass
from typing import Self

from ..wire.route import ROUTE_KINDS, RouteKind
from ..wire.tls import client_context
from ..wire.v2 import MAX_SESSIONS, NAME
from .declare import OptionError, option
from .kinds import PORT, Choice, Endpoint, Flag, Instance, Integer, Seconds, ServiceSpec, Text
from .kinds import Path as PathKind
from .service import Service, check_name
from .shared import SharedOptions

PROXY_VERSIONS = {"v1": 1, "v2": 2}


class RelayAddress(Endpoint):
    """``HOST:PORT`` (``[v6]:PORT``) of a relay's control port."""

    def check(self, value: object) -> tuple[str, int]:
        host, port = super().check(value)
        if port == 0:
            raise ValueError("a relay's port must be 1-65535")
        return host, port


def check_client_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise ValueError("use 1-64 of A-Z a-z 0-9 . _ @ -")


@dataclass(frozen=True, kw_only=True)
class RegistrationOptions(SharedOptions):
    """How to register with a relay, and how to register again when it is lost."""

    remote_port: int | None = option(
        None,
        PORT,
        "Ask the relay for this public port (it refuses it with the reason if it cannot "
        "be had).  [default: the port leased to --name, or any]",
        metavar="PORT",
    )
    name: str | None = option(
        None,
        Text(check_name),
        "Name of the service: the relay keeps its public port for it across reconnects "
        "and restarts (a lease; without auth a convenience, not security).",
        metavar="NAME",
    )
    route: RouteKind | None = option(
        None,
        Choice(ROUTE_KINDS),
        "Reach the service by name on the relay's shared port instead of a port of its own: "
        "http by the Host header (http://NAME.DOMAIN/), tls by the TLS server name "
        "(https://NAME.DOMAIN/; the service keeps its certificate). Needs --name or "
        "--client-name and a relay with --domain; another relay gives a port as usual.",
    )
    relays: tuple[tuple[str, int], ...] = option(
        (),
        RelayAddress(),
        "One more relay to register with (repeatable; a host name with several addresses "
        "is one relay per address): each gives the service a public endpoint, the same "
        "port on relays that share a --cluster store, and each is reconnected to on its own.",
        metavar="HOST:PORT",
        multiple=True,
        flag="--relay",
    )
    sessions: int = option(
        1,
        Integer(1, MAX_SESSIONS),
        "Registrations of each service at once, all on one public port (the relay's "
        "kernel spreads public connections over them, and losing one leaves the port "
        "served by the others); needs --name or --client-name and a relay that offers "
        "it (registration v2), else one is used.",
        metavar="K",
    )
    reconnect: bool = option(
        True,
        Flag(),
        "Reconnect when the relay connection is lost or cannot be made (else exit 1).",
        negatable=True,
    )
    reconnect_delay: float = option(
        0.5,
        Seconds(),
        "First reconnect delay; it doubles (+-20% jitter) after each failure.",
        metavar="SECONDS",
    )
    reconnect_max_delay: float = option(
        5.0, Seconds(), "Longest reconnect delay.", metavar="SECONDS"
    )
    retry_permanent: bool = option(
        False,
        Flag(),
        "Keep trying after a permanent refusal (wrong secret, unknown client, port not "
        "allowed, ...), from --reconnect-max-delay doubling up to 5 minutes, instead of "
        "stopping (the forwarder exits 78).",
    )
    connect_timeout: float = option(
        10.0,
        Seconds(),
        "Time to connect to the relay and get the port line; also to reach the local service.",
        metavar="SECONDS",
    )
    client_name: str | None = option(
        None,
        Text(check_client_name),
        "Our name at the relay (registration v2): selects our secret in its --auth-file.",
        metavar="NAME",
    )
    tls: bool = option(
        False,
        Flag(),
        "Connect to the relay over TLS, verifying its certificate (system CAs) and host name.",
    )
    tls_ca: str | None = option(
        None,
        PathKind(),
        "Verify the relay's certificate with this CA instead of the system's (implies --tls).",
        metavar="FILE",
    )
    tls_server_name: str | None = option(
        None,
        Text(),
        "The name the relay's certificate must carry, if not HOST (e.g. HOST is an IP "
        "address; implies --tls).",
        metavar="NAME",
    )
    require_v2: bool = option(
        False,
        Flag(),
        "Refuse a relay that does not offer registration v2 (one that sends its port line "
        "at once: the seed protocol, no authentication) instead of registering in seed "
        "mode; without TLS someone in between could remove the relay's challenge.",
    )
    client_address: bool | None = option(
        None,
        Flag(),
        "Ask a v2 relay to start every stream with the public client's address (a PROXY v2 "
        "header). None: where it is taken off the stream again: ``start_server`` (as "
        "``peername``), the forwarder with ``proxy_protocol``; not ``register()``.",
        cli=False,
    )
    ssl: ssl_module.SSLContext | bool | None = option(
        None,
        Instance(ssl_module.SSLContext, bool, what="an ssl.SSLContext, True or False"),
        "TLS to the relay: a context, or True for the system CAs; instead of the tls_* options.",
        cli=False,
    )

    def check_together(self) -> None:
        super().check_together()
        if self.reconnect_max_delay < self.reconnect_delay:
            raise OptionError(
                "reconnect_max_delay",
                f"must not be less than {{reconnect_delay}} ({self.reconnect_delay:g})",
                self.reconnect_max_delay,
            )
        if self.tls_key is not None and self.tls_cert is None:
            raise OptionError("tls_key", "{tls_key} needs {tls_cert}")
        if self.route is not None and self.wire_name is None:
            raise OptionError(
                "route", "needs {name} (or {client_name}): the service's name", self.route
            )
        if self.route is not None and self.remote_port is not None:
            raise OptionError(
                "remote_port", "a service reached by name ({route}) has no port of its own"
            )
        if self.route is not None and self.sessions > 1:
            raise OptionError(
                "sessions", "a service reached by name ({route}) has one session", self.sessions
            )
        if self.sessions > 1 and not self.has_identity:
            raise OptionError(
                "sessions",
                "several sessions of a service need an identity the relay can tie them "
                "to: give {name} or {client_name}",
                self.sessions,
            )

    @property
    def has_identity(self) -> bool:
        """The relay can tell this registration's sessions apart from everyone else's."""
        return self.name is not None or self.client_name is not None

    @property
    def wire_name(self) -> str | None:
        """``name=`` of the v2 response: the client's name, else the service's."""
        return self.client_name or self.name

    @property
    def wire_service(self) -> str | None:
        """``service=`` of the v2 response: the service's name, when the client has one."""
        return self.name if self.client_name else None

    def with_files_read(self) -> Self:
        """These options with the secret file read and the TLS context made (once, here)."""
        options = self.with_secret_read()
        if options.ssl is True:
            return dataclasses.replace(options, ssl=ssl_module.create_default_context())
        if options.ssl is None and (
            options.tls or options.tls_ca or options.tls_cert or options.tls_server_name
        ):
            context = client_context(options.tls_ca, options.tls_cert, options.tls_key)
            return dataclasses.replace(options, ssl=context)
        return options


@dataclass(frozen=True, kw_only=True)
class ForwardOptions(RegistrationOptions):
    """A forwarder's options: every registration's, and what it does with each stream."""

    local_forward_host: str = option(
        "127.0.0.1", Text(), "Host of the local service.", metavar="HOST"
    )
    service: tuple[Service, ...] = option(
        (),
        ServiceSpec(),
        "One more service to expose, with its own registration and lease; repeatable, "
        "e.g. --service redis=6379:7201 --service web=8080.",
        metavar="NAME=[HOST:]LOCAL_PORT[:REMOTE_PORT]",
        multiple=True,
    )
    proxy_protocol: int | None = option(
        None,
        Choice(PROXY_VERSIONS),
        "Send the local service a PROXY protocol header (v1 text, v2 binary) with the "
        "public client's address before the first byte.",
    )

    @property
    def has_identity(self) -> bool:
        """Every ``--service`` has a name (and an unnamed LOCAL_PORT beside them is refused
        when the services are made)."""
        return super().has_identity or bool(self.service)
