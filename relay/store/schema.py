"""The SQLite lease store's file: its tables, their versions, and what to do with a bad one.

Version 1 had the leases only; version 2 adds the claims and the members that
several processes share (``relay.store.interface``). A version 1 file is
upgraded in place; a file that is no database, or one of a version this relay
does not know, is moved aside (``NAME.corrupt-TIMESTAMP``, logged as an ERROR)
and a new one is made.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import RelayError

logger = logging.getLogger("relay.leases")

SCHEMA_VERSION = 2
LEASES = (
    "CREATE TABLE IF NOT EXISTS leases (identity TEXT PRIMARY KEY, "
    "port INTEGER NOT NULL UNIQUE, granted REAL NOT NULL, last_used REAL NOT NULL)"
)
SHARED = (
    "CREATE TABLE IF NOT EXISTS claims (holder TEXT NOT NULL, port INTEGER NOT NULL, "
    "identity TEXT, token TEXT NOT NULL, PRIMARY KEY (holder, port))",
    "CREATE INDEX IF NOT EXISTS claims_by_port ON claims (port)",
    "CREATE INDEX IF NOT EXISTS claims_by_identity ON claims (identity)",
    "CREATE TABLE IF NOT EXISTS members (holder TEXT PRIMARY KEY, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leases_by_use ON leases (last_used)",
)
COLUMNS = {
    "leases": ["identity", "port", "granted", "last_used"],
    "claims": ["holder", "port", "identity", "token"],
    "members": ["holder", "expires"],
}
BUSY_TIMEOUT_MS = 5000


class SchemaError(RelayError):
    """The file is a database, but not a lease store this relay understands."""


T = TypeVar("T")


def immediate(db: sqlite3.Connection, step: Callable[..., T], *args: object) -> T:
    """``step(*args)`` in one ``BEGIN IMMEDIATE`` transaction of ``db`` (the write lock
    first, so two processes never both read and then write): committed, or rolled back
    if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = step(*args)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def use_wal(db: sqlite3.Connection) -> None:
    """Put ``db`` in WAL mode. Several processes (a relay's workers) may open the file at
    once: the change of journal mode takes a lock that the busy timeout does not wait
    for, so it is tried again until that timeout, instead of failing a worker's start or
    taking a locked file for an unreadable one."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def open_database(path: Path | None) -> sqlite3.Connection | None:
    """The lease store at ``path`` (None: a private one in memory), ready for
    ``BEGIN IMMEDIATE`` transactions; None if the file cannot be used even after moving
    it aside (logged)."""
    if path is None:
        return _open(":memory:")
    try:
        return _open(str(path))
    except (sqlite3.Error, SchemaError) as exc:
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
        return _open(str(path))
    except (sqlite3.Error, SchemaError) as again:
        logger.error(
            "cannot create a new lease store %s (%s); leases are kept in "
            "memory only and end with this process",
            path,
            again,
        )
        return None


def _open(name: str) -> sqlite3.Connection:
    db = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        use_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise SchemaError(f"integrity check failed: {check[0] if check else 'no answer'}")
        immediate(db, _upgrade, db)
    except BaseException:
        db.close()
        raise
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(f"schema version {version}, this relay knows {SCHEMA_VERSION}")
    if version == 0:
        db.execute(LEASES)
    for statement in SHARED:
        db.execute(statement)
    for table, expected in COLUMNS.items():
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        if columns != expected:
            raise SchemaError(f"unexpected {table} table columns {columns}")
    skipped = db.execute(
        "DELETE FROM leases WHERE typeof(identity) != 'text' OR typeof(port) != 'integer' "
        "OR port NOT BETWEEN 1 AND 65535 OR typeof(granted) NOT IN ('real', 'integer') "
        "OR typeof(last_used) NOT IN ('real', 'integer')"
    ).rowcount
    if skipped:
        logger.warning("lease store: dropped %d malformed lease(s)", skipped)
    if version != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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
