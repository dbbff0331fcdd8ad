"""A relay that is one of several processes on a host (``relay server --workers N``).

The processes share the control port (each its own SO_REUSEPORT listener) and
each keeps the registrations it admitted, with their public ports and
connections. They share the lease store: the SQLite of the state directory
(or a private one the supervisor makes, for leases that last as long as it
does), each worker a holder of its own, or the cluster's store with
``--cluster``. Who holds which identity they learn from the supervisor
(``relay.server.identities``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import RelayOptions
from ..store import LeaseStore
from ..store.state_dir import open_state_dir
from .membership import open_store


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Which of the host's relay processes this one is, and what it shares with the others."""

    index: int
    """1 to ``count``; 0 is the supervisor, which holds no registration."""
    count: int
    state_dir: str | None = None
    """The directory of the lease store the workers share (``--state-dir``, or the
    supervisor's private one; locked by the supervisor); None with ``--cluster``."""


async def open_shared_store(
    options: RelayOptions, state_dir: str | None, holder: str | None = None
) -> LeaseStore:
    """The lease store of a relay's workers, as ``holder`` (None: a new holder, for a worker
    that starts; the name of a dead worker, for the supervisor to end its claims)."""
    if options.cluster is not None or state_dir is None:
        if holder is None:
            return await open_store(options)
        from ..store.redis_store import RedisLeaseStore

        assert options.cluster is not None
        return await RedisLeaseStore.open(options.cluster, options.lease_ttl, holder=holder)
    return await open_state_dir(state_dir, options.lease_ttl, lock=False, holder=holder)
