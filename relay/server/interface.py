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


@dataclass(frozen=True, slots=True)
class Health:
    """Whether a relay takes registrations now (``/readyz``), and why not."""

    ready: bool
    reason: str
    """Why it is not ready (``starting``, ``draining``, ``lease store unreachable: ...``),
    or what it does when it is."""


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

    def health(self) -> Health:
        """Ready to take registrations, or why not."""
