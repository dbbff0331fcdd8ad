"""The port policy over any store's data, as one pure step: ``decide``.

Both stores run the same rules (``relay.server.ports`` states them): the
SQLite store calls ``decide`` inside a transaction, the Redis store runs the
same rules in a Lua script (``relay.store.scripts``), and one set of
contract tests holds both to them. ``decide`` reads the store through the
``View`` it is given and returns what to write; it never writes itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from .interface import Ask, Claimed, Denied, How, Lease, NeedsOffer, Outcome, Ranges


class View(Protocol):
    """What the policy reads of a store, inside its transaction."""

    def lease_of(self, key: str) -> Lease | None: ...

    def lease_on(self, port: int) -> Lease | None: ...

    def owners(self, port: int) -> list[tuple[str, str | None]]:
        """``(holder, key)`` of each live claim on ``port``."""

    def held_at(self, key: str) -> set[int]:
        """Ports ``key`` is claimed on by live holders."""

    def names(self) -> int:
        """Leases of unauthenticated names."""

    def leased_ports(self) -> set[int]: ...

    def claimed_ports(self) -> set[int]:
        """Ports claimed by live holders."""


@dataclass(frozen=True, slots=True)
class Write:
    """What an allocation changes: a claim of ``port`` and, with a key, the lease on it."""

    port: int
    key: str | None
    token: str
    granted: float | None
    """The lease's grant time: kept while the lease stays on its port; None: anonymous."""


def contains(ranges: Ranges, port: int) -> bool:
    return any(low <= port <= high for low, high in ranges)


def round_robin(ranges: Ranges, after: int) -> Iterator[int]:
    """Every port of ``ranges`` once, starting after ``after`` and wrapping around."""
    ports = [port for low, high in ranges for port in range(low, high + 1)]
    start = next((i for i, port in enumerate(ports) if port > after), 0)
    yield from ports[start:]
    yield from ports[:start]


def decide(view: View, holder: str, ask: Ask, now: float) -> tuple[Outcome, Write | None]:
    """The outcome of ``ask`` for ``holder`` and what to write for it (None: nothing)."""
    key = ask.key
    lease = view.lease_of(key) if key is not None else None
    if ask.counted and lease is None:
        names = view.names()
        if names >= ask.max_names:
            return Denied("names", count=names), None

    def taken(port: int) -> bool:
        """Claimed by another identity, anonymously, or by this holder already."""
        return any(owner != key or key is None or who == holder for who, owner in view.owners(port))

    def claim(port: int, how: How) -> tuple[Outcome, Write]:
        granted = None if key is None else now
        if granted is not None and lease is not None and lease.port == port:
            granted = lease.granted
        return Claimed(port, how, lease), Write(port, key, ask.token, granted)

    def elsewhere(port: int) -> int | None:
        """The port ``key`` is held on by live holders, if not ``port``."""
        if key is None:
            return None
        held = view.held_at(key) - {port}
        return min(held) if held else None

    if ask.port is not None:
        port = ask.port
        other = view.lease_on(port)
        if other is not None and other.key != key:
            if ask.offered or not view.owners(port):
                return Denied("reserved", port), None
            return Denied("in use by a client", port), None
        if taken(port):
            return Denied("in use", port), None
        held = elsewhere(port)
        if held is not None:
            return Denied("elsewhere", held), None
        return claim(port, "offered" if ask.offered else "requested")
    if lease is not None:
        usable = (
            (ask.candidates is None or contains(ask.candidates, lease.port))
            and lease.port not in ask.exclude
            and not taken(lease.port)
        )
        if usable:
            return claim(lease.port, "leased")
        if key is not None and view.held_at(key):
            return Denied("elsewhere", lease.port), None
    if ask.candidates is None:
        return NeedsOffer(lease), None
    leased = view.leased_ports()
    claimed = view.claimed_ports()
    reserved = 0
    for port in round_robin(ask.candidates, ask.after):
        if port in ask.exclude or port in claimed:
            continue
        if port in leased:
            reserved += 1
            continue
        return claim(port, "free")
    return Denied("no port", count=reserved), None
