"""The sans-IO core against hostile or unusual peers: whatever arrives, state stays bounded.

Frames are hand-made, as an attacker (or a peer from another yamux family)
would send them; assertions are on events, counters and the frames we answer.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from yamux import Config, Connection, ControlQueueFullError, GoAwayCode
from yamux.const import Flag, FrameType
from yamux.events import DataReceived, Event, SessionTerminated, StreamReset
from yamux.frame import Frame, FrameDecoder, encode_header

DATA, WU, PING, GO_AWAY = FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY
SYN, ACK, FIN, RST = int(Flag.SYN), int(Flag.ACK), int(Flag.FIN), int(Flag.RST)


def raw(type_: FrameType, flags: int, stream_id: int, length: int, body: bytes = b"") -> bytes:
    return encode_header(type_, flags, stream_id, length) + body


def sent_frames(conn: Connection) -> list[Frame]:
    out = b"".join(bytes(c) for c in conn.outbox.take_control() + conn.outbox.take_data(1 << 40))
    return list(FrameDecoder(1 << 32).feed(out))


# ------------------------------------------------ item 7: stop at the first fatal event
def test_frames_after_a_fatal_go_away_in_the_same_chunk_produce_nothing() -> None:
    conn = Connection(client=False)
    chunk = (
        raw(GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR)
        + raw(WU, SYN, 1, 0)
        + raw(DATA, SYN, 3, 4, b"abcd")
        + raw(PING, SYN, 0, 7)
    )
    events = conn.receive_data(chunk)
    assert len(events) == 1
    assert isinstance(events[0], SessionTerminated)
    assert conn.num_streams == 0
    assert not any(f.type is PING for f in sent_frames(conn))


def _frame(type_: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    body = bytes(min(length, 64)) if type_ is DATA else b""
    return raw(type_, flags, stream_id, len(body) if type_ is DATA else length, body)


frames = st.lists(
    st.builds(
        _frame,
        st.sampled_from(list(FrameType)),
        st.integers(0, 15),
        st.sampled_from([0, 1, 2, 3, 4, 5]),
        st.sampled_from([0, 1, 2, 64, 0xFFFFFFFF]),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(frames, st.booleans(), st.integers(1, 7))
def test_no_event_follows_session_terminated_in_one_call(
    chunks: list[bytes], client: bool, split: int
) -> None:
    conn = Connection(client=client, config=Config(accept_backlog=2, max_streams=3))
    data = b"".join(chunks)
    step = max(1, len(data) // split)
    seen_end = False
    for pos in range(0, max(len(data), 1), step):
        events: list[Event] = conn.receive_data(data[pos : pos + step])
        ends = [i for i, e in enumerate(events) if isinstance(e, SessionTerminated)]
        assert len(ends) <= 1
        if ends:
            assert ends[0] == len(events) - 1
            assert not seen_end
            seen_end = True
        elif seen_end:
            assert events == []
        if conn.closed:
            assert conn.num_streams == 0


# --------------------------------------- issue 13 fix 2: a RST's length is not a window delta
def _established(conn: Connection, stream_id: int) -> None:
    conn.receive_data(raw(WU, SYN, stream_id, 0))
    conn.accept_stream(stream_id)
    conn.outbox.take_control()


def test_go_yamux_reset_with_error_code_in_the_length_resets_only_that_stream() -> None:
    conn = Connection(client=False)
    _established(conn, 1)
    _established(conn, 3)
    events = conn.receive_data(raw(WU, RST, 1, 0xFFFFFFFF))
    assert events == [StreamReset(1, "reset by peer")]
    assert not conn.closed
    assert conn.stream_ids() == [3]
    assert conn.receive_data(raw(DATA, 0, 3, 2, b"ok")) == [DataReceived(3, b"ok")]


def test_reset_on_a_data_frame_discards_its_payload_whatever_the_window() -> None:
    conn = Connection(client=False, config=Config())
    _established(conn, 1)
    conn.receive_data(raw(DATA, 0, 1, 200 * 1024, bytes(200 * 1024)))
    body = bytes(100 * 1024)  # beyond the 56 KiB of window left: would be a protocol violation
    events = conn.receive_data(raw(DATA, RST, 1, len(body), body))
    assert events == [StreamReset(1, "reset by peer")]
    assert not conn.closed
    assert conn.discarded_bytes == len(body)


# ------------------------------------------- item 3: the control-frame queue is bounded
def test_ping_flood_from_a_peer_that_never_reads_ends_the_session_at_the_limit() -> None:
    config = Config(control_queue_limit=1200)  # 100 frames of 12 bytes
    conn = Connection(client=False, config=config)
    events = conn.receive_data(b"".join(raw(PING, SYN, 0, n) for n in range(100)))
    assert events == []
    events = conn.receive_data(raw(PING, SYN, 0, 100) + raw(WU, SYN, 1, 0))
    assert len(events) == 1
    assert isinstance(events[0], SessionTerminated)
    assert isinstance(events[0].error, ControlQueueFullError)
    assert "not reading" in str(events[0].error)
    assert "control_queue_limit" in str(events[0].error)
    assert len(conn.outbox.take_control()) <= 101


def test_control_frames_are_taken_within_a_byte_limit_in_order() -> None:
    conn = Connection(client=False)
    conn.receive_data(b"".join(raw(PING, SYN, 0, n) for n in range(10)))
    first = conn.outbox.take_control(limit=40)  # three frames of 12 bytes fit
    assert [f.length for f in FrameDecoder(1 << 32).feed(b"".join(first))] == [0, 1, 2]
    rest = conn.outbox.take_control()
    assert [f.length for f in FrameDecoder(1 << 32).feed(b"".join(rest))] == list(range(3, 10))
    assert not conn.outbox.control


def test_draining_the_control_queue_keeps_a_busy_session_alive() -> None:
    conn = Connection(client=False, config=Config(control_queue_limit=1200))
    for round_ in range(50):
        conn.receive_data(b"".join(raw(PING, SYN, 0, n) for n in range(90)))
        assert not conn.closed, round_
        conn.outbox.take_control()
