"""The relay and its lease store: which store, its membership, and what to do when it is away.

``open_store`` picks the store: Redis with ``--cluster URL``, else the SQLite
of ``--state-dir`` (or one in memory). ``StoreKeeper`` keeps this relay a
member (a heartbeat every ``HEARTBEAT_INTERVAL``), tells the store which ports
it has open (``sync``: after an outage at once, else every
``SYNC_INTERVAL`` at most, which also keeps their leases fresh), and when the
store cannot be reached says so once (WARNING), refuses the registrations that
need it ("retry later", at once, without waiting for the store), probes it
with backoff and says once when it is back (INFO). Sessions and their data
never wait for the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from ..options import RelayOptions
from ..store import Held, LeaseStore, StoreUnavailableError
from ..store.state_dir import open_state_dir
from .failures import FailureLimiter
from .ports import PortAllocator
from .session import RegisteredSession
from .shared_failures import SharedFailureLimiter

logger = logging.getLogger("relay.leases")

HEARTBEAT_INTERVAL = 2.0
"""Seconds between membership heartbeats; the store's member TTL is several of these."""
SYNC_INTERVAL = 60.0
"""Seconds between telling the store our open ports (at most; a quarter of the lease TTL
if that is less): their leases stay fresh however long they are held."""
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
"""Probes of a store that cannot be reached: then every last delay."""


async def open_store(options: RelayOptions) -> LeaseStore:
    """The lease store ``options`` ask for (Redis with ``cluster``, else SQLite)."""
    if options.cluster is not None:
        from ..store.redis_store import RedisLeaseStore

        return await RedisLeaseStore.open(options.cluster, options.lease_ttl)
    return await open_state_dir(options.state_dir, options.lease_ttl)


class StoreKeeper:
    """The relay's membership of its store, and the store's view of its open ports."""

    def __init__(
        self, ports: PortAllocator, sessions: Callable[[], Iterable[RegisteredSession]]
    ) -> None:
        self.ports = ports
        self.health = ports.health
        self._sessions = sessions
        self.sync_interval = min(SYNC_INTERVAL, ports.ttl / 4)

    async def run(self) -> None:
        """Until cancelled: heartbeats, syncs, and probes while the store is away."""
        loop = asyncio.get_running_loop()
        last_sync = loop.time()
        failures = 0
        while True:
            if self.health.problem is None:
                self.health.lost_event.clear()
                try:
                    async with asyncio.timeout(HEARTBEAT_INTERVAL):
                        await self.health.lost_event.wait()
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
            away = self.health.problem is not None
            store = self.ports.store
            try:
                member = await store.heartbeat()
                if away or not member or loop.time() - last_sync >= self.sync_interval:
                    held = self.ports.held()
                    lost = await store.sync(held)
                    last_sync = loop.time()
                    if lost:
                        self._lose(lost)
                    self.health.back(len(held))
            except StoreUnavailableError as exc:
                failures += 1
                self.health.lost(str(exc))
            else:
                failures = 0

    def _lose(self, lost: list[Held]) -> None:
        """The store gave these ports to others while it could not hear from us (a long
        outage): their sessions end, so that no port serves two identities."""
        ports = {item.port for item in lost}
        logger.error(
            "%s gave port(s) %s to other registrations while it could not hear from this "
            "relay; ending their sessions here",
            self.health.describe,
            ", ".join(map(str, sorted(ports))),
        )
        for session in list(self._sessions()):
            if session.public_port in ports:
                session.end(
                    f"public port {session.public_port} went to another registration while "
                    f"the lease store could not be reached"
                )


def shared_failures(store: LeaseStore, local: FailureLimiter) -> SharedFailureLimiter | None:
    """With a Redis store, failed registrations count on every relay of the cluster."""
    from ..store.failures import RedisFailureCounts
    from ..store.redis_store import RedisLeaseStore

    if not isinstance(store, RedisLeaseStore):
        return None
    return SharedFailureLimiter(
        RedisFailureCounts(store), local.limit, local.window, local.max_keys
    )
