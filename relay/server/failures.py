"""Failed registrations per source, or per source and client name: who waits a while.

A failure is counted where it happens: a wrong proof, a malformed response, a
challenge left unanswered (the timeout, or the client closed or reset the
connection), a TLS handshake that failed. After ``limit`` failures within
``window`` seconds a key is blocked until the window has passed.

The key is the source (``relay.server.limits.source_of``) and, on a relay with
named clients, the client name a proof claimed when that client exists: a
forwarder with a stale secret then blocks only itself, not another client
behind the same address. Failures without a known name (no answer, TLS,
malformed, unknown names) count against the source alone.

The table is bounded (``max_keys``) without letting an attacker flush a
blocked key: past the bound it forgets keys whose failures have all expired,
then the least suspicious (fewest failures), oldest first; never one with
more failures while one with fewer is left. Every operation is O(1) amortized.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

FailureKey = tuple[str, str | None]
"""(source, client name): the name only for a client the relay knows, else None."""


class FailureLimiter:
    """After ``limit`` failures of a key within ``window`` seconds, ``blocked_for`` says how
    long it must wait; at most ``max_keys`` keys are remembered."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError(
                f"need limit >= 1, window > 0, max_keys >= 1; got {limit}, {window}, {max_keys}"
            )
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._times: dict[FailureKey, list[float]] = {}
        """The last ``limit`` failure times of each key, oldest first."""
        self._by_count: list[dict[FailureKey, None]] = [{} for _ in range(limit + 1)]
        """Keys by how many failure times they keep (index 0 unused), each in the order
        they reached that count."""
        self._by_last: OrderedDict[FailureKey, None] = OrderedDict()
        """Keys by their last failure, oldest first."""

    def __len__(self) -> int:
        return len(self._times)

    def blocked_for(self, key: FailureKey) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        now = self._clock()
        times = self._recent(key, now)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window - now)

    def failed(self, key: FailureKey) -> int:
        """Count a failure; returns how many ``key`` has within the window."""
        now = self._clock()
        times = [*self._recent(key, now), now]
        self._store(key, times[-self.limit :])
        self._by_last[key] = None
        self._by_last.move_to_end(key)
        if len(self._times) > self.max_keys:
            self._shed(now, keep=key)
        return len(times)

    def _recent(self, key: FailureKey, now: float) -> list[float]:
        times = self._times.get(key)
        if times is None:
            return []
        if now - times[0] < self.window:
            return times
        recent = [t for t in times if now - t < self.window]
        self._store(key, recent)
        return recent

    def _store(self, key: FailureKey, times: list[float]) -> None:
        old = self._times.get(key)
        if old is not None:
            del self._by_count[len(old)][key]
        if times:
            self._times[key] = times
            self._by_count[len(times)][key] = None
        else:
            self._times.pop(key, None)
            self._by_last.pop(key, None)

    def _shed(self, now: float, keep: FailureKey) -> None:
        """Back to ``max_keys``: expired keys first, then the least suspicious, never ``keep``
        (the key that just failed)."""
        while self._by_last:
            oldest = next(iter(self._by_last))
            if now - self._times[oldest][-1] < self.window:
                break
            self._store(oldest, [])
        count = 1
        while len(self._times) > self.max_keys:
            victim = next((k for k in self._by_count[count] if k != keep), None)
            if victim is None:
                count += 1
                continue
            self._store(victim, [])
