"""What the CLI, the drain and the metrics see of a relay, whichever protocol it speaks.

``RelayServer`` (seed and v2) and ``NotifyRelay`` (the notify protocol) both
are a ``Relay``; the operations code is written against this protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import yamux

from ..stats import RelayStats


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A registered session as seen from outside (``Relay.sessions``)."""

    id: int
    peer: str
    public_port: int
    confirmed: bool
    connections: int
    since: float = 0.0
    """Unix time of the registration."""
    bytes_in: int = 0
    """From the public clients, connections still open included."""
    bytes_out: int = 0
    streams: int = 0
    rtt: float | None = None
    """Seconds of the last keepalive (or handshake) ping."""
    stalls: int = 0
    """Times a stream paused its public connection because the peer's window was full."""
    client: str | None = None
    """The client's name (registration v2); None for a seed-protocol registration."""
    host: str | None = None
    """The host name of a service reached by name on a shared port (``public_port``)."""
    authenticated: bool = False
    """``client`` and ``service`` were vouched for by a secret or the auth file; else a
    stranger may have chosen them."""
    service: str | None = None
    """Which of the client's services (``service=`` of registration v2)."""


@dataclass(frozen=True, slots=True)
class AuthFileStatus:
    """How the last read of a relay's auth file went (``relay.server.auth_file``)."""

    path: str
    ok: bool
    """The file on disk (and the secret files it names) is in force as written."""
    clients: int
    """Clients of the file in force."""
    error: str | None
    since: float
    """Unix time of the read that gave this status."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a relay (or forwarder) should get new work now, and why not (``/readyz``)."""

    ready: bool
    reason: str
    """A few words for the operator: "serving on port 7000", "draining", ..."""


class Relay(Protocol):
    """A relay as something to run, drain and watch."""

    @property
    def port(self) -> int:
        """The control port (after ``start()``)."""

    @property
    def sessions(self) -> list[SessionInfo]: ...

    @property
    def stats(self) -> RelayStats:
        """Counters that outlive the sessions."""

    @property
    def draining(self) -> bool: ...

    def readiness(self) -> Readiness:
        """Ready once listening, until the drain or close starts (and while whatever it
        depends on answers)."""

    @property
    def auth_file_status(self) -> AuthFileStatus | None:
        """None without an auth file."""

    @property
    def yamux_config(self) -> yamux.Config | None:
        """The yamux settings of its sessions; None if it speaks no yamux."""

    async def start(self) -> None: ...

    async def serve_forever(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def drain(self) -> None:
        """Stop taking registrations and public connections; the ones in flight go on."""

    async def wait_idle(self) -> None:
        """Until no public connection is open."""
