"""The supervisor's line to a worker (relay.workers.channel) and the drain it asks for.

A real Unix socket pair in one process; the Stopper under run_until_signal with
real signals sent to this process (the loop's handlers take them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from relay.ops.drain import Drain, Stopper, run_until_signal
from relay.workers.channel import Channel, ChannelClosedError, Message


async def pair(handler_a, handler_b) -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return await Channel.open(a, handler_a), await Channel.open(b, handler_b)


async def test_requests_get_their_own_replies_and_notices_arrive_in_order() -> None:
    seen: list[Message] = []

    async def worker(message: Message) -> Message | None:
        seen.append(message)
        if message["op"] == "slow":
            await asyncio.sleep(0.05)
        return {"echo": message["op"], "size": len(message.get("blob", ""))}

    async def supervisor(message: Message) -> Message | None:
        return None

    ours, theirs = await pair(supervisor, worker)
    try:
        slow = asyncio.ensure_future(ours.request({"op": "slow"}))
        fast = await ours.request({"op": "fast", "blob": "x" * 3_000_000})
        assert fast == {"echo": "fast", "size": 3_000_000}
        assert await slow == {"echo": "slow", "size": 0}
        for n in range(5):
            ours.notify({"op": "note", "n": n})
        await ours.request({"op": "last"})
        assert [m.get("n") for m in seen if m["op"] == "note"] == [0, 1, 2, 3, 4]
    finally:
        ours.close()
        theirs.close()
        await ours.wait_closed()
        await theirs.wait_closed()


async def test_a_peer_that_goes_away_fails_the_requests_waiting_for_it() -> None:
    lost = asyncio.Event()

    async def never(message: Message) -> Message | None:
        await asyncio.sleep(3600)
        return None

    async def nothing(message: Message) -> Message | None:
        return None

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours = await Channel.open(a, nothing, lost.set)
    theirs = await Channel.open(b, never)
    waiting = asyncio.ensure_future(ours.request({"op": "hang"}))
    await asyncio.sleep(0.05)
    theirs.close()
    with pytest.raises(ChannelClosedError):
        await waiting
    await lost.wait()
    with pytest.raises(ChannelClosedError):
        await ours.request({"op": "again"})
    ours.notify({"op": "into the void"})  # nothing, no error
    ours.close()
    await ours.wait_closed()
    await theirs.wait_closed()


def run_with_stopper(body) -> tuple[int, list[str]]:
    """run_until_signal with a drain that lasts until ``body`` says it is idle."""
    events: list[str] = []
    stoppers: list[Stopper] = []
    idle: list[asyncio.Event] = []

    async def main() -> int:
        idle.append(asyncio.Event())
        await body(stoppers[0], idle[0], events)
        await asyncio.sleep(10)
        events.append("not stopped")
        return 3

    def start() -> None:
        events.append("drain")

    code = run_until_signal(
        main,
        drain=Drain(start, lambda: idle[0].wait()),
        drain_timeout=10,
        controls=stoppers.append,
    )
    return code, events


def test_a_requested_drain_and_the_same_signal_are_one_drain() -> None:
    async def body(stopper: Stopper, idle: asyncio.Event, events: list[str]) -> None:
        stopper.request_drain("the supervisor asked for a drain")
        os.kill(os.getpid(), signal.SIGTERM)  # systemd's, to the whole process group
        await asyncio.sleep(0.2)
        events.append("still draining")
        idle.set()

    code, events = run_with_stopper(body)
    assert code == 0
    assert events == ["drain", "still draining"]


def test_a_requested_stop_during_a_drain_closes_at_once() -> None:
    async def body(stopper: Stopper, idle: asyncio.Event, events: list[str]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        stopper.request_stop("the supervisor asked to stop")
        await asyncio.sleep(1)
        events.append("still running")

    code, events = run_with_stopper(body)
    assert code == 0
    assert events == ["drain"]


async def test_the_host_table_tells_every_other_worker_and_keeps_the_first_holder() -> None:
    """``relay.workers.routes.HostTable`` over real channels to three workers: a name one
    worker gains or loses reaches the others (not itself), a restarted worker gets the
    whole table, a dead worker's names go, and a second worker registering a name
    already held is told to end that session."""
    from relay.workers.routes import HostTable

    heard: dict[int, list[Message]] = {1: [], 2: [], 3: []}
    pairs = {}
    for index in heard:

        async def worker(message: Message, index: int = index) -> Message | None:
            if message["op"] != "sync":
                heard[index].append(message)
            return None

        async def supervisor(message: Message) -> Message | None:
            return None

        pairs[index] = await pair(supervisor, worker)
    table = HostTable(lambda: [(index, ours) for index, (ours, _) in pairs.items()])

    async def settled() -> None:  # every notice sent so far has arrived
        for ours, _ in pairs.values():
            await ours.request({"op": "sync"})

    def route(worker: int, host: str, session: int, held: bool) -> None:
        table.answer(
            worker,
            {"op": "route", "kind": "http", "host": host, "session": session, "held": held},
        )

    def where(worker: int, host: str) -> object:
        answer = table.answer(worker, {"op": "where", "kind": "http", "host": host})
        assert answer is not None
        return answer["worker"]

    try:
        route(1, "a.test", 7, True)
        route(2, "b.test", 3, True)
        route(2, "a.test", 4, True)  # a race: worker 1 holds it already
        await settled()
        notes = [m for m in heard[3] if m["op"] == "host"]
        assert [(m["host"], m["worker"]) for m in notes] == [("a.test", 1), ("b.test", 2)]
        assert [m for m in heard[2] if m["op"] == "host taken"] == [
            {"op": "host taken", "session": 4, "host": "a.test"}
        ]
        assert (where(2, "a.test"), where(1, "a.test"), where(1, "nope.test")) == (1, None, None)
        route(2, "a.test", 4, False)  # the loser's session ends: the holder keeps its name
        assert where(3, "a.test") == 1
        heard[3].clear()
        table.welcome(3)
        await settled()
        assert heard[3] == [
            {"op": "hosts", "hosts": [["http", "a.test", 1], ["http", "b.test", 2]]}
        ]
        table.drop_worker(1)
        route(2, "b.test", 3, False)
        await settled()
        assert [(m["host"], m["worker"]) for m in heard[3][1:]] == [
            ("a.test", None),
            ("b.test", None),
        ]
        assert len(table) == 0
    finally:
        for ours, theirs in pairs.values():
            ours.close()
            theirs.close()
            await ours.wait_closed()
            await theirs.wait_closed()


def test_what_exists_before_the_loop_runs_is_out_of_the_cyclic_collectors_way() -> None:
    """The modules and configuration live as long as the process: frozen, so that the
    collector's full collections under a stream of connections do not go through them."""
    import gc

    async def main() -> int:
        return gc.get_freeze_count()

    async def idle() -> None:
        return None

    try:
        frozen = run_until_signal(main, drain=Drain(lambda: None, idle), drain_timeout=1)
    finally:
        gc.unfreeze()
    assert frozen > 10_000
