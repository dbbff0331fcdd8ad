"""Who may start registering: pending places, per-source slots, failure blocks, refusals.

A control connection costs the relay something before it is a session: a TLS
handshake, a challenge, a public port waiting for its handshake ping. So every
one is admitted first: it takes a place among the pending registrations
(``--max-pending``, all sources; TLS and v2 only) and a slot of its source
(``--max-pending-registrations-per-source``), or it is refused with a reason.
The slot is a token (``relay.server.limits.Slot``) that passes from the TLS
handshake or the challenge to the registration and goes back once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple, Protocol

from yamux.ratelimit import RateLimitedLog

from ..stats import RelayStats
from ..wire.greeting import error_line
from .auth import FailureLimiter
from .limits import Slot, SourceSlots


class PendingRegistration(Protocol):
    """A control connection that is not registered yet (in its TLS handshake, or
    challenged); it counts toward the relay's pending registrations."""

    def abort(self) -> None:
        """Drop the connection: the relay is closing."""


class Refusal(NamedTuple):
    """Why a control connection is not admitted: ``kind`` labels the refusals metric and
    rate-limits the log line, ``reason`` goes on the error line."""

    kind: str
    reason: str


class Admission:
    """The relay's door: what the TLS listener, the challenge and the seed protocol ask."""

    def __init__(
        self,
        *,
        max_pending: int,
        per_source: int,
        failures: FailureLimiter,
        stats: RelayStats,
        log: RateLimitedLog,
    ) -> None:
        self.max_pending = max_pending
        self.pending: set[PendingRegistration] = set()
        self.registering = SourceSlots(per_source)
        """Registrations of each source from admission until their handshake ping is
        answered (or they end)."""
        self.failures = failures
        """Sources blocked after failed v2 registrations."""
        self._stats = stats
        self.log = log
        """Lines any stranger can trigger: refused and failed registrations."""

    def admit(self, source: str) -> Slot | Refusal:
        """A pending place and a slot of ``source``, or why not. The one rule for a
        challenged connection and for one in its TLS handshake."""
        if len(self.pending) >= self.max_pending:
            return Refusal(
                "registrations in progress",
                f"too many registrations in progress ({len(self.pending)}); retry later",
            )
        return self.slot(source)

    def slot(self, source: str) -> Slot | Refusal:
        """A slot of ``source`` (a seed registration takes only this), or why not."""
        slot = self.registering.acquire(source)
        if slot is not None:
            return slot
        return Refusal(
            "registrations in handshake per source",
            f"{self.registering.held(source)} registrations from {source} are still in "
            f"their handshake, the maximum (--max-pending-registrations-per-source "
            f"{self.registering.limit})",
        )

    def failed(self, source: str) -> int:
        """Count a failed v2 registration (for the block of ``source`` and the metric);
        returns how many ``source`` has within the limiter's window."""
        self._stats.auth_failures += 1
        return self.failures.failed(source)

    def refuse(self, transport: asyncio.Transport, peer: str, kind: str, reason: str) -> None:
        """Answer an error line and close (see ``refused``)."""
        self.refused(peer, kind, reason)
        transport.write(error_line(reason))
        transport.close()

    def refused(self, peer: str, kind: str, reason: str) -> None:
        """Count and log a refusal; the line is rate-limited per ``kind``, which is also the
        reason label of the refusals metric."""
        self._stats.refused[kind.replace(" ", "_")] += 1
        self.log.log(
            logging.WARNING,
            f"refused: {kind}",
            "refusing registration from %s: %s",
            peer,
            reason,
            extra={"peer": peer, "reason": reason},
        )

    def abort_pending(self) -> None:
        """Drop every connection not registered yet (the relay is closing)."""
        for pending in list(self.pending):
            pending.abort()
