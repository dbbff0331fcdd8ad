"""A registration between its checked request and its port line: the await on the store.

The port comes from the lease store (``relay.server.ports``), an await: the
control connection's admission slot stays held meanwhile (``settled`` gives it
back on every way out), bytes the client sends are kept for its yamux session
(``AwaitingPort``), and a second registration of the same identity waits for
the first (``Allocations``) so that one identity is never allocated twice at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .leases import Identity
from .limits import Slot

EARLY_LIMIT = 64 * 1024
"""Bytes a registration may send before its port line is out (it should send none)."""


def settled(transport: asyncio.Transport, slot: Slot, task: asyncio.Task[None]) -> None:
    """The end of an allocation or a replacement, even one cancelled before it ran (the
    relay is closing): the registration's slot goes back unless it went on to its session,
    and a registration left undecided is dropped."""
    slot.release()
    if task.cancelled() or task.exception() is not None:
        transport.abort()


class AwaitingPort(asyncio.Protocol):
    """A registration while its port is allocated (an await on the lease store): bytes
    that arrive meanwhile are kept for its yamux session (a well-behaved client sends none;
    ``EARLY_LIMIT`` at most, then reading pauses), an end is noted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.early = bytearray()
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


class Allocations:
    """Registrations waiting for their port: how many (they count toward
    ``--max-sessions``), and which identities (one allocation each at a time)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._identities: dict[Identity, asyncio.Event] = {}

    def of(self, identity: Identity) -> asyncio.Event | None:
        """The allocation of ``identity`` under way (set when it is done), if any."""
        return self._identities.get(identity)

    def begin(self, identity: Identity | None) -> None:
        self.in_flight += 1
        if identity is not None:
            self._identities[identity] = asyncio.Event()

    def end(self, identity: Identity | None) -> None:
        self.in_flight -= 1
        if identity is not None:
            self._identities.pop(identity).set()


async def after(allocation: asyncio.Event, register: Callable[[], None]) -> None:
    """``register`` again once the allocation of the same identity is done (then that one
    is a holder, and the replacement rules decide)."""
    await allocation.wait()
    register()
