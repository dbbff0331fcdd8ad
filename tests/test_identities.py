"""The identity table (relay.server.identities): who may register an identity held on the host.

In memory: ``settle`` is a fake that records what it was asked and answers as
the test says (the real one pings sessions: tests/test_sessions.py,
tests/test_workers.py, tests/test_registration_v2.py).
"""

from __future__ import annotations

import asyncio

import pytest

from relay.server.identities import IdentityTable


class Settler:
    """Records each settle(worker, sessions, newcomer); answers with ``alive``."""

    def __init__(self, alive: set[int] | None = None) -> None:
        self.alive = alive or set()
        self.asked: list[tuple[int, list[int], str]] = []

    async def __call__(self, worker: int, sessions: list[int], newcomer: str) -> set[int]:
        self.asked.append((worker, sessions, newcomer))
        return {s for s in sessions if s in self.alive}


async def test_own_then_refused_while_alive_then_replaced_when_silent() -> None:
    settle = Settler(alive={7})
    table = IdentityTable(settle)
    first = await table.claim("name:web", 1, False, "a:1", worker=2)
    assert first.kind == "own"
    table.registered(first.ref, 7, 5000)
    refused = await table.claim("name:web", 1, False, "b:1", worker=1)
    assert (refused.kind, refused.port, refused.holders) == ("refuse", 5000, 1)
    assert settle.asked == [(2, [7], "b:1")]  # asked the worker that holds it
    settle.alive = set()
    again = await table.claim("name:web", 1, False, "b:1", worker=1)
    assert again.kind == "own"
    assert [h.worker for h in table.holdings("name:web")] == [1]


async def test_an_authenticated_client_alive_elsewhere_gets_a_port_of_its_own() -> None:
    table = IdentityTable(Settler(alive={1}))
    first = await table.claim("client:alice", 1, True, "a:1")
    table.registered(first.ref, 1, 5000)
    second = await table.claim("client:alice", 1, True, "a:2")
    assert second.kind == "own port"
    assert second.ref  # counted, with no identity
    assert len(table.holdings("client:alice")) == 1


async def test_sessions_join_up_to_k_then_the_silent_make_room() -> None:
    settle = Settler(alive={1, 2})
    table = IdentityTable(settle)
    first = await table.claim("name:web", 2, False, "a:1")
    table.registered(first.ref, 1, 6000)
    second = await table.claim("name:web", 2, False, "a:2")
    assert (second.kind, second.port) == ("join", 6000)
    table.registered(second.ref, 2, 6000)
    assert settle.asked == []  # room: nobody was pinged
    full = await table.claim("name:web", 2, False, "a:3")
    assert (full.kind, full.holders) == ("refuse", 2)
    settle.alive = {2}
    third = await table.claim("name:web", 2, False, "a:3")
    assert (third.kind, third.port) == ("join", 6000)
    table.registered(third.ref, 3, 6000)
    no_sessions = await table.claim("name:web", 1, False, "a:4")
    assert no_sessions.kind == "refuse"  # not joinable without sessions=


async def test_a_claim_waits_for_a_registration_of_the_same_identity_on_its_way() -> None:
    table = IdentityTable(Settler())
    first = await table.claim("name:web", 2, False, "a:1")
    waiting = asyncio.ensure_future(table.claim("name:web", 2, False, "a:2"))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # it needs the port the first one is about to get
    table.registered(first.ref, 1, 7000)
    second = await waiting
    assert (second.kind, second.port) == ("join", 7000)


async def test_moves_a_joining_session_to_a_worker_without_one() -> None:
    workers = [1, 2]
    table = IdentityTable(Settler(), workers=lambda: workers)
    first = await table.claim("name:web", 2, False, "a:1", worker=1)
    table.registered(first.ref, 1, 8000)
    move = await table.claim("name:web", 2, False, "a:2", movable=True, worker=1)
    assert (move.kind, move.worker, move.ref) == ("move", 2, 0)
    fixed = await table.claim("name:web", 2, False, "a:2", movable=False, worker=1)
    assert fixed.kind == "join"  # handed over once already, or TLS: it stays
    workers.remove(2)
    table.dropped(fixed.ref)
    stays = await table.claim("name:web", 2, False, "a:3", movable=True, worker=1)
    assert stays.kind == "join"  # no other worker is up


async def test_capacity_counts_every_registration_and_a_dead_worker_frees_its_own() -> None:
    table = IdentityTable(Settler(), capacity=3)
    refs = [
        (await table.claim(None, 1, False, "a:1", worker=1)).ref,
        (await table.claim("name:x", 1, False, "a:2", worker=1)).ref,
        (await table.claim(None, 1, False, "a:3", worker=2)).ref,
    ]
    assert all(refs)
    full = await table.claim("name:y", 1, False, "a:4", worker=2)
    assert (full.kind, full.holders) == ("full", 3)
    table.drop_worker(1)
    assert len(table) == 1
    assert (await table.claim("name:x", 1, False, "a:5", worker=2)).kind == "own"


@pytest.mark.parametrize("outcome", ["registered", "dropped"])
async def test_a_pending_claim_of_a_dead_worker_does_not_block(outcome: str) -> None:
    table = IdentityTable(Settler())
    first = await table.claim("name:web", 1, False, "a:1", worker=1)
    waiting = asyncio.ensure_future(table.claim("name:web", 1, False, "a:2", worker=2))
    await asyncio.sleep(0.01)
    if outcome == "registered":
        table.registered(first.ref, 3, 9000)
        table.drop_worker(1)
    else:
        table.drop_worker(1)
    assert (await waiting).kind == "own"
