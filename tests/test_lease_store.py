"""The lease-store contract (relay.store), held to both backends: SQLite and a real Redis.

Several stores on one backend are several holders (relays, or processes of
one host): what one claims, the others see at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as redis

from cluster_support import RedisServer
from relay.store import Ask, Claimed, Denied, Held, LeaseStore, NeedsOffer
from relay.store.redis_store import RedisLeaseStore, redacted
from relay.store.sqlite_store import SqliteLeaseStore

TTL = 3600.0
RANGE = ((7000, 7003),)

Factory = Callable[..., Awaitable[LeaseStore]]
tokens = (str(n) for n in itertools.count(1))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    from relay_support import processes

    with processes() as group:
        yield RedisServer(group, tmp_path_factory.mktemp("redis")).start()


@pytest.fixture(params=["sqlite", "redis"])
async def stores(request, tmp_path: Path) -> AsyncIterator[Factory]:
    """``await stores(**options)``: one more holder on a fresh backend of this test."""
    made: list[LeaseStore] = []
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        await client.flushall()
        await client.aclose()

    async def make(**options) -> LeaseStore:
        ttl = options.pop("ttl", TTL)
        if request.param == "redis":
            store: LeaseStore = await RedisLeaseStore.open(server.url, ttl, **options)
        else:
            store = await SqliteLeaseStore.open(tmp_path / "leases.sqlite3", ttl, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def ask(key: str | None, **fields) -> Ask:
    return Ask(key, next(tokens), **fields)


async def claim(store: LeaseStore, key: str | None, **fields) -> Claimed:
    asked = ask(key, **fields)
    outcome = await store.allocate(asked)
    assert isinstance(outcome, Claimed), outcome
    return outcome


async def test_a_requested_port_is_one_identitys_reserved_while_it_is_away(stores):
    a, b = await stores(), await stores()
    alice = ask("name:alice", port=7001)
    assert await a.allocate(alice) == Claimed(7001, "requested", None)
    assert await b.allocate(ask("name:bob", port=7001)) == Denied("in use by a client", 7001)
    assert await b.allocate(ask(None, port=7001)) == Denied("in use by a client", 7001)
    await a.release(7001, alice.token)
    assert await b.allocate(ask("name:bob", port=7001)) == Denied("reserved", 7001)
    assert await b.allocate(ask(None, port=7001)) == Denied("reserved", 7001)
    lease = await b.lease_of("name:alice")
    assert lease is not None
    assert lease.port == 7001
    assert (await b.lease_on(7001)) == lease


async def test_one_identity_gets_its_one_port_on_every_holder(stores):
    a, b, c = await stores(), await stores(), await stores()
    first = await claim(a, "name:web", candidates=RANGE)
    assert first.how == "free"
    again = await claim(b, "name:web", candidates=RANGE)
    assert (again.port, again.how) == (first.port, "leased")
    other = 7000 + (first.port - 7000 + 1) % 4
    # Never a second port while it is held: not by request, not by exclusion, not on one holder.
    assert await c.allocate(ask("name:web", port=other)) == Denied("elsewhere", first.port)
    refused = await c.allocate(ask("name:web", candidates=RANGE, exclude=(first.port,)))
    assert refused == Denied("elsewhere", first.port)
    assert await a.allocate(ask("name:web", candidates=RANGE)) == Denied("elsewhere", first.port)
    # An anonymous registration never shares a port, even with another anonymous one.
    anonymous = await claim(c, None, candidates=RANGE)
    assert anonymous.port != first.port
    assert await a.allocate(ask(None, port=anonymous.port)) == Denied("in use", anonymous.port)


async def test_free_ports_round_robin_skip_reserved_and_excluded_ones(stores):
    store = await stores()
    held = await claim(store, "name:held", port=7002)
    await store.release(7002, "not its token")  # a wrong token releases nothing
    assert (await store.allocate(ask(None, port=7002))).why == "in use by a client"
    ports = [(await claim(store, None, candidates=RANGE, after=7000)).port for _ in range(2)]
    assert ports == [7001, 7003]
    last = await claim(store, None, candidates=RANGE, after=7003, exclude=())
    assert last.port == 7000
    assert await store.allocate(ask(None, candidates=RANGE)) == Denied("no port", count=0)
    assert held.port == 7002
    assert await store.allocate(ask(None, candidates=((7004, 7004),), exclude=(7004,))) == (
        Denied("no port", count=0)
    )


async def test_without_candidates_the_os_offers_and_leased_offers_are_refused(stores):
    store = await stores()
    alice = ask("name:alice", port=7100)
    await store.allocate(alice)
    await store.release(7100, alice.token)
    assert await store.allocate(ask("name:bob")) == NeedsOffer(None)
    assert await store.allocate(ask("name:bob", port=7100, offered=True)) == Denied(
        "reserved", 7100
    )
    taken = await store.allocate(ask("name:bob", port=7101, offered=True))
    assert isinstance(taken, Claimed)
    assert taken.how == "offered"
    back = await store.allocate(ask("name:alice"))
    assert isinstance(back, Claimed)
    assert (back.port, back.how) == (7100, "leased")


async def test_unauthenticated_names_are_bounded(stores):
    store = await stores()
    await claim(store, "name:a", port=7000, counted=True, max_names=2)
    await claim(store, "name:b", port=7001, counted=True, max_names=2)
    assert await store.allocate(ask("name:c", port=7002, counted=True, max_names=2)) == Denied(
        "names", count=2
    )
    await claim(store, "client:carol", port=7002)  # authenticated: not counted
    other = await stores()  # its own lease is fine (here on a second holder: a second relay)
    await claim(other, "name:a", port=7000, counted=True, max_names=2)


async def test_abandon_puts_the_lease_back(stores):
    store = await stores()
    first = ask("name:alice", port=7000)
    await store.allocate(first)
    await store.release(7000, first.token)
    moved = ask("name:alice", port=7001)
    claimed = await store.allocate(moved)
    assert isinstance(claimed, Claimed)
    assert claimed.previous is not None
    assert (await store.lease_of("name:alice")).port == 7001
    await store.abandon(moved, claimed)  # the port could not be bound
    assert (await store.lease_of("name:alice")).port == 7000
    assert await store.lease_on(7001) is None
    fresh = ask("name:bob", port=7002)
    await store.abandon(fresh, await store.allocate(fresh))
    assert await store.lease_of("name:bob") is None
    assert isinstance(await store.allocate(ask(None, port=7002)), Claimed)  # no claim left


async def test_a_lapsed_holders_claims_end_and_its_leases_stay(stores):
    dying = await stores(member_ttl=0.5)
    other = await stores()
    await claim(dying, None, port=7000)
    await claim(dying, "name:kept", port=7001)
    assert (await other.allocate(ask(None, port=7000))).why == "in use"
    await asyncio.sleep(0.7)  # no heartbeat: the membership lapses (a relay killed -9)
    assert isinstance(await other.allocate(ask(None, port=7000)), Claimed)
    assert (await other.allocate(ask("name:x", port=7001))).why == "reserved"
    back = await other.allocate(ask("name:kept", candidates=RANGE))
    assert isinstance(back, Claimed)
    assert (back.port, back.how) == (7001, "leased")
    assert await dying.heartbeat() is False  # it lapsed: the relay must sync again
    assert await dying.sync([Held(7000, None, "old")]) == [Held(7000, None, "old")]


async def test_sync_makes_claims_exact_and_restores_what_the_store_lost(stores, request):
    store = await stores()
    other = await stores()
    await claim(store, "name:a", port=7000)
    stale = await claim(store, None, port=7001)
    assert stale.port == 7001
    assert await store.sync([Held(7000, "name:a", "x"), Held(7002, "name:b", "y")]) == []
    assert isinstance(await other.allocate(ask(None, port=7001)), Claimed)  # not claimed now
    assert (await other.allocate(ask(None, port=7002))).why == "in use by a client"
    assert (await store.lease_of("name:b")).port == 7002
    if "redis" in request.node.name:  # Redis lost everything (a restart without AOF)
        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        await client.flushall()
        await client.aclose()
        assert await store.heartbeat() is False
        assert await store.sync([Held(7000, "name:a", "x"), Held(7002, "name:b", "y")]) == []
        assert {(lease.key, lease.port) for lease in await store.leases()} == {
            ("name:a", 7000),
            ("name:b", 7002),
        }


async def test_leases_unused_for_the_ttl_end_unless_held(stores):
    clock = Clock()
    a = await stores(ttl=60, clock=clock)
    gone = ask("name:gone", port=7000)
    await a.allocate(gone)
    await a.release(7000, gone.token)
    await claim(a, "name:held", port=7001)
    clock.now += 61
    assert isinstance(await a.allocate(ask("name:new", port=7000)), Claimed)
    assert await a.lease_of("name:gone") is None
    assert (await a.lease_of("name:held")).port == 7001  # held all along: kept
    await a.leave()
    assert isinstance(await a.allocate(ask(None, port=7001)), Denied)  # leased, held by none
    assert [lease.key for lease in await a.leases()] == ["name:new", "name:held"]


async def test_an_unreachable_redis_is_a_clear_error_and_the_url_password_is_hidden():
    from relay.store import StoreUnavailableError
    from testkit.ports import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailableError) as raised:
        await RedisLeaseStore.open(url, TTL)
    assert "hunter2" not in str(raised.value)
    assert redacted(url) == url.replace("hunter2", "***")


# ------------------------------------------------------------ shared failure counts
@pytest.fixture(params=["sqlite", "redis"])
async def failure_counts(request, tmp_path: Path):
    """``await failure_counts(clock)``: one more relay's view of one shared failure table."""
    from relay.store.failures import RedisFailureCounts, SqliteFailureCounts

    closers = []
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        await client.flushall()
        await client.aclose()

    async def make(clock):
        if request.param == "redis":
            store = await RedisLeaseStore.open(server.url, TTL)
            closers.append(store.close)
            return RedisFailureCounts(store, clock)
        counts = SqliteFailureCounts.open(tmp_path / "failures.sqlite3", clock)
        closers.append(asyncio.to_thread(counts.close))
        return counts

    yield make
    for close in closers:
        await (close() if callable(close) else close)


async def test_failures_on_any_relay_block_a_key_everywhere_for_the_window(failure_counts):
    clock = Clock()
    a, b = await failure_counts(clock), await failure_counts(clock)
    for _ in range(2):
        assert await a.failed("192.0.2.7", limit=5, window=60) == 0
        assert await b.failed("192.0.2.7", limit=5, window=60) == 0
    clock.now += 10
    assert await a.failed("192.0.2.7", limit=5, window=60) == pytest.approx(50)
    assert await b.failed("198.51.100.1", limit=5, window=60) == 0
    blocked = await b.blocked()
    assert list(blocked) == ["192.0.2.7"]
    assert blocked["192.0.2.7"] == pytest.approx(clock.now + 50)
    clock.now += 51  # the window has passed since the first failures
    assert await a.blocked() == {}
    assert await a.failed("192.0.2.7", limit=5, window=60) == 0
