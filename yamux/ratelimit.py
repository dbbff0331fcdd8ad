"""Log lines that a remote party can trigger, bounded per key, with counts of what was held back.

A hostile peer must not write our log (one line per bad frame turned 1.2 MB of
frames into 11 MB of log). ``RateLimitedLog`` lets the first ``burst`` lines of
a key through, then one line per interval, the interval doubling after each
such line up to ``max_interval``; every line that follows suppressed ones says
how many, and ``summary()`` reports the rest when the owner (a session, a
connection) ends. So 100,000 bad frames in a session cost a couple of dozen
lines, however fast or slow they come.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

__all__ = ["RateLimitedLog"]


class _Key:
    __slots__ = ("interval", "logged", "next_at", "pending", "suppressed")

    def __init__(self, interval: float) -> None:
        self.logged = 0
        self.next_at = 0.0
        self.interval = interval
        self.pending = 0
        """Suppressed since the last line of this key."""
        self.suppressed = 0
        """Suppressed in all."""


class RateLimitedLog:
    """A rate limit in front of a ``logging.Logger``, one budget per key.

    Keys are a small fixed set chosen by the calling code (one per kind of
    message), never a value the peer chose, so the bookkeeping is bounded too.
    """

    __slots__ = ("_clock", "_keys", "burst", "interval", "logger", "max_interval")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        interval: float = 10.0,
        max_interval: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.max_interval = max_interval
        self._clock = clock
        self._keys: dict[str, _Key] = {}

    def log(
        self,
        level: int,
        key: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Log ``msg % args`` unless ``key`` is over its budget; True if a line was written.

        ``extra`` goes to the record as with ``Logger.log`` (structured log fields).
        """
        if not self.logger.isEnabledFor(level):
            return False
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key(self.interval)
        if state.logged >= self.burst:
            now = self._clock()
            if now < state.next_at:
                state.pending += 1
                state.suppressed += 1
                return False
            state.next_at = now + state.interval
            state.interval = min(state.interval * 2, self.max_interval)
        elif state.logged == self.burst - 1:
            state.next_at = self._clock() + state.interval
        state.logged += 1
        if state.pending:
            self.logger.log(
                level,
                msg + " (%d similar messages suppressed)",
                *args,
                state.pending,
                exc_info=exc_info,
                extra=extra,
            )
            state.pending = 0
        else:
            self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    @property
    def suppressed(self) -> dict[str, int]:
        """Lines held back so far, per key (only keys that had any)."""
        return {key: s.suppressed for key, s in self._keys.items() if s.suppressed}

    def summary(self, level: int, what: str) -> None:
        """One line counting what is still held back per key, e.g. when ``what`` ends."""
        pending = {key: s.pending for key, s in self._keys.items() if s.pending}
        for state in self._keys.values():
            state.pending = 0
        if pending:
            counts = ", ".join(f"{n} x {key}" for key, n in sorted(pending.items()))
            self.logger.log(level, "%s: suppressed log messages: %s", what, counts)
