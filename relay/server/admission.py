"""Who may start registering: places, failure blocks, refusals.

A control connection costs the relay something before it is a session: a TLS
handshake, a challenge, a public port waiting for its handshake ping. So every
one takes a place first (``relay.server.places``): among all registrations in
progress (``--max-pending``), of its source (``--max-pending-registrations-
per-source``) and, during a TLS handshake, among the handshakes
(``--max-tls-handshakes``). When places run out, the newcomer takes the oldest
place of the source that holds the most, if its own holds fewer; so a few
addresses cannot keep everyone else out by holding places. The place is a
token that passes from the TLS handshake to the challenge to the registration
and goes back once.

Failures (``relay.server.failures``) block a source, or a source and client
name, for a while. Every refusal is one line with its class
(``relay.wire.refusal``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

from yamux.ratelimit import RateLimitedLog

from ..options import RelayOptions
from ..stats import RelayStats
from ..wire.refusal import RETRY, RefusalKind, format_refusal
from .failures import FailureKey, FailureLimiter
from .limits import share
from .places import Abort, Place, Places, Why


class Refused(NamedTuple):
    """Why a registration is not admitted: ``label`` names the refusals metric's reason and
    rate-limits the log line; ``reason``, ``kind`` and ``retry_after`` make the line.
    ``level``: of its log line (a blocked source's are DEBUG: one WARNING says it is blocked).
    """

    label: str
    reason: str
    kind: RefusalKind
    retry_after: float | None = None
    level: int = logging.WARNING

    def line(self) -> bytes:
        return format_refusal(self.reason, self.kind, self.retry_after)


class Admission:
    """The relay's door: what the TLS listener, the challenge and the seed protocol ask.

    ``block_at_connect``: a source blocked by failures without a client name is refused
    when it connects (a relay without named clients). A relay with named clients cannot
    tell at connect who comes, so it looks at blocks only when a response names its client
    (``blocked``): failures of strangers behind one address never refuse a client's proof.
    """

    def __init__(
        self,
        *,
        max_pending: int,
        per_source: int,
        max_tls_handshakes: int,
        failures: FailureLimiter,
        block_at_connect: bool,
        stats: RelayStats,
        log: RateLimitedLog,
    ) -> None:
        self.places = Places(max_pending, per_source, self._evicted)
        """Every registration in progress, from arrival until its handshake ping is answered
        (or it ends)."""
        self.handshakes = Places(max_tls_handshakes, 0, self._evicted)
        """TLS handshakes in progress, from their ClientHello's first bytes: each holds a TLS
        read buffer (256 KiB on asyncio's loop), so they are fewer than places."""
        self.failures = failures
        self.block_at_connect = block_at_connect
        self._stats = stats
        self.log = log
        """Lines any stranger can trigger: refused, failed and evicted registrations."""

    @classmethod
    def of_relay(
        cls,
        options: RelayOptions,
        failures: FailureLimiter | None,
        stats: RelayStats,
        log: RateLimitedLog,
    ) -> Admission:
        """A relay's admission, from its options; ``failures``: a limiter of the caller's
        own (None: one sized by ``--max-failure-sources``)."""
        named = options.auth_file is not None or bool(options.auth_clients)
        return cls(
            max_pending=options.max_pending,
            per_source=share(options.max_pending_registrations_per_source, options.max_sessions),
            max_tls_handshakes=options.max_tls_handshakes,
            failures=(
                FailureLimiter(max_keys=options.max_failure_sources)
                if failures is None
                else failures
            ),
            block_at_connect=not named,
            stats=stats,
            log=log,
        )

    def admit(self, source: str, abort: Abort) -> Place | Refused:
        """A place for a connection from ``source``, or why not."""
        if self.block_at_connect:
            refused = self.blocked((source, None))
            if refused is not None:
                return refused
        place = self.places.take(source, abort)
        if place is not None:
            return place
        places = self.places
        if places.per_address and places.held(source) >= places.per_address:
            return Refused(
                "registrations in handshake per source",
                f"{places.held(source)} registrations from {source} are still in their "
                f"handshake, the maximum (--max-pending-registrations-per-source "
                f"{places.per_address})",
                RETRY,
            )
        return Refused(
            "registrations in progress",
            f"too many registrations in progress ({len(places)}, the maximum; --max-pending "
            f"{places.limit}); retry later",
            RETRY,
        )

    def start_handshake(self, source: str, abort: Abort) -> Place | Refused:
        """A TLS handshake's place, besides the connection's own: once its ClientHello
        begins, the handshake holds a TLS read buffer."""
        handshake = self.handshakes.take(source, abort)
        if handshake is not None:
            return handshake
        return Refused(
            "tls handshakes",
            f"too many TLS handshakes in progress (--max-tls-handshakes {self.handshakes.limit})",
            RETRY,
        )

    def blocked(self, key: FailureKey) -> Refused | None:
        """The refusal of a blocked ``key``, or None."""
        wait = self.failures.blocked_for(key)
        if wait <= 0:
            return None
        source, client = key
        who = source if client is None else f"{source} as client {client}"
        return Refused(
            "blocked",
            f"too many failed registrations from {who}; retry in {wait:.0f} s",
            RETRY,
            wait,
            logging.DEBUG,
        )

    def failed(self, key: FailureKey) -> None:
        """Count a failed registration of ``key`` (for its block and the metric)."""
        self._stats.auth_failures += 1
        count = self.failures.failed(key)
        if count == self.failures.limit:
            source, client = key
            self.log.log(
                logging.WARNING,
                "blocking",
                "%s%s: %d failed registrations within %g s; refusing it for a while",
                source,
                "" if client is None else f" as client {client}",
                count,
                self.failures.window,
            )

    def refuse(self, transport: asyncio.Transport, peer: str, refused: Refused) -> None:
        """Answer the refusal's line and close (see ``refused``)."""
        self.refused(peer, refused)
        transport.write(refused.line())
        transport.close()

    def refused(self, peer: str, refused: Refused) -> None:
        """Count and log a refusal; the line is rate-limited per label, which is also the
        reason label of the refusals metric."""
        self._stats.refused[refused.label.replace(" ", "_")] += 1
        self.log.log(
            refused.level,
            f"refused: {refused.label}",
            "refusing registration from %s: %s",
            peer,
            refused.reason,
            extra={"peer": peer, "reason": refused.reason},
        )

    def abort_pending(self) -> None:
        """Drop every connection not registered yet (the relay is closing)."""
        self.handshakes.abort_all("relay is shutting down")
        self.places.abort_all("relay is shutting down")

    def _evicted(self, victim: Place, why: Why) -> str:
        """A place taken for a newcomer: counted, logged (rate-limited); the reason its
        holder is ended with."""
        self._stats.refused["evicted"] += 1
        if why == "per address":
            reason = (
                f"{victim.address} started more registrations than "
                f"--max-pending-registrations-per-source ({self.places.per_address}); "
                f"this, its oldest, gave way"
            )
        else:
            reason = (
                f"the relay is full of registrations in progress and {victim.address} "
                f"holds the most; this, its oldest, gave way to a source that holds fewer"
            )
        self.log.log(
            logging.WARNING,
            f"evicted: {why}",
            "dropping a registration in progress from %s: %s",
            victim.address,
            reason,
            extra={"peer": victim.address, "reason": reason},
        )
        return reason
