"""The lease store: leases, claims and members, in SQLite (embedded) or Redis (a cluster).

``interface`` is the one ``LeaseStore`` protocol; ``sqlite_store`` and
``redis_store`` implement it, ``policy`` is the port policy both run,
``state_dir`` opens the embedded store of ``--state-dir``.
"""

from .interface import (
    Ask,
    Claimed,
    Denied,
    Held,
    Lease,
    LeaseStore,
    NeedsOffer,
    Outcome,
    StoreError,
    StoreUnavailableError,
)

__all__ = [
    "Ask",
    "Claimed",
    "Denied",
    "Held",
    "Lease",
    "LeaseStore",
    "NeedsOffer",
    "Outcome",
    "StoreError",
    "StoreUnavailableError",
]
