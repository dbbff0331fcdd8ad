"""Failed registrations counted by every relay of a cluster (or process of a host) together.

A stranger who fails on one relay must not get a fresh allowance on the next:
each failure goes to the shared ``FailureCounts``, and a key (a source, or a
source and client name) with ``limit`` failures within ``window`` seconds is
blocked everywhere until the window has passed. The relay's own limiter
(``relay.server.failures.FailureLimiter``) still decides at once, without a round
trip; the shared blocks reach it within a refresh (``relay.server.shared_failures``).

Two implementations: Redis (``RedisFailureCounts``: a sorted set of failure
times per key and one of blocked keys, each update one Lua script) and SQLite
(``SqliteFailureCounts``, for the processes of one host). Both bound what they
keep: a key's failures expire after the window, and at most ``MAX_BLOCKED``
blocks are read back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as redis

from .interface import StoreUnavailableError
from .redis_store import RedisLeaseStore
from .schema import BUSY_TIMEOUT_MS, immediate, use_wal

MAX_BLOCKED = 10_000
"""Blocks read back at most (the most recent)."""


class FailureCounts(Protocol):
    """Failures per key, shared; raises StoreUnavailableError when it cannot be reached."""

    async def failed(self, key: str, limit: int, window: float) -> float:
        """Count a failure of ``key``; the seconds it is blocked for now (0: not blocked)."""

    async def blocked(self) -> dict[str, float]:
        """Every key blocked now -> the time (``time.time()``) its block ends."""


FAILED_SCRIPT = r"""
local key, now, window, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local times = 'relay:fail:' .. key
redis.call('ZREMRANGEBYSCORE', times, '-inf', now - window)
redis.call('ZADD', times, now, ARGV[2] .. ':' .. ARGV[5])
redis.call('PEXPIRE', times, math.ceil(window * 1000))
local count = redis.call('ZCARD', times)
if count < limit then return '0' end
local oldest = redis.call('ZRANGE', times, -limit, -limit, 'WITHSCORES')[2]
local ends = tonumber(oldest) + window
redis.call('ZADD', 'relay:blocked', ends, key)
redis.call('ZREMRANGEBYSCORE', 'relay:blocked', '-inf', now)
return tostring(ends - now)
"""


class RedisFailureCounts:
    """``FailureCounts`` in the cluster's Redis (the lease store's connection)."""

    def __init__(self, store: RedisLeaseStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._client: redis.Redis = store.client
        self._script = self._client.register_script(FAILED_SCRIPT)
        self._clock = clock
        self._serial = 0

    async def failed(self, key: str, limit: int, window: float) -> float:
        self._serial += 1
        now = self._clock()
        call = self._script(
            args=[key, repr(now), window, limit, f"{self._store.holder}:{self._serial}"]
        )
        return float(await self._store.call(call))

    async def blocked(self) -> dict[str, float]:
        found = await self._store.call(
            self._client.zrangebyscore(
                "relay:blocked",
                repr(self._clock()),
                "+inf",
                start=0,
                num=MAX_BLOCKED,
                withscores=True,
            )
        )
        return {str(item[0]): float(item[1]) for item in found}


class SqliteFailureCounts:
    """``FailureCounts`` in a SQLite file shared by the processes of one host."""

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, path: Path | None, clock: Callable[[], float] = time.time) -> SqliteFailureCounts:
        db = sqlite3.connect(
            ":memory:" if path is None else str(path), isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        use_wal(db)
        db.execute("CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, at REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS failures_by_key ON failures (key, at)")
        db.execute("CREATE TABLE IF NOT EXISTS blocked (key TEXT PRIMARY KEY, ends REAL NOT NULL)")
        return cls(db, clock)

    async def failed(self, key: str, limit: int, window: float) -> float:
        async with self._lock:
            return float(await self._run(self._failed, key, limit, window))

    async def blocked(self) -> dict[str, float]:
        async with self._lock:
            found: dict[str, float] = await self._run(self._blocked)
            return found

    def close(self) -> None:
        self._db.close()

    async def _run(self, step: Callable[..., float | dict[str, float]], *args: object) -> Any:
        try:
            return await asyncio.to_thread(immediate, self._db, step, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"failure counts: {exc}") from exc

    def _failed(self, key: str, limit: int, window: float) -> float:
        now = self._clock()
        self._db.execute("DELETE FROM failures WHERE at <= ?", (now - window,))
        self._db.execute("DELETE FROM blocked WHERE ends <= ?", (now,))
        self._db.execute("INSERT INTO failures VALUES (?, ?)", (key, now))
        times = [
            at
            for (at,) in self._db.execute(
                "SELECT at FROM failures WHERE key = ? ORDER BY at DESC LIMIT ?", (key, limit)
            )
        ]
        if len(times) < limit:
            return 0.0
        ends = times[-1] + window
        self._db.execute("INSERT OR REPLACE INTO blocked VALUES (?, ?)", (key, ends))
        return float(ends - now)

    def _blocked(self) -> dict[str, float]:
        rows = self._db.execute(
            "SELECT key, ends FROM blocked WHERE ends > ? ORDER BY ends DESC LIMIT ?",
            (self._clock(), MAX_BLOCKED),
        )
        return {str(key): float(ends) for key, ends in rows}
