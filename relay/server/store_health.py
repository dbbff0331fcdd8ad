"""Whether the relay's lease store answers, and saying so once each way."""

from __future__ import annotations

import asyncio
import logging
import time

from .interface import Readiness

logger = logging.getLogger("relay.leases")


def store_readiness(store: StoreHealth, ready: str) -> Readiness:
    """Ready (saying ``ready``) unless the store cannot be reached."""
    if store.problem is not None:
        return Readiness(False, f"{store.describe} cannot be reached: {store.problem}")
    return Readiness(True, ready)


class StoreHealth:
    """Whether the store answers; a change is logged once each way."""

    def __init__(self, describe: str) -> None:
        self.describe = describe
        self.problem: str | None = None
        """Why the store cannot be used now (None: it can)."""
        self._since = 0.0
        self.lost_event = asyncio.Event()

    def lost(self, reason: str) -> None:
        if self.problem is None:
            self._since = time.monotonic()
            logger.warning(
                "%s cannot be reached (%s); registrations that need it are refused until it "
                "is back, sessions go on",
                self.describe,
                reason,
                extra={"reason": reason},
            )
            self.lost_event.set()
        self.problem = reason

    def back(self, resynced: int) -> None:
        if self.problem is not None:
            logger.info(
                "%s is back after %.1f s; %d open port(s) told again",
                self.describe,
                time.monotonic() - self._since,
                resynced,
            )
        self.problem = None
