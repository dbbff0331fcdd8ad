"""What one stranger may hold on the relay: per-source slots, and the idle timeout.

A public port or the control port is open to anyone, so a single address must
not be able to take every slot (``--max-connections`` public connections of a
service, ``--max-sessions`` registrations) and keep them forever. Three options
of ``relay.options.RelayOptions``, each 0 to turn it off:

* ``max_connections_per_source``: concurrent public connections per service
  from one source (default: nine tenths of ``--max-connections``);
* ``max_pending_registrations_per_source``: registrations from one source
  that have not yet answered the handshake ping, on a TLS relay from the
  moment they are accepted (default: nine tenths of ``--max-sessions``;
  counted by ``relay.server.places``, where a newer one takes the place of
  the oldest);
* ``idle_timeout``: a public connection that moved no byte either way for
  this long is reset (both the socket and its stream).

Every public connection is a file descriptor: ``check_descriptors`` says at
start when the process's limit is below what one service may hold.

A source is an IPv4 address, or an IPv6 /64 (one host usually owns a whole
/64, so counting single IPv6 addresses would be no limit at all).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import resource
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

IPV6_PREFIX = 64
DESCRIPTOR_RESERVE = 100
"""Descriptors a relay holds besides public connections: listeners, control connections."""

logger = logging.getLogger("relay.server")


def share(per_source: int | None, slots: int) -> int:
    """A per-source limit out of ``slots`` in all: as given, or by default all but a tenth.

    All but a tenth: one source never takes every slot, while a busy client behind
    one address (a load test, an office behind NAT) and small limits such as
    ``--max-connections 2`` work as before. A relay facing the internet should set
    a tighter number.
    """
    return slots - slots // 10 if per_source is None else per_source


def check_descriptors(max_connections: int) -> None:
    """Warn when the file limit (``ulimit -n``) is below one service's ``max_connections``:
    then accept() fails for every service, not just this one, before that limit holds."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= max_connections + DESCRIPTOR_RESERVE:
        return
    logger.warning(
        "file descriptors: at most %d (ulimit -n), fewer than one service's "
        "--max-connections %d needs; raise the limit (systemd: LimitNOFILE=) or lower "
        "--max-connections",
        soft,
        max_connections,
    )


def source_of(peername: Any) -> str:
    """The source a peer address counts against: the IPv4 address, or the IPv6 /64."""
    if not peername:
        return "unknown"
    host = str(peername[0])
    if ":" not in host:
        return host  # IPv4, already canonical as the OS reports it (the common, fast case)
    host = host.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class SourceSlots:
    """Counts what each source holds; ``acquire`` refuses past ``limit`` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"a per-source limit must be >= 0 (0: off), got {limit}")
        self.limit = limit
        self._held: dict[str, int] = {}

    def held(self, source: str) -> int:
        return self._held.get(source, 0)

    def acquire(self, source: str) -> Slot | None:
        """A slot of ``source``, or None if it holds ``limit`` already."""
        held = self._held.get(source, 0)
        if self.limit and held >= self.limit:
            return None
        self._held[source] = held + 1
        return Slot(self, source)

    def _give_back(self, source: str) -> None:
        held = self._held.get(source, 0) - 1
        if held > 0:
            self._held[source] = held
        else:
            self._held.pop(source, None)

    def __len__(self) -> int:
        """Sources holding at least one slot."""
        return len(self._held)


class Slot:
    """One slot of a ``SourceSlots``, held until ``release()``; releasing twice is harmless,
    so every way out of whatever holds it may release it. ``with slot:`` releases it on
    leaving the block unless it was handed over."""

    __slots__ = ("_slots", "source")

    def __init__(self, slots: SourceSlots, source: str) -> None:
        self._slots: SourceSlots | None = slots
        self.source = source

    def release(self) -> None:
        if self._slots is not None:
            slots, self._slots = self._slots, None
            slots._give_back(self.source)

    def hand_over(self) -> Slot:
        """The same hold as a new token for its next owner; this one releases nothing."""
        slots, self._slots = self._slots, None
        if slots is None:
            raise ValueError(f"the slot of {self.source} was released already")
        return Slot(slots, self.source)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Active(Protocol):
    """A connection the idle timeout watches: it counts what it moves in ``activity``."""

    activity: int


A = TypeVar("A", bound=Active)


class IdleWatch(Generic[A]):
    """Resets public connections that moved no byte either way for ``timeout`` seconds.

    One timer for all connections, not one per connection: it ticks every
    tenth of the timeout (at most every 10 s, at least every 50 ms) while
    something is watched. Each tick takes a connection's activity counter
    back to zero and counts the ticks in a row that found it at zero (a small
    int: nothing is allocated per connection and tick). A connection is closed
    between ``timeout`` and ``timeout`` + two ticks after its last byte.
    """

    def __init__(self, timeout: float, on_idle: Callable[[A], None]) -> None:
        if timeout < 0:
            raise ValueError(f"idle timeout must be >= 0 seconds (0: off), got {timeout}")
        self.timeout = timeout
        self._on_idle = on_idle
        self._tick = min(max(timeout / 10, 0.05), 10.0)
        self._quiet_limit = math.ceil(timeout / self._tick) + 1
        """Quiet ticks in a row that close a connection: the first may come right after
        its last byte, so one more than ``timeout`` holds."""
        self._watched: dict[A, int] = {}
        """Each connection's quiet ticks in a row."""
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def watch(self, end: A) -> None:
        if not self.timeout or self._closed:
            return
        self._watched[end] = 0
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._check)

    def forget(self, end: A) -> None:
        self._watched.pop(end, None)

    def close(self) -> None:
        """Stop watching for good (the relay is closing; its connections end anyway)."""
        self._closed = True
        self._watched.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        idle = []
        watched = self._watched
        limit = self._quiet_limit
        for end, quiet in watched.items():
            if end.activity:
                end.activity = 0
                watched[end] = 0
            elif quiet + 1 >= limit:
                idle.append(end)
            else:
                watched[end] = quiet + 1
        for end in idle:
            del watched[end]
            self._on_idle(end)
        self._timer = (
            asyncio.get_running_loop().call_later(self._tick, self._check) if watched else None
        )
