"""The session's clocks that are not tasks: stream timeouts, the write-stall watch, ping times."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class StreamTimers:
    """One timer per stream id for one purpose, e.g. "ACK awaited" or "peer's FIN awaited".

    ``callback(stream_id)`` runs when a timer fires; a delay of 0 disables them.
    """

    __slots__ = ("_callback", "_delay", "_loop", "_timers")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[[int], None]
    ) -> None:
        self._loop = loop
        self._delay = delay
        self._callback = callback
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def arm(self, stream_id: int) -> None:
        if self._delay:
            self._timers[stream_id] = self._loop.call_later(self._delay, self._fire, stream_id)

    def cancel(self, stream_id: int) -> None:
        timer = self._timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _fire(self, stream_id: int) -> None:
        del self._timers[stream_id]
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
