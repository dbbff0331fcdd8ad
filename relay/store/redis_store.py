"""The cluster lease store: Redis, shared by several relays (``relay server --cluster URL``).

Every step is one call of the Lua script in ``relay.store.scripts``, which
Redis runs atomically, so relays deciding at the same moment never give one
port to two identities, nor one identity two ports. Membership is a key per
relay with a TTL (``MEMBER_TTL``), renewed by each heartbeat: a relay killed
with -9 stops renewing it, and its claims end when it expires; its leases stay.

A call that cannot reach Redis within ``TIMEOUT`` raises
StoreUnavailableError (the relay refuses that registration with "retry
later" and probes Redis with backoff); the client reconnects by itself on the
next call. The URL may carry a password: ``describe()`` never shows it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .interface import (
    Ask,
    Claimed,
    Denied,
    Held,
    Lease,
    NeedsOffer,
    Outcome,
    StoreError,
    StoreUnavailableError,
)
from .scripts import PREFIX, SCRIPT
from .sqlite_store import new_holder

logger = logging.getLogger("relay.leases")

TIMEOUT = 2.0
"""Seconds a step may take (connecting included) before the store counts as unavailable."""
MEMBER_TTL = 10.0
"""Seconds a relay stays a member without a heartbeat (it beats every 2 s)."""

UNAVAILABLE = frozenset(
    ("LOADING", "BUSY", "READONLY", "OOM", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "MISCONF")
)
"""Error replies that mean "not now" (a Redis loading its data, read-only, out of memory);
any other error reply is a bug, raised as StoreError."""

T = TypeVar("T")


def redacted(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class RedisLeaseStore:
    """``LeaseStore`` on Redis: ``await RedisLeaseStore.open(url, ttl)``, the steps,
    ``close()``."""

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        ttl: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        member_ttl: float = MEMBER_TTL,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self._client = client
        self._script = client.register_script(SCRIPT)
        self.url = url
        self._ttl = ttl
        self._holder = holder or new_holder()
        self.clock = clock
        self.member_ttl = member_ttl

    @classmethod
    async def open(
        cls,
        url: str,
        ttl: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        member_ttl: float = MEMBER_TTL,
    ) -> RedisLeaseStore:
        """Connect to the Redis at ``url`` and join as a member. Raises StoreUnavailableError
        if it cannot be reached now: a relay does not start without its cluster."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        store = cls(client, url, ttl, holder=holder, clock=clock, member_ttl=member_ttl)
        try:
            await store.heartbeat()
            count = await store.call(client.hlen(PREFIX + "lease"))
        except BaseException:
            await store.close()
            raise
        logger.info("%s: %d lease(s)", store.describe(), count)
        return store

    # ------------------------------------------------------------ interface
    @property
    def holder(self) -> str:
        return self._holder

    @property
    def ttl(self) -> float:
        return self._ttl

    def describe(self) -> str:
        return f"cluster store {redacted(self.url)}"

    @property
    def persistent(self) -> bool:
        return True

    @property
    def client(self) -> redis.Redis:
        """The connection (shared with ``relay.store.failures``)."""
        return self._client

    async def allocate(self, ask: Ask) -> Outcome:
        ranges = (
            "any"
            if ask.candidates is None
            else " ".join(f"{low} {high}" for low, high in ask.candidates)
        )
        outcome, previous, expired = await self._run(
            "allocate",
            self._now(),
            self._ttl,
            ask.key or "",
            ask.token,
            "" if ask.port is None else ask.port,
            int(ask.offered),
            ranges,
            " ".join(map(str, ask.exclude)),
            ask.after,
            int(ask.counted),
            ask.max_names,
        )
        for item in expired:
            key, _, port = item.rpartition(" ")
            logger.info("lease of port %s by %s expired (unused for %g s)", port, key, self._ttl)
        lease = None
        if previous:
            port, granted, used = previous
            lease = Lease(ask.key or "", int(port), float(granted), float(used))
        kind = outcome[0]
        if kind == "claimed":
            return Claimed(int(outcome[1]), outcome[2], lease)
        if kind == "offer":
            return NeedsOffer(lease)
        _, why, port, count = outcome
        return Denied(why, int(port) if port else None, int(count))

    async def abandon(self, ask: Ask, claimed: Claimed) -> None:
        previous = claimed.previous
        await self._run(
            "abandon",
            ask.key or "",
            ask.token,
            claimed.port,
            claimed.how,
            "" if previous is None else previous.port,
            "" if previous is None else repr(previous.granted),
            "" if previous is None else repr(previous.last_used),
        )

    async def release(self, port: int, token: str) -> None:
        await self._run("release", port, token, self._now())

    async def heartbeat(self) -> bool:
        existed = await self._run("heartbeat", self._description(), self._member_ms())
        return bool(existed)

    async def sync(self, held: list[Held]) -> list[Held]:
        args: list[object] = [
            self._now(),
            self._ttl,
            self._description(),
            self._member_ms(),
        ]
        for item in held:
            args += [item.port, item.token, item.key or ""]
        lost = {int(port) for port in await self._run("sync", *args)}
        return [item for item in held if item.port in lost]

    async def leave(self) -> None:
        await self._run("leave", self._now())

    async def lease_of(self, key: str) -> Lease | None:
        value = await self.call(self._client.hget(PREFIX + "lease", key))
        return None if value is None else _lease(key, str(value))

    async def lease_on(self, port: int) -> Lease | None:
        key = await self.call(self._client.hget(PREFIX + "port", str(port)))
        return None if key is None else await self.lease_of(str(key))

    async def leases(self) -> list[Lease]:
        values = await self.call(self._client.hgetall(PREFIX + "lease"))
        leases = [_lease(str(key), str(value)) for key, value in values.items()]
        return sorted(leases, key=lambda lease: lease.port)

    async def close(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ plumbing
    def _now(self) -> str:
        return repr(self.clock())

    def _member_ms(self) -> int:
        return int(self.member_ttl * 1000)

    def _description(self) -> str:
        return f"pid {os.getpid()}"

    async def _run(self, op: str, *args: Any) -> Any:
        return await self.call(self._script(args=[op, self._holder, *args]))

    async def call(self, call: Awaitable[T]) -> T:
        """``call`` within ``TIMEOUT``; a Redis that cannot answer is StoreUnavailableError."""
        try:
            async with asyncio.timeout(TIMEOUT):
                return await call
        except TimeoutError:
            raise StoreUnavailableError(f"no answer within {TIMEOUT:g} s") from None
        except ResponseError as exc:
            if str(exc).split(" ", 1)[0] not in UNAVAILABLE:
                raise StoreError(f"{self.describe()} answered: {exc}") from exc
            raise StoreUnavailableError(str(exc)) from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc) or type(exc).__name__) from None


def _lease(key: str, value: str) -> Lease:
    port, granted, used = value.split()
    return Lease(key, int(port), float(granted), float(used))
