"""The relay's failure limiter, with its failures counted by the whole cluster too.

``FailureLimiter`` decides at once, from this relay's own counts; each failure
also goes to the cluster's ``relay.store.failures.FailureCounts``, and the
keys the cluster blocks (failures on any relay) are read back every
``REFRESH`` seconds. So a source that failed on relay A is refused by relay B
within a refresh, and never gets a fresh allowance per relay. When the store
cannot be reached, the local counts still hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import yamux

from ..store import StoreUnavailableError
from ..store.failures import FailureCounts
from .failures import FailureKey, FailureLimiter

logger = logging.getLogger("relay.auth")

REFRESH = 1.0
"""Seconds between reading back the cluster's blocks."""


def shared_key(key: FailureKey) -> str:
    """The store's key for a failure key: the source, then the client name if one is known
    (names never contain a space)."""
    source, name = key
    return source if name is None else f"{source} {name}"


class SharedFailureLimiter(FailureLimiter):
    """A ``FailureLimiter`` whose failures and blocks are also the cluster's."""

    def __init__(
        self, counts: FailureCounts, limit: int = 5, window: float = 60.0, max_keys: int = 10_000
    ) -> None:
        super().__init__(limit, window, max_keys)
        self.counts = counts
        self._shared: dict[str, float] = {}
        """Keys the cluster blocks -> the wall-clock time the block ends."""
        self._tasks = yamux.TaskOwner(logger)
        """The failures on their way to the store (one short call each)."""

    def blocked_for(self, key: FailureKey) -> float:
        ends = self._shared.get(shared_key(key))
        shared = 0.0 if ends is None else max(0.0, ends - time.time())
        return max(super().blocked_for(key), shared)

    def failed(self, key: FailureKey) -> int:
        count = super().failed(key)
        self._tasks.spawn(self._share(shared_key(key)), name="relay-failure-shared")
        return count

    async def refresh(self) -> None:
        """Until cancelled: read the cluster's blocks back."""
        while True:
            await asyncio.sleep(REFRESH)
            with contextlib.suppress(StoreUnavailableError):
                self._shared = await self.counts.blocked()

    async def close(self) -> None:
        self._tasks.cancel()
        await self._tasks.wait()

    async def _share(self, key: str) -> None:
        with contextlib.suppress(StoreUnavailableError):
            wait = await self.counts.failed(key, self.limit, self.window)
            if wait > 0:
                self._shared[key] = time.time() + wait
