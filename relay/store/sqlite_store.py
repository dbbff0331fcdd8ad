"""The embedded lease store: one SQLite database, safe for several processes of one host.

The database is the state directory's ``leases.sqlite3`` (``--state-dir``), a
file the caller names (several worker processes of one relay share one), or
a private in-memory one. Every step is one ``BEGIN IMMEDIATE`` transaction
that reads what it decides on, so concurrent writers (other processes,
waiting up to ``BUSY_TIMEOUT`` for the write lock) never see half a change and
never decide on stale data: nothing is cached in memory. WAL mode: a crash
(even SIGKILL) leaves either the old or the new state, never half of one; a
power loss may forget the last changes before it, never corrupt the file.

Calls run on one thread of the store's own, so a writer waiting for the lock
never stalls the event loop. A file that cannot be read is moved aside with
an ERROR in the log and the store starts empty; a state directory that cannot
be used at all leaves the leases in memory (they end with the process). A
write that fails later (disk full, lock held too long) raises
StoreUnavailableError: that registration is refused with "retry later".
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .interface import (
    Ask,
    Claimed,
    Held,
    Lease,
    Outcome,
    StoreUnavailableError,
)
from .policy import Write, decide
from .schema import immediate, open_database

logger = logging.getLogger("relay.leases")

BUSY_TIMEOUT = 5.0
"""Seconds a step waits for another process's write transaction before it gives up."""
MEMBER_TTL = 15.0
"""Seconds a holder stays a member without a heartbeat (``relay.server.relay`` beats
more often); then its claims end."""

T = TypeVar("T")


