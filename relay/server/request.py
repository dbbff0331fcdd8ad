"""What a registration asks for: one frozen object from the control connection to the allocator.

A seed registration (``protocol="seed"``: the port line first) asks for
nothing. A v2 registration carries what its checked response said
(``relay.server.challenge``). The port policy (``relay.server.ports``), the
lease store and the session's logs all read this one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..wire.route import RouteKind
from .auth import PortSet
from .leases import Identity

ProtocolName = Literal["seed", "v2"]
"""What a ``RelayServer`` speaks (``relay.options.RelayOptions.protocol`` but notify):
``seed``, the port line first (the Go design); ``v2``, the relay challenges first
(docs/protocol.md)."""


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """A registration's wishes; the defaults are a seed registration's (no name, any port)."""

    protocol: ProtocolName = "seed"
    client: str | None = None
    """The client's name: authenticated with an auth file, informational otherwise."""
    authenticated: bool = False
    service: str | None = None
    """Which of the client's services this is (``service=``); each has its own lease."""
    remote_port: int | None = None
    """The public port asked for (``port=`` on the wire); None: any."""
    allowed_ports: PortSet | None = None
    """Ports this client may hold (auth file); None: whatever the relay's range allows."""
    client_address: bool = False
    """Start every stream with a PROXY v2 header naming the public client."""
    route: RouteKind | None = None
    """Reach the service by a host name on the relay's shared port of this kind, instead of
    a port of its own (``relay.server.routes``)."""
    allowed_hosts: frozenset[str] = frozenset()
    """Host names this client may have besides its names on the domain (auth file)."""
    sessions: int = 1
    """Sessions of this identity that may share its public port (``sessions=``; needs a
    name, so a seed or nameless registration is always 1)."""
    lease: bool = True
    """False for a second live session of an authenticated client: a port of its own
    that leaves the first session's lease alone."""

    @property
    def identity(self) -> Identity | None:
        """Who owns the lease: an authenticated client, per service and remote port (so
        that one client's services each have their own), or an unchecked name (the service
        extends it). Seed, nameless and ``lease=False`` registrations have none."""
        if self.client is None or not self.lease:
            return None
        if self.authenticated:
            return Identity(client=self.client, name=self.service, remote_port=self.remote_port)
        return Identity(
            name=self.client if self.service is None else f"{self.client}/{self.service}"
        )

    def describe(self) -> str:
        """For logs: ``client alice`` (authenticated) or ``unauthenticated client bob``."""
        if self.client is None:
            return "authenticated client" if self.authenticated else "anonymous client"
        service = "" if self.service is None else f" service {self.service}"
        who = "client" if self.authenticated else "unauthenticated client"
        return f"{who} {self.client}{service}"


SEED = RegistrationRequest()
"""The request of every seed registration."""
