"""A registration between its checked request and its port line: the await on the store.

The port comes from the lease store (``relay.server.ports``), an await, after
the claim of the registration's identity (``relay.server.identities``, which
also makes a second registration of an identity wait for the first): the
control connection's admission place stays held meanwhile (``settled`` gives it
back on every way out; ``gave_way`` ends it if a newcomer takes the place), and
bytes the client sends are kept for its yamux session (``AwaitingPort``).
``relay.server.registrar`` runs the steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..wire.refusal import RETRY, format_refusal
from .places import Place

EARLY_LIMIT = 64 * 1024
"""Bytes a registration may send before its port line is out (it should send none)."""


def settled(transport: asyncio.Transport, place: Place, task: asyncio.Task[None]) -> None:
    """The end of an allocation or a replacement, even one cancelled before it ran (the
    relay is closing): the registration's place goes back unless it went on to its session,
    and a registration left undecided is dropped."""
    place.release()
    if task.cancelled() or task.exception() is not None:
        transport.abort()


class AwaitingPort(asyncio.Protocol):
    """A registration while its port is allocated (an await on the lease store): bytes
    that arrive meanwhile are kept for its yamux session (a well-behaved client sends none;
    ``EARLY_LIMIT`` at most, then reading pauses), an end is noted."""

    def __init__(self, transport: asyncio.Transport, early: bytes = b"") -> None:
        self.transport = transport
        self.early = bytearray(early)
        self.ended = False
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self.early += data
        if len(self.early) >= EARLY_LIMIT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.ended = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True


def gave_way(transport: asyncio.Transport) -> Callable[[str], None]:
    """How a registration whose place is taken while it waits (for its identity's claim,
    for its port) ends: told why in a refusal line, then closed."""

    def end(reason: str) -> None:
        if not transport.is_closing():
            transport.write(format_refusal(reason, RETRY))
            transport.close()

    return end
