"""The session's clocks that are not tasks: stream timeouts, the write-stall watch, ping times."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

_SLACK = 0.001
"""A deadline this close counts as passed when the timer fires (the loops' clocks and timers
have millisecond granularity: uvloop's at least)."""


class StreamDeadlines:
    """A deadline per stream id for one purpose, e.g. "ACK awaited" or "peer's FIN awaited".

    ``callback(stream_id)`` runs once a stream's deadline passes; a delay of 0
    disables them. All share one timer: the delay is the same for every stream, so
    the deadlines fall due in the order they were set, and the timer is always that
    of the oldest. Setting or clearing one is a dict operation (no timer handle per
    stream; one that was cleared is skipped when the timer fires).
    """

    __slots__ = ("_callback", "_delay", "_due", "_loop", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[[int], None]
    ) -> None:
        self._loop = loop
        self._delay = delay
        self._callback = callback
        self._due: dict[int, float] = {}
        """Each stream's deadline (loop.time()), oldest first."""
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, stream_id: int) -> None:
        if not self._delay:
            return
        due = self._due
        due.pop(stream_id, None)  # armed again: it moves to the end
        due[stream_id] = self._loop.time() + self._delay
        if self._timer is None:
            self._timer = self._loop.call_at(due[next(iter(due))], self._fire)

    def cancel(self, stream_id: int) -> None:
        self._due.pop(stream_id, None)

    def cancel_all(self) -> None:
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        due = self._due
        now = self._loop.time() + _SLACK
        while due:
            stream_id = next(iter(due))
            when = due[stream_id]
            if when > now:
                if self._timer is None:  # a callback may have armed it already
                    self._timer = self._loop.call_at(when, self._fire)
                return
            del due[stream_id]
            self._callback(stream_id)


class WriteStallWatch:
    """While the transport is paused, ``on_stall(buffered)`` once a whole ``timeout`` passes
    without its write buffer shrinking (hashicorp's connection write timeout)."""

    __slots__ = ("_loop", "_on_stall", "_timeout", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, on_stall: Callable[[int], None]
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_stall = on_stall
        self._timer: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.WriteTransport) -> None:
        """The transport paused writing; a watch already running goes on."""
        if self._timer is None:
            self._arm(transport, transport.get_write_buffer_size())

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, transport: asyncio.WriteTransport, buffered: int) -> None:
        self._timer = self._loop.call_later(self._timeout, self._check, transport, buffered)

    def _check(self, transport: asyncio.WriteTransport, before: int) -> None:
        now = transport.get_write_buffer_size()
        if now < before:
            self._arm(transport, now)
            return
        self._timer = None
        self._on_stall(now)


class PingTimes:
    """Pings awaiting their pong: each one's future and when it went out.

    Timed with ``time.perf_counter``, not the loop's clock: uvloop's ``loop.time()``
    counts whole milliseconds, so a loopback or LAN round trip would read as 0.
    """

    __slots__ = ("_loop", "_pending", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[int, tuple[asyncio.Future[float], float]] = {}
        self.last: float | None = None
        """Seconds of the last answered ping."""

    def start(self, opaque: int) -> asyncio.Future[float]:
        """A future for the seconds from now until ``pong(opaque)``; ``discard`` it after."""
        future: asyncio.Future[float] = self._loop.create_future()
        self._pending[opaque] = (future, time.perf_counter())
        return future

    def discard(self, opaque: int) -> None:
        self._pending.pop(opaque, None)

    def pong(self, opaque: int) -> bool:
        """The pong for ``opaque`` arrived; False if no ping waits for it."""
        entry = self._pending.get(opaque)
        if entry is None:
            return False
        if not entry[0].done():
            self.last = time.perf_counter() - entry[1]
            entry[0].set_result(self.last)
        return True

    def fail_all(self, error: BaseException) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