def new_holder() -> str:
    """A holder name unique per process start: host, pid and a random part."""
    return f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqliteLeaseStore:
    """``LeaseStore`` on SQLite: ``await SqliteLeaseStore.open(path, ttl)`` (path None: in
    memory), then the interface's steps, then ``close()``."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path | None,
        ttl: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        member_ttl: float = MEMBER_TTL,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self._db = db
        self.path = path
        self._ttl = ttl
        self._holder = holder or new_holder()
        self.clock = clock
        """The time of leases (grants, last use, expiry); membership runs on wall time."""
        self.member_ttl = member_ttl
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="relay-leases")
        self._failing: str | None = None
        self._closed = False
        self.after_close: Callable[[], None] | None = None
        """Run once the database is closed (the state directory's lock goes)."""

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None,
        ttl: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        member_ttl: float = MEMBER_TTL,
    ) -> SqliteLeaseStore:
        """The store in the database file ``path`` (created if need be; None: in memory),
        this holder a member of it. An unreadable file is moved aside (logged)."""
        file = None if path is None else Path(path)
        db = await asyncio.to_thread(open_database, file)
        if db is None:
            file = None
            db = await asyncio.to_thread(open_database, None)
            assert db is not None
        store = cls(db, file, ttl, holder=holder, clock=clock, member_ttl=member_ttl)
        try:
            await store._run(store._join)
        except BaseException:
            await store.close()
            raise
        return store

    # ------------------------------------------------------------ interface
    @property
    def holder(self) -> str:
        return self._holder

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def persistent(self) -> bool:
        """True if the leases are in a file (they outlive the process)."""
        return self.path is not None

    def describe(self) -> str:
        return "leases in memory" if self.path is None else f"lease store {self.path}"

    async def allocate(self, ask: Ask) -> Outcome:
        return await self._run(self._allocate, ask)

    async def abandon(self, ask: Ask, claimed: Claimed) -> None:
        await self._run(self._abandon, ask, claimed)

    async def release(self, port: int, token: str) -> None:
        await self._run(self._release, port, token)

    async def heartbeat(self) -> bool:
        return await self._run(self._heartbeat)

    async def sync(self, held: list[Held]) -> list[Held]:
        return await self._run(self._sync, held)

    async def leave(self) -> None:
        await self._run(self._leave)

    async def lease_of(self, key: str) -> Lease | None:
        return await self._run(self._lease_of, key)

    async def lease_on(self, port: int) -> Lease | None:
        return await self._run(self._lease_on, port)

    async def leases(self) -> list[Lease]:
        return await self._run(self._all)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        finally:
            self._thread.shutdown(wait=False)
            after, self.after_close = self.after_close, None
            if after is not None:
                after()

    # ------------------------------------------------------------ plumbing
    async def _run(self, step: Callable[..., T], *args: object) -> T:
        """``step(*args)`` in one write transaction, on the store's thread."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._thread, immediate, self._db, step, *args)
        except sqlite3.Error as exc:
            reason = f"{self.describe()}: {exc}"
            if self._failing is None:
                logger.error("%s; registrations that need it are refused until it works", reason)
            self._failing = reason
            raise StoreUnavailableError(reason) from exc
        if self._failing is not None:
            logger.warning("%s works again", self.describe())
            self._failing = None
        return result

    def _q(self, sql: str, *args: object) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------- steps (thread)
    def _join(self) -> None:
        self._beat()
        self._gc()
        count = self._q("SELECT COUNT(*) FROM leases")[0][0]
        logger.info("%s: %s lease(s)", self.describe(), count)

    def _beat(self) -> bool:
        """Renew the membership; False if it had lapsed (then the claims it had are gone:
        others may have taken their ports meanwhile)."""
        now = time.time()
        cursor = self._db.execute(
            "UPDATE members SET expires = ? WHERE holder = ? AND expires > ?",
            (now + self.member_ttl, self._holder, now),
        )
        if cursor.rowcount:
            return True
        self._db.execute("DELETE FROM claims WHERE holder = ?", (self._holder,))
        self._db.execute(
            "INSERT OR REPLACE INTO members (holder, expires) VALUES (?, ?)",
            (self._holder, now + self.member_ttl),
        )
        return False

    def _heartbeat(self) -> bool:
        return self._beat()

    def _allocate(self, ask: Ask) -> Outcome:
        now = self.clock()
        self._expire(now)
        outcome, write = decide(_View(self), self._holder, ask, now)
        if write is not None:
            self._write(write, now)
        return outcome

    def _write(self, write: Write, now: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO claims (holder, port, identity, token) VALUES (?, ?, ?, ?)",
            (self._holder, write.port, write.key, write.token),
        )
        if write.key is not None:
            self._db.execute("DELETE FROM leases WHERE identity = ?", (write.key,))
            self._db.execute(
                "INSERT INTO leases (identity, port, granted, last_used) VALUES (?, ?, ?, ?)",
                (write.key, write.port, write.granted, now),
            )

    def _abandon(self, ask: Ask, claimed: Claimed) -> None:
        self._db.execute(
            "DELETE FROM claims WHERE holder = ? AND port = ? AND token = ?",
            (self._holder, claimed.port, ask.token),
        )
        key = ask.key
        if key is None or claimed.how == "leased":
            return
        view = _View(self)
        lease = view.lease_of(key)
        if lease is None or lease.port != claimed.port or claimed.port in view.held_at(key):
            return
        self._db.execute("DELETE FROM leases WHERE identity = ?", (key,))
        previous = claimed.previous
        if previous is not None and view.lease_on(previous.port) is None:
            self._db.execute(
                "INSERT INTO leases (identity, port, granted, last_used) VALUES (?, ?, ?, ?)",
                (key, previous.port, previous.granted, previous.last_used),
            )

    def _release(self, port: int, token: str) -> None:
        rows = self._q(
            "SELECT identity FROM claims WHERE holder = ? AND port = ? AND token = ?",
            self._holder,
            port,
            token,
        )
        if not rows:
            return
        self._db.execute(
            "DELETE FROM claims WHERE holder = ? AND port = ? AND token = ?",
            (self._holder, port, token),
        )
        if rows[0][0] is not None:
            self._db.execute(
                "UPDATE leases SET last_used = ? WHERE identity = ? AND port = ?",
                (self.clock(), rows[0][0], port),
            )

    def _sync(self, held: list[Held]) -> list[Held]:
        now = self.clock()
        self._beat()
        self._gc()
        mine = {
            (port, token)
            for port, token in self._q(
                "SELECT port, token FROM claims WHERE holder = ?", self._holder
            )
        }
        wanted = {(h.port, h.token) for h in held}
        for port, token in mine - wanted:
            self._db.execute(
                "DELETE FROM claims WHERE holder = ? AND port = ? AND token = ?",
                (self._holder, port, token),
            )
        view = _View(self)
        lost = []
        for item in held:
            if (item.port, item.token) in mine:
                continue
            ask = Ask(item.key, item.token, port=item.port, offered=True)
            _, write = decide(view, self._holder, ask, now)
            if write is None:
                lost.append(item)
            else:
                self._write(write, now)
        keys = [(now, h.key) for h in held if h.key is not None]
        self._db.executemany("UPDATE leases SET last_used = ? WHERE identity = ?", keys)
        self._expire(now)
        return lost

    def _leave(self) -> None:
        self._db.execute(
            "UPDATE leases SET last_used = ? WHERE identity IN "
            "(SELECT identity FROM claims WHERE holder = ?)",
            (self.clock(), self._holder),
        )
        self._db.execute("DELETE FROM claims WHERE holder = ?", (self._holder,))
        self._db.execute("DELETE FROM members WHERE holder = ?", (self._holder,))

    def _gc(self) -> None:
        """Forget holders whose membership lapsed, and their claims."""
        now = time.time()
        self._db.execute(
            "DELETE FROM claims WHERE holder NOT IN (SELECT holder FROM members WHERE "
            "expires > ? OR holder = ?)",
            (now, self._holder),
        )
        self._db.execute(
            "DELETE FROM members WHERE expires <= ? AND holder != ?", (now, self._holder)
        )

    def _expire(self, now: float) -> None:
        """End the leases unused for ``ttl`` whose identity no live holder claims."""
        stale = self._q(
            "SELECT identity, port FROM leases WHERE last_used < ? AND identity NOT IN "
            "(SELECT identity FROM claims JOIN members USING (holder) WHERE identity IS NOT "
            "NULL AND (expires > ? OR holder = ?))",
            now - self._ttl,
            time.time(),
            self._holder,
        )
        for key, port in stale:
            logger.info("lease of port %s by %s expired (unused for %g s)", port, key, self._ttl)
            self._db.execute("DELETE FROM leases WHERE identity = ?", (key,))

    def _lease_of(self, key: str) -> Lease | None:
        return _lease(self._q("SELECT * FROM leases WHERE identity = ?", key))

    def _lease_on(self, port: int) -> Lease | None:
        return _lease(self._q("SELECT * FROM leases WHERE port = ?", port))

    def _all(self) -> list[Lease]:
        rows = self._q("SELECT * FROM leases ORDER BY port")
        return [Lease(str(k), int(p), float(g), float(u)) for k, p, g, u in rows]


def _lease(rows: list[Any]) -> Lease | None:
    if not rows:
        return None
    key, port, granted, last_used = rows[0]
    return Lease(str(key), int(port), float(granted), float(last_used))


class _View:
    """The policy's reads (``relay.store.policy.View``), inside the store's transaction."""

    def __init__(self, store: SqliteLeaseStore) -> None:
        self._store = store
        self._q = store._q
        self._live = time.time()

    def _live_sql(self) -> str:
        return "holder IN (SELECT holder FROM members WHERE expires > ? OR holder = ?)"

    def lease_of(self, key: str) -> Lease | None:
        return self._store._lease_of(key)

    def lease_on(self, port: int) -> Lease | None:
        return self._store._lease_on(port)

    def owners(self, port: int) -> list[tuple[str, str | None]]:
        rows = self._q(
            f"SELECT holder, identity FROM claims WHERE port = ? AND {self._live_sql()}",
            port,
            self._live,
            self._store.holder,
        )
        return [(str(holder), None if key is None else str(key)) for holder, key in rows]

    def held_at(self, key: str) -> set[int]:
        rows = self._q(
            f"SELECT port FROM claims WHERE identity = ? AND {self._live_sql()}",
            key,
            self._live,
            self._store.holder,
        )
        return {int(port) for (port,) in rows}

    def names(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM leases WHERE identity LIKE 'name:%'")[0][0])

    def leased_ports(self) -> set[int]:
        return {int(port) for (port,) in self._q("SELECT port FROM leases")}

    def claimed_ports(self) -> set[int]:
        rows = self._q(
            f"SELECT DISTINCT port FROM claims WHERE {self._live_sql()}",
            self._live,
            self._store.holder,
        )
        return {int(port) for (port,) in rows}
