"""The other workers of a relay, as the shared ports of one worker see them.

With ``--workers`` a connection on a shared port may name a host that another
worker holds: ``Elsewhere`` is how the worker that read it finds that worker and
hands it the connection (``relay.workers.routes`` implements it over the
supervisor's channel and the lines between workers), ``Handed`` what the other
worker gets.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol

from ..wire.route import RouteKind


class Elsewhere(Protocol):
    """The other workers of this relay, as one worker reaches them (``relay.workers.routes``)."""

    async def where(self, kind: RouteKind, host: str) -> int | None:
        """Which other worker holds ``host`` now, asking the supervisor (None: none)."""

    def send(self, to: int, kind: RouteKind, host: str, early: bytes, sock: socket.socket) -> None:
        """Hand the connection on ``sock`` (``early``: what was read of it) to worker ``to``;
        OSError if that cannot be done now."""


@dataclass(frozen=True, slots=True)
class Handed:
    """A connection another worker read until its host name, then handed here."""

    host: str
    early: bytes
    """What that worker read: the service gets it first, unchanged."""
