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
from yamux import Config, Connection, FrameDecoder
from yamux.const import INITIAL_STREAM_WINDOW
from yamux.events import DataReceived, StreamOpened
from yamux.flow import ReceiveWindow, WindowTuner

W = INITIAL_STREAM_WINDOW
MIB = 1 << 20


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
        window.consume(window.buffered, tuner, now)
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
    window.consume(window.buffered, tuner, 100.0)  # the next update after a long pause
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
        data = b"".join(bytes(c) for c in sender.take_control() + sender.take_data(1 << 30))
        for event in receiver.receive_data(data):
            if isinstance(event, StreamOpened):
                receiver.accept_stream(sid)
            elif isinstance(event, DataReceived):
                now += 0.001
                receiver.consume(sid, len(event.data), now)
        reply = b"".join(receiver.take_control())
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


def test_100_busy_streams_stay_within_the_session_budget() -> None:
    config = Config(window_autotune=True, max_stream_window_size=16 * MIB,
                    max_session_window=64 * MIB)
    sender, receiver = Connection(client=True), Connection(client=False, config=config)
    assert receiver.tuner is not None
    receiver.tuner.rtt = 0.05
    ids = [sender.open_stream() for _ in range(100)]
    for event in receiver.receive_data(b"".join(sender.take_control())):
        assert isinstance(event, StreamOpened)
        receiver.accept_stream(event.stream_id)
    sender.receive_data(b"".join(receiver.take_control()))
    now = 0.0
    peak = 0
    for _ in range(40):
        for sid in ids:
            sender.send_data(sid, bytes(sender.send_credit(sid)))
        data = b"".join(bytes(c) for c in sender.take_control() + sender.take_data(1 << 40))
        for event in receiver.receive_data(data):
            assert not isinstance(event, yamux.events.SessionTerminated), event
            if isinstance(event, DataReceived):
                now += 0.0001
                receiver.consume(event.stream_id, len(event.data), now)
        sender.receive_data(b"".join(receiver.take_control()))
        windows = [receiver._streams[sid].recv.max_window for sid in ids]
        assert sum(windows) == receiver.tuner.used
        assert sum(windows) <= config.max_session_window
        peak = max(peak, max(windows))
    assert peak > W  # they did grow, as far as the budget let them


ops = st.lists(st.tuples(st.sampled_from(["receive", "consume", "tick", "rtt"]),
                         st.floats(0, 1)), max_size=80)


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
            peer_credit += window.consume(int(window.buffered * fraction), tuner, now)
        elif op == "tick":
            now += fraction * 3
        else:
            tuner.rtt = fraction / 10
        assert peer_credit == window.credit
        assert window.credit + window.buffered <= window.max_window
        assert W <= window.max_window <= max(W, min(cap, budget))
        assert tuner.used == window.max_window
    peer_credit += window.consume(window.buffered, tuner, now + 100)
    assert window.credit > window.max_window // 2  # a reader that drained never stalls the peer


async def test_a_stream_over_a_long_link_grows_its_window() -> None:
    config = Config(window_autotune=True, max_stream_window_size=16 * MIB, enable_keepalive=False)
    received: asyncio.Queue[int] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        stream = await session.accept_stream()
        total = 0
        while data := await stream.read(1 << 20):
            total += len(data)
        await received.put(session._core._streams[stream.id].recv.max_window)
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
            await client.close()
    assert W < window <= 16 * MIB
