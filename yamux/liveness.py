"""Is the peer still there? Keepalive pings, the round-trip time, streams abandoned after Go Away.

A session's liveness checks, apart from its frame handling: the session tells
``Liveness`` when bytes arrive (``heard``) and when it stops reading the peer
(``hold``, ``release``), and gives it the few things it may do (send a ping,
end the session, reset a stream); it runs as the session's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from .config import Config
from .connection import Connection
from .errors import KeepaliveTimeoutError, SessionClosedError, YamuxError
from .ratelimit import RateLimitedLog
from .timers import PingTimes

LOOKS = 8
"""Times per keepalive timeout that an overdue pong's wait looks for bytes received."""


class Liveness:
    """The session's keepalive, RTT estimate and Go Away watch (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        core: Connection,
        pings: PingTimes,
        *,
        flush: Callable[[], None],
        fail: Callable[[YamuxError], None],
        reset: Callable[[int, str], None],
        log: RateLimitedLog,
    ) -> None:
        self._config = config
        self._core = core
        self._pings = pings
        self._flush = flush
        self._fail = fail
        self._reset = reset
        self._log = log
        self._loop = asyncio.get_running_loop()
        self.reads = 0
        """Reads from the peer so far (the session counts them): any frame is proof of life.
        A count, not a time: the keepalive looks at it only while a pong is overdue."""
        self.rtt: float | None = None
        """Smoothed round-trip time of the pings, once one was answered."""
        self.watching_abandoned = False
        self.holding = False
        """We stopped reading the peer (its opens wait for our accepts): see ``hold``."""
        self._released_at = float("-inf")
        """When reading last resumed, on the pings' clock (time.perf_counter)."""

    def hold(self) -> None:
        """We stop reading the peer until the application accepts the streams it opened.

        The peer is alive (those opens prove it), and a silence now is ours: its
        pongs wait behind what we do not read. So the keepalive cannot fail while
        holding; it still pings every interval, so a connection that died shows
        as a write error, and its timeout starts again when reading resumes.
        """
        self.holding = True

    def release(self) -> None:
        self.holding = False
        self._released_at = time.perf_counter()
        self.reads += 1  # the timeout starts again

    async def keepalive(self) -> None:
        """Ping every keepalive_interval; dead only if nothing at all arrives for the timeout.

        A pong can wait behind the peer's queued bulk data on a slow link, but that
        data arriving proves the peer alive; so the deadline is keepalive_timeout
        after the ping or after the last bytes received, whichever is later. While
        the pong is overdue, ``reads`` is looked at every ``timeout / LOOKS``
        seconds: the last bytes count from the look that saw them, so a dead peer
        is found between ``timeout`` and ``timeout * (1 + 1/LOOKS)`` after them.
        """
        interval = self._config.keepalive_interval
        timeout = self._config.keepalive_timeout
        loop = self._loop
        while True:
            await asyncio.sleep(interval)
            opaque = self._core.ping()
            quiet_since = loop.time()
            reads = self.reads
            future = self._pings.start(opaque)
            self._flush()
            try:
                while not future.done() and not self.holding:
                    now = loop.time()
                    if self.reads != reads:
                        reads = self.reads
                        quiet_since = now
                    remaining = quiet_since + timeout - now
                    if remaining <= 0:
                        self._fail(
                            KeepaliveTimeoutError(
                                f"keepalive failed: nothing from the peer within {timeout:g} s "
                                f"of a ping"
                            )
                        )
                        return
                    await asyncio.wait([future], timeout=min(remaining, timeout / LOOKS))
            finally:
                self._pings.discard(opaque)
                ended = future.done() and future.exception() is not None  # also if cancelled
            if ended:
                return  # the session ended; close_reason says why
            if future.done():  # else we hold the peer's input: the pong waits behind it
                self.record_rtt(future.result())

    async def measure_rtt(self) -> None:
        """One ping when data first flows, so window auto-tuning need not wait for the keepalive."""
        opaque = self._core.ping()
        future = self._pings.start(opaque)
        self._flush()
        with contextlib.suppress(SessionClosedError):
            try:
                self.record_rtt(await future)
            finally:
                self._pings.discard(opaque)

    def record_rtt(self, rtt: float) -> None:
        """Smooth in one ping's round trip, unless we held the peer's input meanwhile."""
        if time.perf_counter() - rtt < self._released_at:
            return
        self.rtt = rtt if self.rtt is None else 0.875 * self.rtt + 0.125 * rtt
        if self._core.tuner is not None:
            self._core.tuner.rtt = self.rtt

    async def reset_abandoned_streams(self) -> None:
        """Every go_away_timeout, reset the streams that got no frame during the last one.

        A libp2p peer drops its streams on Go Away without FIN or RST and keeps the
        socket (and goes on answering pings), so such streams would wait forever.
        A stream the peer still sends anything on (data, window updates) goes on.
        A session left without streams for a whole period closes: after Go Away
        it is winding down, and a libp2p peer will not close it.
        """
        timeout = self._config.go_away_timeout
        core = self._core
        streams = core.streams
        streams.silent()  # starts watching
        was_empty = False
        while True:
            await asyncio.sleep(timeout)
            heard = streams.heard_any
            silent = streams.silent()
            if was_empty and not heard and not core.num_streams:
                self._fail(
                    SessionClosedError(
                        f"session closed: no streams for {timeout:g} s after go away"
                    )
                )
                return
            for stream_id in silent:
                reason = (
                    f"no frame from the peer for {timeout:g} s after go away "
                    f"(the peer abandoned the stream)"
                )
                self._log.log(
                    logging.WARNING,
                    "go-away-abandoned",
                    "stream %d: %s; resetting",
                    stream_id,
                    reason,
                )
                self._reset(stream_id, reason)
            if silent:
                self._flush()
            was_empty = not core.num_streams
