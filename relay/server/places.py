"""Places for registrations in progress, grouped by source; who gives way when they run out.

Every control connection holds one ``Place`` from accept until its
registration is confirmed or it ends. Places are counted per address (an IPv4
address, or an IPv6 /64) and per group (its IPv4 /24, or IPv6 /48). When the
table is full, a newcomer is not refused if its source holds fewer places
than the source that holds the most: it takes the oldest place of that
source. "Holds fewer" compares (group, address) counts lexicographically, so
many addresses of one /24 (a small cloud allocation, or 127.0.0.x on
loopback) lose to a newcomer whose own address holds nothing, even in the
same group. The same rule works inside one address: at the per-address limit
a newcomer takes that address's oldest place, so a flood from behind a NAT
cannot keep a neighbour out by just holding its places.

A place whose registration proved itself (``settle``: its v2 response was
checked) is never taken; nor is one that was never evictable. Everything here
is O(1) per admission: counts sit in buckets by count (``_Ranking``), and each
address keeps its evictable places oldest first.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from typing import Literal

IPV4_GROUP = 24
IPV6_GROUP = 48

Abort = Callable[[str], None]
"""Ends whatever holds a place, for the reason given (the place is already free)."""
Why = Literal["full", "per address"]
"""Why a place was taken from its holder: the table was full, or its address held the most
it may."""


def _nothing(reason: str) -> None:
    """The holder of a released place."""


def group_of(address: str) -> str:
    """The wider group of a source (``relay.server.limits.source_of``): the IPv4 /24, or the
    /48 of an IPv6 /64."""
    if ":" not in address:
        head, dot, _ = address.rpartition(".")
        return f"{head}.0/{IPV4_GROUP}" if dot else address
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return address
    if network.prefixlen <= IPV6_GROUP:
        return str(network)
    return str(network.supernet(new_prefix=IPV6_GROUP))


class _Ranking:
    """Counts per key, and a key with the highest count at hand; each change is O(1)."""

    __slots__ = ("_buckets", "counts", "top_count")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._buckets: dict[int, dict[str, None]] = {}
        """count -> the keys with that count, in the order they reached it."""
        self.top_count = 0

    def __getitem__(self, key: str) -> int:
        return self.counts.get(key, 0)

    def top(self) -> str:
        """A key with the highest count (the ranking is not empty)."""
        return next(iter(self._buckets[self.top_count]))

    def change(self, key: str, step: Literal[1, -1]) -> None:
        old = self.counts.get(key, 0)
        new = old + step
        if old:
            bucket = self._buckets[old]
            del bucket[key]
            if not bucket:
                del self._buckets[old]
        if new:
            self.counts[key] = new
            self._buckets.setdefault(new, {})[key] = None
        else:
            del self.counts[key]
        if new > self.top_count:
            self.top_count = new
        elif old == self.top_count and old not in self._buckets:
            self.top_count = new  # every other key holds less than old, so at most new


class Place:
    """One place in a ``Places`` table, held until ``release()`` (releasing twice is
    harmless). ``with place:`` releases it on leaving the block unless it was handed over.
    """

    __slots__ = ("_abort", "_seq", "_table", "address", "evictable", "group")

    def __init__(
        self, table: Places, address: str, group: str, seq: int, abort: Abort, evictable: bool
    ) -> None:
        self._table: Places | None = table
        self.address = address
        self.group = group
        self._seq = seq
        self._abort = abort
        self.evictable = evictable

    @property
    def held(self) -> bool:
        return self._table is not None

    def hold(self, abort: Abort) -> None:
        """Who holds the place now: ``abort`` ends it if the place is taken from it."""
        self._abort = abort

    def settle(self) -> None:
        """The registration proved itself: nobody takes this place from now on."""
        if self._table is not None and self.evictable:
            self._table._unqueue(self)
        self.evictable = False

    def release(self) -> None:
        if self._table is not None:
            table, self._table = self._table, None
            table._remove(self)
            self._abort = _nothing  # the holder usually holds its place: no cycle left

    def hand_over(self) -> Place:
        """The same place (same age, same holder until ``hold``) as a new token for its next
        owner; this one releases nothing any more."""
        table, self._table = self._table, None
        if table is None:
            raise ValueError(f"the place of {self.address} was released already")
        place = Place(table, self.address, self.group, self._seq, self._abort, self.evictable)
        self._abort = _nothing
        if place.evictable:
            table._queues[self.address][self._seq] = place  # keeps its position: its age
        return place

    def abort(self, reason: str) -> None:
        """Free the place, then end its holder."""
        abort = self._abort
        self.release()
        abort(reason)

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Places:
    """At most ``limit`` places, at most ``per_address`` per address (0: no such limit).

    ``take`` may end the holder of another place to make room: ``evicted`` hears of the
    victim and why first, and says the reason its holder is ended with.
    """

    def __init__(self, limit: int, per_address: int, evicted: Callable[[Place, Why], str]) -> None:
        if limit < 1 or per_address < 0:
            raise ValueError(f"need limit >= 1 and per_address >= 0, got {limit}, {per_address}")
        self.limit = limit
        self.per_address = per_address
        self._evicted = evicted
        self._count = 0
        self._groups = _Ranking()
        self._addresses: dict[str, _Ranking] = {}
        """group -> the counts of its addresses."""
        self._queues: dict[str, dict[int, Place]] = {}
        """address -> its evictable places, oldest first."""
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._count

    def held(self, address: str) -> int:
        addresses = self._addresses.get(group_of(address))
        return 0 if addresses is None else addresses[address]

    def take(self, address: str, abort: Abort, *, evictable: bool = True) -> Place | None:
        """A place for ``address``, taking the oldest place of whoever holds the most if need
        be; None if even that is not possible (the one to give way holds only settled places,
        or does not hold more than ``address``)."""
        group = group_of(address)
        plan = self._plan(address, group)
        if plan is False:
            return None
        if plan is not True:
            victim, why = plan
            victim.abort(self._evicted(victim, why))
        place = Place(self, address, group, next(self._seq), abort, evictable)
        self._count += 1
        self._groups.change(group, 1)
        self._addresses.setdefault(group, _Ranking()).change(address, 1)
        if evictable:
            self._queues.setdefault(address, {})[place._seq] = place
        return place

    def abort_all(self, reason: str) -> None:
        """End every evictable place (the relay is closing)."""
        for queue in list(self._queues.values()):
            for place in list(queue.values()):
                place.abort(reason)

    def _plan(self, address: str, group: str) -> tuple[Place, Why] | bool:
        """What a place for ``address`` takes: nothing (True), the place of another (a
        victim and why), or it cannot be had (False). One victim at most: at its share an
        address gives way to itself, and the table is no longer full after that."""
        addresses = self._addresses.get(group)
        held = 0 if addresses is None else addresses[address]
        if self.per_address and held >= self.per_address:
            victim = self._oldest(address)
            return False if victim is None else (victim, "per address")
        if self._count < self.limit:
            return True
        top = self._addresses[self._groups.top()]
        top_address = top.top()
        if (self._groups[group], held) >= (self._groups.top_count, top[top_address]):
            return False
        victim = self._oldest(top_address)
        return False if victim is None else (victim, "full")

    def _oldest(self, address: str) -> Place | None:
        """The oldest evictable place of ``address``."""
        queue = self._queues.get(address)
        return next(iter(queue.values())) if queue else None

    def _unqueue(self, place: Place) -> None:
        queue = self._queues[place.address]
        del queue[place._seq]
        if not queue:
            del self._queues[place.address]

    def _remove(self, place: Place) -> None:
        if place.evictable:
            self._unqueue(place)
        self._count -= 1
        self._groups.change(place.group, -1)
        addresses = self._addresses[place.group]
        addresses.change(place.address, -1)
        if not addresses.counts:
            del self._addresses[place.group]
