"""Receive-window auto-tuning (issue #14): grows only when the window is the limit, within budget.

The tuner is sans-IO: tests drive it with an explicit clock and round-trip time.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yamux
from testkit.link import SlowLink
from yamux import Config, Connection
from yamux.const import INITIAL_STREAM_WINDOW
from yamux.events import DataReceived, StreamOpened
from yamux.flow import Clock, ReceiveWindow, WindowBudget, WindowTuner
from yamux.frame import FrameDecoder

W = INITIAL_STREAM_WINDOW
MIB = 1 << 20


def at(now: float) -> Clock:
    """A clock stopped at ``now``."""
    return lambda: now


def tuner_for_one_stream(rtt: float | None) -> WindowTuner:
    """A 16 MiB cap and a 64 MiB budget, one 256 KiB stream already counted."""
    tuner = WindowTuner(16 * MIB, 64 * MIB)
    tuner.rtt = rtt
    tuner.used = W
    return tuner


def drive(window: ReceiveWindow, tuner: WindowTuner, rounds: int, step: float) -> list[int]:
    """A sender that always fills the window and a reader that drains it every ``step`` s."""
    sizes = []
    now = 0.0
    for _ in range(rounds):
        window.receive(1, window.credit)
        now += step
        window.consume(window.buffered, tuner, at(now))
        sizes.append(window.max_window)
    return sizes


def test_window_doubles_while_updates_come_within_a_few_round_trips() -> None:
    tuner = tuner_for_one_stream(0.1)
    sizes = drive(ReceiveWindow(W), tuner, rounds=10, step=0.05)
    assert sizes == [2 * W, 4 * W, 8 * W, 16 * W, 32 * W, 64 * W, 64 * W, 64 * W, 64 * W, 64 * W]
    assert tuner.used == 16 * MIB


def test_a_slow_reader_keeps_the_window_small() -> None:
    tuner = tuner_for_one_stream(0.01)
    assert set(drive(ReceiveWindow(W), tuner, rounds=10, step=0.5)) == {W}  # 50 RTTs apart
    assert tuner.used == W


def test_no_growth_before_the_first_round_trip_is_measured() -> None:
    tuner = tuner_for_one_stream(None)
    assert set(drive(ReceiveWindow(W), tuner, rounds=5, step=0.0001)) == {W}


def test_an_idle_stream_grants_less_and_returns_budget() -> None:
    tuner = tuner_for_one_stream(0.01)
    window = ReceiveWindow(W)
    drive(window, tuner, rounds=4, step=0.001)
    assert window.max_window == 16 * W
    window.receive(1, window.credit)
    window.consume(window.buffered, tuner, at(100.0))  # the next update after a long pause
    assert window.max_window == 8 * W
    assert window.credit + window.buffered <= window.max_window
    assert tuner.used == 8 * W


def test_a_stream_whose_reader_stops_pins_at_most_its_window() -> None:
    tuner = tuner_for_one_stream(0.01)
    window = ReceiveWindow(W)
    drive(window, tuner, rounds=3, step=0.001)
    held = window.max_window
    window.receive(1, window.credit)  # the peer sends all it may; nobody reads
    with pytest.raises(yamux.ProtocolError):
        window.receive(1, 1)
    assert window.buffered == held


def wire(config: Config, chunks: int) -> bytes:
    """Every byte the receiving side writes while a fast reader drains ``chunks`` x 64 KiB."""
    sender, receiver = Connection(client=True), Connection(client=False, config=config)
    if receiver.tuner is not None:
        receiver.tuner.rtt = 1.0
    sid = sender.open_stream()
    out = bytearray()
    now = 0.0
    for _ in range(chunks):
        sender.send_data(sid, bytes(64 * 1024))
        data = b"".join(
            bytes(c) for c in sender.outbox.take_control() + sender.outbox.take_data(1 << 30)
        )
        for event in receiver.receive_data(data):
            if isinstance(event, StreamOpened):
                receiver.accept_stream(sid)
            elif isinstance(event, DataReceived):
                now += 0.001
                receiver.consume(sid, len(event.data), at(now))
        reply = b"".join(receiver.outbox.take_control())
        out += reply
        sender.receive_data(reply)
    return bytes(out)


def test_autotune_with_the_default_maximum_is_the_fixed_window_byte_for_byte() -> None:
    fixed = wire(Config(), 64)
    assert wire(Config(window_autotune=True), 64) == fixed
    grown = wire(Config(window_autotune=True, max_stream_window_size=16 * MIB), 64)
    assert grown != fixed
    deltas = [f.length for f in FrameDecoder(1 << 32).feed(grown) if f.length]
    assert max(deltas) > W  # the window grew: bigger updates


class TunedSession:
    """A sender and an auto-tuning receiver, joined by real frames, with ``streams`` open."""

    def __init__(self, config: Config, streams: int) -> None:
        self.sender = Connection(client=True)
        self.receiver = Connection(client=False, config=config)
        assert self.receiver.tuner is not None
        self.receiver.tuner.rtt = 0.05
        self.ids = [self.sender.open_stream() for _ in range(streams)]
        for event in self.receiver.receive_data(b"".join(self.sender.outbox.take_control())):
            assert isinstance(event, StreamOpened)
            self.receiver.accept_stream(event.stream_id)
        self.sender.receive_data(b"".join(self.receiver.outbox.take_control()))

    def round(self, now: float, per_read: float) -> float:
        """The sender fills every window; the reader drains it, ``per_read`` s a frame."""
        for sid in self.ids:
            self.sender.send_data(sid, bytes(self.sender.send_credit(sid)))
        sender = self.sender
        data = b"".join(
            bytes(c) for c in sender.outbox.take_control() + sender.outbox.take_data(1 << 40)
        )
        for event in self.receiver.receive_data(data):
            assert not isinstance(event, yamux.events.SessionTerminated), event
            if isinstance(event, DataReceived):
                now += per_read
                self.receiver.consume(event.stream_id, len(event.data), at(now))
        self.sender.receive_data(b"".join(self.receiver.outbox.take_control()))
        return now

    def windows(self) -> list[int]:
        return [
            self.receiver._streams[sid].recv.max_window
            for sid in self.ids
            if sid in self.receiver._streams
        ]


def test_100_busy_streams_stay_within_the_session_budget() -> None:
    config = Config(
        window_autotune=True, max_stream_window_size=16 * MIB, max_session_window=64 * MIB
    )
    session = TunedSession(config, streams=100)
    tuner = session.receiver.tuner
    assert tuner is not None
    now = 0.0
    peak = 0
    for _ in range(40):
        now = session.round(now, per_read=0.0001)
        windows = session.windows()
        assert len(windows) == 100
        assert sum(windows) == tuner.used
        assert sum(windows) <= config.max_session_window
        peak = max(peak, max(windows))
    assert peak > W  # they did grow, as far as the budget let them


def test_sessions_sharing_a_budget_stay_within_it_and_grow_again_when_it_is_returned() -> None:
    budget = WindowBudget(8 * MIB)
    config = Config(
        window_autotune=True,
        max_stream_window_size=16 * MIB,
        max_session_window=64 * MIB,
        window_budget=budget,
    )
    sessions = [TunedSession(config, streams=2) for _ in range(3)]
    now = 0.0

    def run(rounds: int, active: list[TunedSession], per_read: float = 0.0001) -> None:
        nonlocal now
        for _ in range(rounds):
            for session in active:
                now = session.round(now, per_read)
                total = sum(sum(s.windows()) for s in sessions)
                assert budget.used == total
                assert total <= budget.limit

    run(20, sessions)
    assert budget.used > budget.limit - 6 * W  # grown as far as the shared budget lets
    assert all(
        s.receiver.tuner is not None and s.receiver.tuner.used < 8 * MIB for s in sessions
    )  # the shared budget, not the session's, stopped them
    first, second, third = sessions
    held_by_others = sum(second.windows()) + sum(third.windows())

    run(2, [first], per_read=100.0)  # its reader slows down: it grants less
    assert budget.used < budget.limit - 2 * W
    run(20, [second, third])
    assert sum(second.windows()) + sum(third.windows()) > held_by_others  # growth resumed

    second.receiver.terminate(yamux.SessionClosedError("closed by the test"))
    assert budget.used == sum(first.windows()) + sum(third.windows())
    before = sum(third.windows())
    run(20, [third])
    assert sum(third.windows()) > before
    for session in (first, third):
        session.receiver.terminate(yamux.SessionClosedError("closed by the test"))
    assert budget.used == 0


def test_a_shared_budget_is_validated() -> None:
    with pytest.raises(yamux.ConfigError, match="window budget limit must be an integer >= 262144"):
        WindowBudget(W - 1)
    with pytest.raises(yamux.ConfigError, match=r"window_budget must be a yamux\.WindowBudget"):
        Config(window_budget=64 * MIB)  # type: ignore[arg-type]
    budget = WindowBudget(64 * MIB)
    assert Config(window_budget=budget).replace(max_session_window=W).window_budget is budget


ops = st.lists(
    st.tuples(st.sampled_from(["receive", "consume", "tick", "rtt"]), st.floats(0, 1)), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, cap=st.sampled_from([W, 4 * W, 64 * W]), budget=st.sampled_from([W, 8 * W]))
def test_tuned_window_rule_properties(ops: list[tuple[str, float]], cap: int, budget: int) -> None:
    """Any sequence: the peer and we agree on credit, memory stays within the window and budget."""
    tuner = WindowTuner(cap, budget)
    tuner.used = W
    window = ReceiveWindow(W)
    peer_credit = W
    now = 0.0
    for op, fraction in ops:
        if op == "receive":
            n = int(peer_credit * fraction)
            window.receive(1, n)
            peer_credit -= n
        elif op == "consume":
            peer_credit += window.consume(int(window.buffered * fraction), tuner, at(now))
        elif op == "tick":
            now += fraction * 3
        else:
            tuner.rtt = fraction / 10
        assert peer_credit == window.credit
        assert window.credit + window.buffered <= window.max_window
        assert W <= window.max_window <= max(W, min(cap, budget))
        assert tuner.used == window.max_window
    peer_credit += window.consume(window.buffered, tuner, at(now + 100))
    assert window.credit > window.max_window // 2  # a reader that drained never stalls the peer


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["grow", "idle", "close"])), max_size=60
    ),
    limit=st.sampled_from([3 * W, 5 * W, 12 * W]),
    session=st.sampled_from([2 * W, 64 * W]),
)
def test_tuners_sharing_a_budget_never_grow_past_it(
    ops: list[tuple[int, str]], limit: int, session: int
) -> None:
    """Three sessions of one stream each: growth needs room in both budgets; closing returns."""
    budget = WindowBudget(limit)
    tuners = [WindowTuner(64 * W, session, budget) for _ in range(3)]
    windows = [W, W, W]
    for tuner in tuners:
        tuner.rtt = 0.01
        tuner.stream_opened(W)
    for index, op in ops:
        tuner = tuners[index]
        if op == "close":
            tuner.stream_closed(windows[index])
            tuner.stream_opened(W)  # and a new stream takes its place
            windows[index] = W
        else:
            windows[index] = tuner.resize(windows[index], 0.001 if op == "grow" else 10.0)
        assert budget.used == sum(windows) <= limit
        assert tuner.used == windows[index] <= max(W, session)
    for tuner, window in zip(tuners, windows, strict=True):
        tuner.stream_closed(window)
    assert budget.used == 0


async def read_all(stream: yamux.Stream) -> int:
    total = 0
    while data := await stream.read(1 << 20):
        total += len(data)
    return total


async def test_a_stream_over_a_long_link_grows_its_window() -> None:
    config = Config(window_autotune=True, max_stream_window_size=16 * MIB, enable_keepalive=False)
    received: asyncio.Queue[int] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        stream = await session.accept_stream()
        await read_all(stream)
        await received.put(session._protocol.core._streams[stream.id].recv.max_window)
        stream.close()
        await session.wait_closed()

    server = await yamux.start_server(on_session, "127.0.0.1", 0, config=config)
    async with server, SlowLink("127.0.0.1", server.port, delay=0.02, rate=None) as link:
        client = await yamux.connect("127.0.0.1", link.port, config=config)
        try:
            stream = await client.open_stream()
            for _ in range(64):
                stream.write(bytes(1 << 20))
                await stream.drain()
            stream.close()
            window = await asyncio.wait_for(received.get(), 60)
        finally:
            client.close()
            await client.wait_closed()
    assert W < window <= 16 * MIB


async def test_sessions_of_one_server_share_its_budget_over_a_long_link() -> None:
    """Two real sessions through a 40 ms link: the sum of their windows stays within the
    shared budget while both grow, and comes back to nothing when they end."""
    budget = WindowBudget(2 * MIB)
    config = Config(
        window_autotune=True,
        max_stream_window_size=16 * MIB,
        enable_keepalive=False,
        window_budget=budget,
    )
    ended: asyncio.Queue[int] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        stream = await session.accept_stream()
        await ended.put(await read_all(stream))
        stream.close()
        await session.wait_closed()

    async def send(client: yamux.Session) -> None:
        stream = await client.open_stream()
        for _ in range(16):
            stream.write(bytes(1 << 20))
            await stream.drain()
        stream.close()

    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, budget.used)
            await asyncio.sleep(0.001)

    server = await yamux.start_server(on_session, "127.0.0.1", 0, config=config)
    async with server, SlowLink("127.0.0.1", server.port, delay=0.02, rate=None) as link:
        clients = [await yamux.connect("127.0.0.1", link.port, config=config) for _ in range(2)]
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(asyncio.gather(*(send(c) for c in clients)), 60)
            assert [await asyncio.wait_for(ended.get(), 60) for _ in clients] == [16 << 20] * 2
        finally:
            watcher.cancel()
            for client in clients:
                client.close()
                await client.wait_closed()
    assert 2 * W < peak <= budget.limit  # they grew, together no further than the budget
    assert budget.used == 0  # every session ended: all returned
