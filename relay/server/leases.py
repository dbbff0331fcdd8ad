"""Port leases: who had which public port, so that the same identity gets it back.

A registration with an identity (an authenticated client, a service ``name``,
or both) leaves a lease ``identity -> port`` behind. The relay hands that port
to the same identity when it comes back (after a network blip, a restart of
the forwarder or of the relay) and to nobody else until the lease has been
unused for ``ttl`` seconds (default 24 hours, as frp's reserved ports).

Without authentication an identity is only a name the registering side chose:
anyone who knows it can take the port. That is a convenience, not security.

The store is one SQLite database in the state directory (``--state-dir``),
written in WAL mode: every change is one transaction, so a crash (even
SIGKILL) leaves either the old or the new lease, never half of one; a power
loss may forget the last changes before it, never corrupt the file. All
reads are served from memory. A store that cannot be read is moved aside
with an ERROR in the log and the relay starts with no leases; one that cannot
be written at all leaves the leases in memory only (they end with the
process). Without a state directory leases live in memory: they survive
reconnects and forwarder restarts but not a relay restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import RelayError

logger = logging.getLogger("relay.leases")

STORE_NAME = "leases.sqlite3"
LOCK_NAME = "relay.lock"
SCHEMA_VERSION = 1


class StateDirError(RelayError, OSError):
    """Another relay holds the state directory: two relays must not share leases."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who registers: an authenticated ``client`` (with the ``remote_port`` it asks for, if
    any), or a ``name`` that nobody checked.

    An authenticated client may run several services: each that asks for its
    own port is an identity of its own, with its own lease. The store key keeps
    the kinds apart, so that an unauthenticated name never matches a client of
    the auth file.
    """

    client: str | None = None
    name: str | None = None
    remote_port: int | None = None

    def __post_init__(self) -> None:
        if self.client is None and self.name is None:
            raise ValueError("an identity needs a client or a name")

    @property
    def key(self) -> str:
        if self.client is None:
            return f"name:{self.name}"
        return (
            f"client:{self.client}"
            + ("" if self.name is None else f"/{self.name}")
            + ("" if self.remote_port is None else f"#{self.remote_port}")
        )

    @property
    def authenticated(self) -> bool:
        return self.client is not None

    def __str__(self) -> str:
        if self.client is None:
            return f"name {self.name!r}"
        return (
            f"client {self.client!r}"
            + ("" if self.name is None else f" name {self.name!r}")
            + ("" if self.remote_port is None else f" (port {self.remote_port})")
        )


@dataclass(slots=True)
class Lease:
    key: str
    """``Identity.key`` of the owner."""
    port: int
    granted: float
    """Wall-clock time (``time.time()``) the port was first granted to this owner."""
    last_used: float
    """Wall-clock time the owner was last seen registered."""


class LeaseStore:
    """Leases by owner and by port, in memory and (with a ``path``) in SQLite.

    Use ``LeaseStore.open(state_dir, ttl)``; ``LeaseStore(None, ttl)`` keeps
    them in memory only.
    """

    def __init__(
        self,
        path: Path | None,
        ttl: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.path = path
        self.ttl = ttl
        self.clock = clock
        self._by_key: dict[str, Lease] = {}
        self._by_port: dict[int, Lease] = {}
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._write_failed = False
        if path is not None:
            self._db = self._connect(path)

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str] | None,
        ttl: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> LeaseStore:
        """The store of ``state_dir`` (None: in memory), locked against a second relay.

        Raises StateDirError if another relay holds the directory; every other
        problem is logged and leaves a working store (in memory if need be).
        """
        if state_dir is None:
            return cls(None, ttl, clock=clock)
        directory = Path(state_dir)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = _lock(directory)
        except StateDirError:
            raise
        except OSError as exc:
            logger.error(
                "cannot use the state directory %s (%s); leases are kept in memory "
                "only and end with this process",
                directory,
                exc,
            )
            return cls(None, ttl, clock=clock)
        try:
            store = cls(directory / STORE_NAME, ttl, clock=clock)
        except BaseException:
            os.close(lock_fd)
            raise
        store._lock_fd = lock_fd
        return store

    # ------------------------------------------------------------------ queries
    @property
    def persistent(self) -> bool:
        """True while changes reach the disk."""
        return self._db is not None and not self._write_failed

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._by_key.values()))

    def of(self, key: str) -> Lease | None:
        return self._by_key.get(key)

    def on_port(self, port: int) -> Lease | None:
        return self._by_port.get(port)

    def reserved_ports(self) -> set[int]:
        return set(self._by_port)

    # ------------------------------------------------------------------ changes
    def grant(self, key: str, port: int) -> Lease:
        """Lease ``port`` to ``key``, moving its old lease, replacing one on ``port``."""
        now = self.clock()
        old = self._by_key.get(key)
        other = self._by_port.get(port)
        if other is not None and other.key != key:
            self._forget(other)
        granted = old.granted if old is not None and old.port == port else now
        if old is not None:
            self._forget(old)
        lease = Lease(key, port, granted, now)
        self._by_key[key] = lease
        self._by_port[port] = lease
        self._write(
            "grant",
            ("DELETE FROM leases WHERE port = ? AND identity != ?", (port, key)),
            (
                "INSERT OR REPLACE INTO leases (identity, port, granted, last_used) "
                "VALUES (?, ?, ?, ?)",
                (key, port, granted, now),
            ),
        )
        return lease

    def touch(self, keys: Iterable[str]) -> None:
        """Their owners are registered right now: the clock of their leases restarts."""
        now = self.clock()
        rows = []
        for key in keys:
            lease = self._by_key.get(key)
            if lease is not None:
                lease.last_used = now
                rows.append((now, key))
        if rows:
            self._write(
                "touch",
                *(("UPDATE leases SET last_used = ? WHERE identity = ?", row) for row in rows),
            )

    def drop(self, key: str) -> None:
        lease = self._by_key.get(key)
        if lease is not None:
            self._forget(lease)
            self._write("drop", ("DELETE FROM leases WHERE identity = ?", (key,)))

    def expire(self, active: Iterable[str] = ()) -> list[Lease]:
        """Drop and return the leases unused for ``ttl`` whose owner is not in ``active``."""
        keep = set(active)
        deadline = self.clock() - self.ttl
        gone = [
            lease
            for lease in self._by_key.values()
            if lease.last_used < deadline and lease.key not in keep
        ]
        for lease in gone:
            logger.info(
                "lease of port %d by %s expired (unused for %g s)", lease.port, lease.key, self.ttl
            )
            self._forget(lease)
        if gone:
            self._write(
                "expire",
                *(("DELETE FROM leases WHERE identity = ?", (lease.key,)) for lease in gone),
            )
        return gone

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---------------------------------------------------------------- internals
    def _forget(self, lease: Lease) -> None:
        self._by_key.pop(lease.key, None)
        if self._by_port.get(lease.port) is lease:
            del self._by_port[lease.port]

    def _write(self, what: str, *statements: tuple[str, tuple[object, ...]]) -> None:
        """One transaction; a failure is logged (once) and leaves the change in memory only."""
        if self._db is None:
            return
        try:
            with self._db:
                for sql, args in statements:
                    self._db.execute(sql, args)
        except sqlite3.Error as exc:
            if not self._write_failed:
                logger.error(
                    "lease store %s: cannot save a %s (%s); leases are kept in "
                    "memory until it works again",
                    self.path,
                    what,
                    exc,
                )
            self._write_failed = True
        else:
            if self._write_failed:
                logger.warning("lease store %s: saving works again", self.path)
                self._rewrite_all()
            self._write_failed = False

    def _rewrite_all(self) -> None:
        """After failed writes the file lags behind memory: write memory out whole."""
        assert self._db is not None
        with contextlib.suppress(sqlite3.Error), self._db:
            self._db.execute("DELETE FROM leases")
            self._db.executemany(
                "INSERT INTO leases (identity, port, granted, last_used) VALUES (?, ?, ?, ?)",
                [
                    (lease.key, lease.port, lease.granted, lease.last_used)
                    for lease in self._by_key.values()
                ],
            )

    def _connect(self, path: Path) -> sqlite3.Connection | None:
        try:
            db = _open_database(path)
        except (sqlite3.Error, _SchemaError) as exc:
            aside = _move_aside(path)
            if aside is None:
                logger.error(
                    "lease store %s is unreadable (%s) and cannot be moved aside; "
                    "leases are kept in memory only and end with this process",
                    path,
                    exc,
                )
                return None
            logger.error(
                "lease store %s is unreadable (%s); moved it to %s and starting with no leases",
                path,
                exc,
                aside,
            )
            try:
                db = _open_database(path)
            except (sqlite3.Error, _SchemaError) as again:
                logger.error(
                    "cannot create a new lease store %s (%s); leases are kept in "
                    "memory only and end with this process",
                    path,
                    again,
                )
                return None
        self._load(db)
        return db

    def _load(self, db: sqlite3.Connection) -> None:
        skipped = 0
        for key, port, granted, last_used in db.execute(
            "SELECT identity, port, granted, last_used FROM leases"
        ):
            if (
                not isinstance(key, str)
                or not isinstance(port, int)
                or not 1 <= port <= 65535
                or not isinstance(granted, int | float)
                or not isinstance(last_used, int | float)
            ):
                skipped += 1
                continue
            lease = Lease(key, port, float(granted), float(last_used))
            self._by_key[key] = lease
            self._by_port[port] = lease
        if skipped:
            logger.warning("lease store %s: ignored %d malformed lease(s)", self.path, skipped)
        logger.info("lease store %s: %d lease(s)", self.path, len(self._by_key))


class _SchemaError(RelayError):
    """The file is a database, but not a lease store this relay understands."""


def _open_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise _SchemaError(f"integrity check failed: {check[0] if check else 'no answer'}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS leases (identity TEXT PRIMARY KEY, "
                    "port INTEGER NOT NULL UNIQUE, granted REAL NOT NULL, "
                    "last_used REAL NOT NULL)"
                )
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise _SchemaError(f"schema version {version}, this relay knows {SCHEMA_VERSION}")
        columns = [row[1] for row in db.execute("PRAGMA table_info(leases)")]
        if columns != ["identity", "port", "granted", "last_used"]:
            raise _SchemaError(f"unexpected leases table columns {columns}")
    except BaseException:
        db.close()
        raise
    return db


def _move_aside(path: Path) -> Path | None:
    """Rename the store (and its WAL files) to ``NAME.corrupt-TIMESTAMP``; None if impossible."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        if path.exists():
            path.rename(aside)
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                extra.rename(aside.with_name(aside.name + suffix))
    except OSError:
        return None
    return aside


def _lock(directory: Path) -> int:
    """An exclusive lock on the state directory: two relays must not share leases."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StateDirError(
            f"state directory {directory} is in use by another relay"
            + (f" (pid {owner})" if owner else "")
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
