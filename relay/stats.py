"""Plain counters the relay and the forwarder keep; ``relay.ops.metrics`` renders them.

Kept apart from prometheus_client so the hot path only adds integers, and so
byte counts of connections still open are read live at scrape time (from the
``PipeResult`` each open pipe updates) instead of only when they end.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from .pipe import PipeResult


@dataclass(eq=False)
class Traffic:
    """Connections and bytes of one registration (or one forwarded service)."""

    since: float = field(default_factory=time.time)
    """Unix time it started."""
    connections_total: int = 0
    closed_in: int = 0
    closed_out: int = 0
    closed_stalls: int = 0
    live: set[PipeResult] = field(default_factory=set)
    """Results of the pipes still running, updated by them as bytes flow."""
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def opened(self) -> PipeResult:
        """Count a new connection; the returned result is to be passed to ``pipe()``."""
        result = PipeResult()
        self.connections_total += 1
        self.live.add(result)
        self._idle.clear()
        return result

    def closed(self, result: PipeResult) -> None:
        self.live.discard(result)
        if not self.live:
            self._idle.set()
        self.closed_in += result.sent
        self.closed_out += result.received
        self.closed_stalls += result.stalls

    async def wait_idle(self) -> None:
        """Until no connection is open (for a drain)."""
        await self._idle.wait()

    @property
    def open_connections(self) -> int:
        return len(self.live)

    @property
    def bytes_in(self) -> int:
        """Bytes from the public clients (socket -> stream on the relay)."""
        return self.closed_in + sum(r.sent for r in self.live)

    @property
    def bytes_out(self) -> int:
        """Bytes to the public clients."""
        return self.closed_out + sum(r.received for r in self.live)

    @property
    def stalls(self) -> int:
        return self.closed_stalls + sum(r.stalls for r in self.live)


@dataclass(eq=False)
class RelayStats:
    """Counters of a whole relay that outlive its sessions."""

    sessions_total: int = 0
    connections_total: int = 0
    bytes_in: int = 0
    """Of connections that ended (each live one is added at scrape time)."""
    bytes_out: int = 0
    stalls: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Registrations refused after authentication, by reason: full, no_port, ..."""
    connections_refused: Counter[str] = field(default_factory=Counter)
    """Public connections refused, by reason: max_connections, per_source, draining, ..."""
    connections_handed: int = 0
    """Connections of a shared port handed to the worker that holds their name
    (``--workers``)."""
    auth_failures: int = 0
    """Failed registrations (they block a source): a refused proof, a bad or no response, a
    failed TLS handshake."""

    def session_ended(self, traffic: Traffic) -> None:
        """Keep a finished session's totals in the relay-wide counters."""
        self.bytes_in += traffic.closed_in
        self.bytes_out += traffic.closed_out
        self.stalls += traffic.closed_stalls
