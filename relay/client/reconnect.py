"""When to try the relay again, and how to say so without flooding the log.

By default (``relay.options.RegistrationOptions``) the first retry comes after
0.5 s, doubling up to 5 s, each delay +-20 % jitter. The cap decides how long
a forwarder may stay away once the relay is back: at most one delay (<= 6 s
with jitter) whatever the outage lasted.
ngrok's agent caps at 30 s and frp at 20 s; 5 s keeps the endpoint's outage
within a few seconds of the relay's, while a down relay costs one connection
attempt per forwarder every ~5 s (1000 forwarders: ~200 refused SYNs a
second). The jitter spreads the forwarders of a restarted relay apart.

A permanent refusal (docs/protocol.md 1.1) stops the server, unless it is told
to keep trying (``retry_permanent``): then the delay starts at the transient
cap and doubles up to ``PERMANENT_MAX_DELAY``, so a forwarder with a stale
secret costs the relay one try every 5 minutes, not every 5 s. A relay's
``retry-after`` is a lower bound of the next delay.
"""

from __future__ import annotations

import logging
import random
import time

from yamux.ratelimit import RateLimitedLog

PERMANENT_MAX_DELAY = 300.0
"""Longest delay after a permanent refusal, with ``retry_permanent``."""
RETRY_LOG_INTERVAL = 60.0
"""While the relay stays unreachable, one WARNING per this many seconds (each try at DEBUG)."""


class Backoff:
    """Exponential backoff with jitter: ``initial`` doubling up to ``maximum``, each +-20 %."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.2) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return float(min(self.maximum, base * random.uniform(1 - self.jitter, 1 + self.jitter)))

    def reset(self) -> None:
        self.attempt = 0

    def spread(self, seconds: float) -> float:
        """``seconds`` plus up to ``jitter`` of it: a wait of at least that long."""
        return seconds * random.uniform(1, 1 + self.jitter)

    @classmethod
    def after_permanent(cls, transient: Backoff) -> Backoff:
        """The backoff after permanent refusals: from ``transient``'s cap to minutes."""
        return cls(transient.maximum, max(PERMANENT_MAX_DELAY, transient.maximum))


class RetryLog:
    """Failed attempts of one outage: the first at WARNING, then at most one a minute.

    Built on yamux's ``RateLimitedLog`` (the later lines count what they held
    back); every attempt is also logged at DEBUG. ``recovered()`` says at INFO
    how many attempts the outage cost and how long it lasted.
    """

    def __init__(
        self, logger: logging.Logger, what: str, interval: float = RETRY_LOG_INTERVAL
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.failures = 0
        self._first = 0.0
        self._limited = self._new_limit()

    def _new_limit(self) -> RateLimitedLog:
        return RateLimitedLog(
            self.logger, burst=1, interval=self.interval, max_interval=self.interval
        )

    def failed(self, reason: str, delay: float) -> None:
        if self.failures == 0:
            self._first = time.monotonic()
        self.failures += 1
        self.logger.debug(
            "%s: %s; retrying in %.2f s (attempt %d)", self.what, reason, delay, self.failures
        )
        self._limited.log(
            logging.WARNING, "failed", "%s: %s; retrying in %.2f s", self.what, reason, delay
        )

    def refused(self, reason: str, delay: float) -> None:
        """A permanent refusal, retried as asked: every one at WARNING (they are minutes
        apart once the backoff has grown)."""
        if self.failures == 0:
            self._first = time.monotonic()
        self.failures += 1
        self.logger.warning(
            "%s: %s; a permanent refusal, retrying in %.2f s (retry_permanent)",
            self.what,
            reason,
            delay,
        )

    def recovered(self) -> None:
        if self.failures:
            self.logger.info(
                "%s: succeeded after %d failed attempt(s) in %.1f s",
                self.what,
                self.failures,
                time.monotonic() - self._first,
            )
        self.failures = 0
        self._limited = self._new_limit()
