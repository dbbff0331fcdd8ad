"""The sans-IO core: two Connections wired back to back in memory, and hand-made frames.

``Pair`` shuttles each side's outbox (``take_control()`` first, then
``take_data(budget)``) into the other's ``receive_data`` and records the events
and the frames each side sent, so tests assert what goes over the wire.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from yamux import (
    Config,
    Connection,
    GoAwayCode,
    NoNewStreamsError,
    PeerTerminatedError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    TooManyStreamsError,
    YamuxError,
)
from yamux.const import INITIAL_STREAM_WINDOW, Flag, FrameType
from yamux.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    InputHeld,
    PongReceived,
    SessionTerminated,
    StreamAcknowledged,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
    WindowUpdated,
)
from yamux.frame import Frame, FrameDecoder, encode_frame, encode_header

KIB = 1024
W = INITIAL_STREAM_WINDOW
BIG = 1 << 40
DATA, WU, PING, GO_AWAY = FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST
PATTERN = bytes(range(256)) * (8 * 1024 + 1)


def payload(n: int, start: int = 0) -> bytes:
    """``n`` bytes of a recognisable pattern (so reordering or loss shows)."""
    start %= 256
    return PATTERN[start : start + n]


def flush(conn: Connection, budget: int = BIG) -> bytes:
    """What an I/O adapter writes: control frames first, then stream data."""
    return b"".join(
        bytes(chunk) for chunk in conn.outbox.take_control() + conn.outbox.take_data(budget)
    )


def decode(data: bytes) -> list[Frame]:
    return list(FrameDecoder(1 << 32).feed(data))


def raw(type_: FrameType, flags: int, stream_id: int, length: int, body: bytes = b"") -> bytes:
    """A hand-made frame; ``length`` need not match the body (for violations)."""
    return encode_header(type_, flags, stream_id, length) + body


def encode_all(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f) for f in frames)


def data_frame(stream_id: int, body: bytes, flags: int = 0) -> bytes:
    return encode_frame(Frame(DATA, Flag(flags), stream_id, len(body), body))


def finished_streams(conn: Connection) -> list[int]:
    """Streams take_data finished (our FIN went out after the peer's): its only events."""
    events = conn.take_events()
    assert all(isinstance(e, StreamClosed) for e in events), events
    return [e.stream_id for e in events if isinstance(e, StreamClosed)]


class Pair:
    """A client and a server Connection talking through memory."""

    def __init__(
        self,
        client: Config | None = None,
        server: Config | None = None,
        *,
        client_role: bool = True,
        server_role: bool = False,
    ) -> None:
        self.client = Connection(client=client_role, config=client)
        self.server = Connection(client=server_role, config=server)
        self.events: dict[Connection, list[Event]] = {self.client: [], self.server: []}
        self.sent: dict[Connection, list[Frame]] = {self.client: [], self.server: []}
        self.finished: dict[Connection, list[int]] = {self.client: [], self.server: []}
        self._decoders = {self.client: FrameDecoder(1 << 32), self.server: FrameDecoder(1 << 32)}
        self.auto_consume = False

    def peer(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def transfer(self, src: Connection, budget: int = BIG) -> int:
        """One flush of ``src`` delivered to its peer; returns the bytes moved."""
        data = flush(src, budget)
        self.finished[src].extend(finished_streams(src))
        if not data:
            return 0
        self.sent[src].extend(self._decoders[src].feed(data))
        dst = self.peer(src)
        events = dst.receive_data(data)
        self.events[dst].extend(events)
        if self.auto_consume:
            for event in events:
                if isinstance(event, DataReceived):
                    dst.consume(event.stream_id, len(event.data))
        return len(data)

    def pump(self, budget: int = BIG, max_rounds: int = 10_000) -> None:
        """Shuttle both ways until neither side has anything to send."""
        for _ in range(max_rounds):
            if not self.transfer(self.client, budget) + self.transfer(self.server, budget):
                return
        raise AssertionError("the connections never went quiet")

    def take_events(self, conn: Connection) -> list[Event]:
        events = self.events[conn]
        self.events[conn] = []
        return events

    def take_sent(self, conn: Connection) -> list[Frame]:
        frames = self.sent[conn]
        self.sent[conn] = []
        return frames

    def received(self, conn: Connection, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events[conn]
            if isinstance(e, DataReceived) and e.stream_id == stream_id
        )

    def open(self, opener: Connection | None = None) -> int:
        """Open a stream from ``opener`` (the client by default), complete the handshake.

        The handshake's events and frames are taken, so tests see only what follows.
        """
        opener = opener or self.client
        acceptor = self.peer(opener)
        stream_id = opener.open_stream()
        self.pump()
        assert StreamOpened(stream_id) in self.take_events(acceptor)
        acceptor.accept_stream(stream_id)
        self.pump()
        assert StreamAcknowledged(stream_id) in self.take_events(opener)
        self.take_sent(opener)
        self.take_sent(acceptor)
        return stream_id


def of_type(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def data_bytes(frames: list[Frame], stream_id: int | None = None) -> int:
    return sum(
        f.length
        for f in frames
        if f.type is DATA and (stream_id is None or f.stream_id == stream_id)
    )


def assert_terminated_with_protocol_error(
    conn: Connection, events: list[Event], match: str
) -> None:
    terminated = of_type(events, SessionTerminated)
    assert len(terminated) == 1
    assert events[-1] is terminated[0]
    assert isinstance(terminated[0].error, ProtocolError)
    assert match in str(terminated[0].error)
    assert conn.closed
    assert conn.error is terminated[0].error
    assert conn.num_streams == 0
    frames = decode(flush(conn))
    assert frames[-1] == Frame(GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR)
    with pytest.raises(SessionClosedError):
        conn.open_stream()


# --------------------------------------------------------------- stream ids
def test_first_client_stream_id_is_1_and_server_2_then_step_by_2() -> None:
    pair = Pair()
    assert [pair.client.open_stream() for _ in range(4)] == [1, 3, 5, 7]
    assert [pair.server.open_stream() for _ in range(4)] == [2, 4, 6, 8]
    pair.pump()
    assert [e.stream_id for e in of_type(pair.events[pair.server], StreamOpened)] == [1, 3, 5, 7]
    assert [e.stream_id for e in of_type(pair.events[pair.client], StreamOpened)] == [2, 4, 6, 8]


# ---------------------------------------------------------------- handshake
def test_syn_ack_handshake_frames_and_events() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    assert client.open_stream() == 1
    assert client.unacked_outbound == 1
    assert client.num_streams == 1
    assert decode(b"".join(client.outbox.take_control())) == [Frame(WU, SYN, 1, 0)]
    events = server.receive_data(raw(WU, SYN, 1, 0))
    assert events == [StreamOpened(1)]
    assert server.unaccepted_inbound == 1
    assert server.num_streams == 1
    assert not server.outbox.control  # no ACK until the application accepts
    server.accept_stream(1)
    assert server.unaccepted_inbound == 0
    ack = b"".join(server.outbox.take_control())
    assert decode(ack) == [Frame(WU, ACK, 1, 0)]
    assert client.receive_data(ack) == [StreamAcknowledged(1)]
    assert client.unacked_outbound == 0
    server.accept_stream(1)  # a second accept sends nothing
    assert not server.outbox.control


def test_data_may_follow_syn_before_the_ack() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    sid = client.open_stream()
    client.send_data(sid, b"hello")
    pair.pump()
    assert pair.take_events(server) == [StreamOpened(sid), DataReceived(sid, b"hello")]
    assert [f.type for f in pair.take_sent(client)] == [WU, DATA]
    server.accept_stream(sid)
    server.send_data(sid, b"world")
    pair.pump()
    assert pair.take_events(client) == [StreamAcknowledged(sid), DataReceived(sid, b"world")]


def test_larger_window_is_granted_on_syn() -> None:
    """The opener's SYN carries the excess: the acceptor may send 256 KiB + delta at once."""
    window = 1024 * KIB
    pair = Pair(client=Config(max_stream_window_size=window))
    client, server = pair.client, pair.server
    sid = client.open_stream()
    pair.pump()
    assert pair.take_sent(client) == [Frame(WU, SYN, sid, window - W)]
    assert server.send_credit(sid) == W + (window - W)
    server.accept_stream(sid)
    server.send_data(sid, payload(window))
    frames = decode(flush(server))  # one flush, no window update needed
    assert data_bytes(frames, sid) == window
    assert server.send_credit(sid) == 0
    assert server.pending_bytes(sid) == 0
    events = client.receive_data(encode_all(frames))
    assert not of_type(events, SessionTerminated)
    assert b"".join(e.data for e in of_type(events, DataReceived)) == payload(window)
    assert not client.outbox.control  # nothing consumed yet: no update


def test_larger_window_is_granted_on_ack() -> None:
    window = 768 * KIB
    pair = Pair(server=Config(max_stream_window_size=window))
    client, server = pair.client, pair.server
    sid = client.open_stream()
    pair.pump()
    assert pair.take_sent(client) == [Frame(WU, SYN, sid, 0)]
    server.accept_stream(sid)
    pair.pump()
    assert pair.take_sent(server) == [Frame(WU, ACK, sid, window - W)]
    assert client.send_credit(sid) == window
    assert server.send_credit(sid) == W
    client.send_data(sid, payload(window + 1))
    frames = decode(flush(client))
    assert data_bytes(frames, sid) == window
    assert client.pending_bytes(sid) == 1
    events = server.receive_data(encode_all(frames))
    assert len(b"".join(e.data for e in of_type(events, DataReceived))) == window
    assert not server.closed


# ------------------------------------------------------------ flow control
@pytest.mark.parametrize("max_frame", [64 * KIB, 1000, 100 * KIB])
def test_never_sends_beyond_the_peer_window(max_frame: int) -> None:
    pair = Pair(client=Config(max_frame_size=max_frame))
    client = pair.client
    sid = pair.open()
    client.send_data(sid, payload(W + 5000))
    assert client.outbox.sendable
    frames = decode(flush(client))
    assert data_bytes(frames, sid) == W
    assert all(f.length <= max_frame for f in frames)
    assert client.send_credit(sid) == 0
    assert client.pending_bytes(sid) == 5000
    assert not client.outbox.sendable  # nothing sendable until the peer grants more
    assert client.outbox.take_data(BIG) == []
    client.send_data(sid, b"more")  # queuing is fine, sending still waits
    assert not client.outbox.sendable
    assert client.outbox.take_data(BIG) == []


def test_take_data_stops_near_the_budget() -> None:
    pair = Pair()
    sid = pair.open()
    pair.client.send_data(sid, payload(200 * KIB))
    out = pair.client.outbox.take_data(10)
    assert data_bytes(decode(b"".join(bytes(c) for c in out))) == 64 * KIB  # one frame
    out = pair.client.outbox.take_data(70 * KIB)
    assert data_bytes(decode(b"".join(bytes(c) for c in out))) == 128 * KIB
    assert pair.client.pending_bytes(sid) == 8 * KIB


def fill_window(pair: Pair, sender: Connection, sid: int, n: int = W) -> None:
    sender.send_data(sid, payload(n))
    pair.pump()
    assert len(pair.received(pair.peer(sender), sid)) == n


def window_updates(frames: list[Frame], sid: int) -> list[int]:
    return [f.length for f in frames if f.type is WU and f.stream_id == sid and not f.flags]


def test_window_update_once_half_the_window_is_consumed() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    sid = pair.open()
    fill_window(pair, server, sid)
    assert server.send_credit(sid) == 0
    client.consume(sid, W // 2 - 1)
    assert not client.outbox.control  # not before half
    pair.pump()
    assert window_updates(pair.take_sent(client), sid) == []
    client.consume(sid, 1)
    pair.pump()
    assert window_updates(pair.take_sent(client), sid) == [W // 2]
    assert server.send_credit(sid) == W // 2
    assert of_type(pair.take_events(server), WindowUpdated) == [WindowUpdated(sid)]
    for _ in range(W // 2 // 1024 - 1):
        client.consume(sid, 1024)
    pair.pump()
    assert window_updates(pair.take_sent(client), sid) == []
    client.consume(sid, 1024)
    pair.pump()
    assert window_updates(pair.take_sent(client), sid) == [W // 2]
    assert server.send_credit(sid) == W


def test_partial_read_of_half_the_window_sends_exactly_one_update() -> None:
    """hashicorp's TestSession_PartialReadWindowUpdate: read half + 1 of a full window."""
    pair = Pair()
    client, server = pair.client, pair.server
    sid = pair.open()
    assert server.send_credit(sid) == W
    fill_window(pair, server, sid)
    assert server.send_credit(sid) == 0
    client.consume(sid, W // 2 + 1)
    pair.pump()
    assert window_updates(pair.take_sent(client), sid) == [W // 2 + 1]
    assert server.send_credit(sid) == W // 2 + 1


def test_fast_reader_streams_a_large_transfer() -> None:
    pair = Pair()
    pair.auto_consume = True
    sid = pair.open()
    size = 4 * W + 123
    pair.client.send_data(sid, payload(size))
    pair.client.close_stream(sid)
    pair.pump()
    assert pair.received(pair.server, sid) == payload(size)
    assert StreamEnded(sid) in pair.events[pair.server]
    updates = window_updates(pair.sent[pair.server], sid)
    assert updates
    assert all(u >= W // 2 for u in updates)  # batched, not one per frame


def test_peer_overrunning_our_window_ends_the_session_with_go_away_1() -> None:
    pair = Pair()
    client = pair.client
    sid = pair.open()
    frames = b"".join(data_frame(sid, payload(64 * KIB)) for _ in range(4))
    events = client.receive_data(frames + data_frame(sid, b"x"))
    assert len(of_type(events, DataReceived)) == 4  # what fit is delivered first
    assert_terminated_with_protocol_error(client, events, "exceeds the receive window")


def test_oversized_data_header_is_rejected_before_its_body_arrives() -> None:
    """Memory bound: a Data header longer than any window fails at once, nothing buffered."""
    pair = Pair()
    client = pair.client
    sid = pair.open()
    events = client.receive_data(raw(DATA, 0, sid, W + 1))
    assert_terminated_with_protocol_error(client, events, f"length={W + 1}")


def test_malicious_sender_is_cut_off_at_the_window() -> None:
    """A sender ignoring flow control: at most one window is ever held, then ProtocolError."""
    pair = Pair()
    client = pair.client
    sid = pair.open()
    held = 0
    for _ in range(W // 1000 + 2):
        events = client.receive_data(data_frame(sid, payload(1000)))
        held += sum(len(e.data) for e in of_type(events, DataReceived))
        assert held <= W
        if client.closed:
            break
    assert held == W // 1000 * 1000
    assert_terminated_with_protocol_error(client, events, "exceeds the receive window")


def test_consume_before_accept_never_grants_beyond_the_window() -> None:
    """Pre-ACK data consumed before accept: the ACK must not grant the excess a second time."""
    window = 1024 * KIB
    pair = Pair(server=Config(max_stream_window_size=window))
    client, server = pair.client, pair.server
    sid = client.open_stream()
    client.send_data(sid, payload(1000))
    pair.pump()
    server.consume(sid, 1000)
    server.accept_stream(sid)
    pair.pump()
    granted = W + sum(f.length for f in pair.sent[server] if f.type is WU)
    assert granted - 1000 == client.send_credit(sid) == window
    client.send_data(sid, payload(window + 1))
    pair.pump()
    assert client.pending_bytes(sid) == 1  # the peer holds exactly one window, no more


# ------------------------------------------------------- stream-level errors
def test_data_after_peer_fin_resets_only_that_stream() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    one, three = pair.open(), pair.open()
    events = client.receive_data(raw(WU, FIN, one, 0) + data_frame(one, b"late"))
    assert events[0] == StreamEnded(one)
    assert isinstance(events[1], StreamReset)
    assert events[1].stream_id == one
    assert "after the peer's FIN" in events[1].reason
    assert len(events) == 2
    assert decode(b"".join(client.outbox.take_control())) == [Frame(WU, RST, one, 0)]
    assert not client.closed
    assert client.stream_ids() == [three]
    server.send_data(three, b"still fine")
    pair.pump()
    assert pair.received(client, three) == b"still fine"


def test_duplicate_syn_is_a_protocol_error() -> None:
    pair = Pair()
    server = pair.server
    sid = pair.open()
    events = server.receive_data(raw(WU, SYN, sid, 0))
    assert_terminated_with_protocol_error(server, events, f"duplicate SYN for stream {sid}")


@pytest.mark.parametrize(("client_role", "stream_id"), [(False, 2), (True, 1)])
def test_syn_with_our_parity_is_a_protocol_error(client_role: bool, stream_id: int) -> None:
    conn = Connection(client=client_role)
    events = conn.receive_data(raw(WU, SYN, stream_id, 0))
    assert_terminated_with_protocol_error(conn, events, "reserved for our side")


@pytest.mark.parametrize("role", [True, False])
def test_same_role_pairing_is_rejected_with_go_away_1(role: bool) -> None:
    """Client-client (or server-server) sessions fail on the first stream, on both ends."""
    pair = Pair(client_role=role, server_role=role)
    a, b = pair.client, pair.server
    a.open_stream()
    pair.pump()
    for conn in (a, b):
        terminated = of_type(pair.events[conn], SessionTerminated)
        assert len(terminated) == 1
        assert conn.closed
    assert isinstance(of_type(pair.events[b], SessionTerminated)[0].error, ProtocolError)
    assert "same yamux role" in str(b.error)
    assert pair.sent[b][-1] == Frame(GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR)
    assert isinstance(a.error, PeerTerminatedError)
    assert a.error.code == GoAwayCode.PROTOCOL_ERROR


def test_stream_frames_on_stream_zero_are_a_protocol_error() -> None:
    conn = Connection(client=True)
    events = conn.receive_data(data_frame(0, b"x"))
    assert_terminated_with_protocol_error(conn, events, "stream id 0")


def test_ping_on_a_stream_id_is_a_protocol_error() -> None:
    conn = Connection(client=True)
    events = conn.receive_data(raw(PING, SYN, 5, 1))
    assert_terminated_with_protocol_error(conn, events, "stream id 5")


def test_window_update_overflowing_32_bits_is_a_protocol_error() -> None:
    pair = Pair()
    sid = pair.open()
    events = pair.client.receive_data(raw(WU, 0, sid, 0xFFFFFFFF))
    assert_terminated_with_protocol_error(pair.client, events, "past 2**32-1")


def test_stray_acks_change_nothing() -> None:
    """An ACK for a stream the peer opened itself, or a second ACK, is ignored."""
    pair = Pair()
    client, server = pair.client, pair.server
    sid = client.open_stream()
    pair.pump()
    assert server.receive_data(raw(WU, ACK, sid, 0)) == []
    assert server.unaccepted_inbound == 1
    assert server.unacked_outbound == 0
    server.accept_stream(sid)
    assert server.outbox.control  # still accepted normally: the ACK goes out
    pair.pump()
    assert client.unacked_outbound == 0
    assert client.receive_data(raw(WU, ACK, sid, 0)) == []
    assert client.unacked_outbound == 0
    assert of_type(pair.events[client], StreamAcknowledged) == [StreamAcknowledged(sid)]


def test_frames_for_unknown_streams_are_discarded_without_reply() -> None:
    pair = Pair()
    client = pair.client
    sid = pair.open()
    events = client.receive_data(
        data_frame(41, payload(100))
        + data_frame(42, payload(7), FIN)
        + raw(WU, 0, 44, 1000)
        + raw(WU, RST, 46, 0)
        + raw(WU, ACK, 43, 0)
    )
    assert events == []
    assert client.discarded_bytes == 107
    assert not client.outbox.control
    assert not client.closed
    assert client.stream_ids() == [sid]


def test_late_data_for_a_stream_we_reset_is_discarded() -> None:
    pair = Pair()
    client = pair.client
    sid = pair.open()
    client.reset_stream(sid)
    events = client.receive_data(data_frame(sid, payload(50)))
    assert events == []
    assert client.discarded_bytes == 50
    assert decode(b"".join(client.outbox.take_control())) == [Frame(WU, RST, sid, 0)]


# --------------------------------------------------------------------- ping
def test_ping_is_answered_with_the_same_opaque() -> None:
    conn = Connection(client=False)
    assert conn.receive_data(raw(PING, SYN, 0, 0xDEADBEEF)) == []
    assert decode(b"".join(conn.outbox.take_control())) == [Frame(PING, ACK, 0, 0xDEADBEEF)]


def test_ping_answer_comes_out_before_queued_stream_data() -> None:
    """A congested send path does not delay the pong: it is control, ahead of data."""
    pair = Pair(
        client=Config(max_stream_window_size=4 * W), server=Config(max_stream_window_size=4 * W)
    )
    client = pair.client
    one, three = pair.open(), pair.open()
    client.send_data(one, payload(4 * W))
    client.send_data(three, payload(4 * W))
    client.outbox.take_data(64 * KIB)  # the transport took a little, then paused
    assert client.outbox.sendable
    assert client.receive_data(raw(PING, SYN, 0, 77)) == []
    assert client.outbox.control
    out = decode(flush(client, 64 * KIB))
    assert out[0] == Frame(PING, ACK, 0, 77)
    assert [f.type for f in out[1:]] == [DATA]
    assert client.outbox.sendable


def test_ping_round_trip_both_ways() -> None:
    pair = Pair()
    first = pair.client.ping()
    second = pair.client.ping()
    assert first != second
    other = pair.server.ping()
    pair.pump()
    assert pair.take_events(pair.client) == [PongReceived(first), PongReceived(second)]
    assert pair.take_events(pair.server) == [PongReceived(other)]
    assert pair.sent[pair.client] == [
        Frame(PING, SYN, 0, first),
        Frame(PING, SYN, 0, second),
        Frame(PING, ACK, 0, other),
    ]


def test_unsolicited_pong_is_only_reported() -> None:
    conn = Connection(client=True)
    assert conn.receive_data(raw(PING, ACK, 0, 999)) == [PongReceived(999)]
    assert not conn.outbox.control
    assert not conn.closed


# ------------------------------------------------------------------ go away
def test_remote_go_away_normal_stops_new_streams_but_existing_ones_go_on() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    sid = pair.open()
    server.go_away()
    pair.pump()
    assert pair.take_sent(server) == [Frame(GO_AWAY, Flag.NONE, 0, GoAwayCode.NORMAL)]
    assert pair.take_events(client) == [GoAwayReceived(GoAwayCode.NORMAL)]
    assert client.remote_go_away
    with pytest.raises(NoNewStreamsError) as info:
        client.open_stream()
    assert info.value.code == GoAwayCode.NORMAL
    assert client.num_streams == 1
    client.send_data(sid, b"ping")
    server.send_data(sid, b"pong")
    client.close_stream(sid)
    server.close_stream(sid)
    pair.pump()
    assert pair.received(server, sid) == b"ping"
    assert pair.received(client, sid) == b"pong"
    assert client.num_streams == server.num_streams == 0
    assert not client.closed
    assert not server.closed
    # The side that sent go away may still open streams itself.
    assert pair.open(server) == 2


@pytest.mark.parametrize("code", [GoAwayCode.PROTOCOL_ERROR, GoAwayCode.INTERNAL_ERROR, 7])
def test_remote_go_away_with_error_code_ends_the_session(code: int) -> None:
    pair = Pair()
    client = pair.client
    pair.open()
    client.send_data(1, payload(1000))
    events = client.receive_data(raw(GO_AWAY, 0, 0, code))
    assert len(events) == 1
    assert isinstance(events[0], SessionTerminated)
    assert isinstance(events[0].error, PeerTerminatedError)
    assert events[0].error.code == code
    assert client.closed
    assert client.num_streams == 0
    assert not client.outbox.control  # no Go Away echoed back
    assert not client.outbox.sendable  # queued data is dropped
    with pytest.raises(SessionClosedError):
        client.open_stream()
    with pytest.raises(SessionClosedError):
        client.send_data(1, b"x")
    assert client.receive_data(raw(PING, SYN, 0, 1)) == []  # a dead session says nothing
    assert not client.outbox.control


def test_local_go_away_refuses_new_syns_with_rst() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    old = pair.open()
    server.go_away(GoAwayCode.NORMAL)
    new = client.open_stream()  # crosses the go away on the wire
    client.send_data(new, b"too late")
    assert server.receive_data(flush(client)) == [StreamRefused(new, "we sent go away")]
    assert server.discarded_bytes == len(b"too late")
    assert decode(flush(server)) == [
        Frame(GO_AWAY, Flag.NONE, 0, GoAwayCode.NORMAL),
        Frame(WU, RST, new, 0),
    ]
    assert server.stream_ids() == [old]
    server.send_data(old, b"old stream works")
    pair.pump()
    assert pair.received(client, old) == b"old stream works"


def test_local_go_away_with_error_code_ends_the_session() -> None:
    pair = Pair()
    pair.open()
    pair.client.go_away(GoAwayCode.INTERNAL_ERROR)
    assert pair.client.closed
    assert pair.client.num_streams == 0
    assert decode(flush(pair.client)) == [Frame(GO_AWAY, Flag.NONE, 0, 2)]
    events = pair.server.receive_data(encode_frame(Frame(GO_AWAY, Flag.NONE, 0, 2)))
    assert isinstance(events[-1], SessionTerminated)


def test_terminate_queues_go_away_only_when_asked() -> None:
    conn = Connection(client=True)
    conn.open_stream()
    conn.outbox.take_control()
    conn.terminate(SessionClosedError("bye"))
    assert conn.closed
    assert not conn.outbox.control
    other = Connection(client=True)
    other.terminate(SessionClosedError("bye"), GoAwayCode.INTERNAL_ERROR)
    assert decode(b"".join(other.outbox.take_control())) == [Frame(GO_AWAY, Flag.NONE, 0, 2)]
    other.terminate(SessionClosedError("again"), GoAwayCode.PROTOCOL_ERROR)
    assert not other.outbox.control  # only the first end counts


# --------------------------------------------------------- backlog and limits
def test_a_syn_beyond_the_accept_backlog_holds_the_input_until_an_accept() -> None:
    """No RST: the SYN and everything after it wait, in order, for room in the backlog."""
    server = Connection(client=False, config=Config(accept_backlog=2))
    burst = b"".join(raw(WU, SYN, sid, 0) + raw(DATA, 0, sid, 4, b"hi %d" % sid) for sid in (1, 3))
    burst += raw(WU, SYN, 5, 0) + raw(PING, SYN, 0, 42) + raw(WU, SYN, 7, 0)
    burst += raw(DATA, 0, 5, 4, b"hi 5") + raw(DATA, 0, 7, 4, b"hi 7")
    assert server.receive_data(burst) == [
        StreamOpened(1),
        DataReceived(1, b"hi 1"),
        StreamOpened(3),
        DataReceived(3, b"hi 3"),
        InputHeld(),
    ]
    assert server.input_held
    assert server.held_bytes == len(burst)  # an upper bound: the read it came in
    assert server.outbox.take_control() == []  # no RST, and the ping is not read yet
    server.accept_stream(1)
    server.outbox.take_control()
    assert server.resume_input() == [StreamOpened(5), InputHeld()]  # full again, at SYN 7
    assert server.outbox.take_control() == [raw(PING, ACK, 0, 42)]
    assert server.input_held
    server.accept_stream(3)
    assert server.resume_input() == [
        StreamOpened(7),
        DataReceived(5, b"hi 5"),
        DataReceived(7, b"hi 7"),
    ]
    assert not server.input_held
    assert server.held_bytes == 0
    assert server.resume_input() == []  # nothing held: a no-op
    assert server.unaccepted_inbound == 2
    assert server.receive_data(raw(DATA, 0, 7, 1, b"!")) == [DataReceived(7, b"!")]


def test_reads_that_arrive_while_held_are_handled_after_it_in_order() -> None:
    server = Connection(client=False, config=Config(accept_backlog=1))
    first = raw(WU, SYN, 1, 0) + raw(WU, SYN, 3, 0) + raw(DATA, 0, 3, 1, b"a")
    assert server.receive_data(first) == [StreamOpened(1), InputHeld()]
    assert server.input_held
    # a frame split across two later reads, then a SYN that must hold again
    later = raw(DATA, 0, 3, 2, b"bc") + raw(WU, SYN, 5, 0) + raw(DATA, 0, 5, 1, b"d")
    assert server.receive_data(later[:5]) == []
    assert server.receive_data(later[5:]) == []
    assert server.held_bytes <= len(first) + len(later)
    server.accept_stream(1)
    assert server.resume_input() == [
        StreamOpened(3),
        DataReceived(3, b"a"),
        DataReceived(3, b"bc"),
        InputHeld(),
    ]
    assert server.input_held
    server.accept_stream(3)
    assert server.resume_input() == [StreamOpened(5), DataReceived(5, b"d")]
    assert not server.input_held


def test_held_syns_are_refused_once_we_send_go_away_and_dropped_when_the_session_ends() -> None:
    server = Connection(client=False, config=Config(accept_backlog=1))
    server.receive_data(raw(WU, SYN, 1, 0) + raw(WU, SYN, 3, 0) + raw(WU, SYN, 5, 0))
    assert server.input_held
    server.go_away()
    assert server.resume_input() == [
        StreamRefused(3, "we sent go away"),
        StreamRefused(5, "we sent go away"),
    ]
    assert not server.input_held
    other = Connection(client=False, config=Config(accept_backlog=1))
    other.receive_data(raw(WU, SYN, 1, 0) + raw(WU, SYN, 3, 0))
    other.terminate(SessionClosedError("closed"))
    assert not other.input_held
    assert other.held_bytes == 0
    assert other.resume_input() == []


def test_a_syn_rst_needs_no_room_in_the_backlog() -> None:
    server = Connection(client=False, config=Config(accept_backlog=1))
    events = server.receive_data(
        raw(WU, SYN, 1, 0) + raw(WU, SYN | RST, 3, 0) + raw(PING, SYN, 0, 9)
    )
    assert events == [StreamOpened(1), StreamOpened(3), StreamReset(3, "reset by peer")]
    assert not server.input_held
    assert server.unaccepted_inbound == 1
    assert server.outbox.take_control()[-1] == raw(PING, ACK, 0, 9)


def test_max_streams_refuses_inbound_with_rst() -> None:
    pair = Pair(server=Config(max_streams=2))
    client, server = pair.client, pair.server
    one, three = pair.open(), pair.open()
    five = client.open_stream()
    pair.pump()
    assert pair.take_events(client) == [StreamReset(five, "reset by peer")]
    assert server.stream_ids() == [one, three]
    with pytest.raises(TooManyStreamsError, match="max_streams"):
        server.open_stream()


def test_max_streams_limits_our_opens_until_a_stream_finishes() -> None:
    pair = Pair(client=Config(max_streams=2))
    client, server = pair.client, pair.server
    one, _three = pair.open(), pair.open()
    with pytest.raises(TooManyStreamsError):
        client.open_stream()
    client.close_stream(one)
    server.close_stream(one)
    pair.pump()
    assert client.num_streams == 1
    assert client.open_stream() == 5


def test_closing_before_the_ack_returns_backlog_credit() -> None:
    """hashicorp's TestCloseBeforeAck: opens closed before their ACK stop counting.

    As in hashicorp, the credit comes back when the ACK arrives or the stream is
    fully closed; a half-close alone must not let us overrun the peer's queue.
    """
    pair = Pair(client=Config(accept_backlog=8))
    client, server = pair.client, pair.server
    ids = [client.open_stream() for _ in range(8)]
    assert client.unacked_outbound == 8
    assert client.backlog_full
    for sid in ids:
        client.close_stream(sid)
    assert client.unacked_outbound == 8  # our FIN alone frees nothing
    pair.pump()
    for n, sid in enumerate(ids, 1):
        server.accept_stream(sid)
        server.close_stream(sid)
        pair.pump()
        assert client.unacked_outbound == 8 - n
    assert not client.backlog_full
    assert client.num_streams == server.num_streams == 0
    assert server.unaccepted_inbound == 0
    assert client.open_stream() == 17


def test_stream_fully_closed_without_ack_returns_backlog_credit() -> None:
    """Both FINs but never an ACK (the peer closed without accepting): the credit returns."""
    pair = Pair(client=Config(accept_backlog=2))
    client, server = pair.client, pair.server
    a, b = client.open_stream(), client.open_stream()
    client.close_stream(a)
    pair.pump()
    server.close_stream(a)  # the peer never accepts a
    pair.pump()
    assert Frame(WU, ACK, a, 0) not in pair.sent[server]
    assert client.unacked_outbound == 1
    assert server.unaccepted_inbound == 1
    assert client.stream_ids() == [b]
    assert server.stream_ids() == [b]
    assert StreamClosed(a) in pair.events[client]


def test_reset_before_the_ack_returns_backlog_credit() -> None:
    pair = Pair(client=Config(accept_backlog=2))
    client = pair.client
    a, b = client.open_stream(), client.open_stream()
    assert client.backlog_full
    client.reset_stream(a)
    assert client.unacked_outbound == 1
    pair.pump()
    pair.server.accept_stream(b)
    pair.pump()
    assert client.unacked_outbound == 0
    assert client.stream_ids() == [b]


def test_refused_stream_returns_backlog_credit() -> None:
    pair = Pair(client=Config(accept_backlog=3), server=Config(max_streams=1))
    client = pair.client
    for _ in range(3):
        client.open_stream()
    assert client.backlog_full
    pair.pump()
    assert client.unacked_outbound == 1  # two were refused with RST
    assert not client.backlog_full


# ---------------------------------------------------------------- half-close
def test_fin_goes_out_after_all_queued_data() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    sid = pair.open()
    client.send_data(sid, payload(W + 100))
    client.close_stream(sid)
    with pytest.raises(StreamClosedError):
        client.send_data(sid, b"x")
    pair.pump()
    sent = pair.take_sent(client)
    assert data_bytes(sent, sid) == W
    assert not any(f.flags & FIN for f in sent)
    assert StreamEnded(sid) not in pair.events[server]
    server.consume(sid, W)
    pair.pump()
    sent = pair.take_sent(client)
    # FIN never rides on data (a JS peer drops such a frame's payload): its own frame follows
    assert sent == [Frame(DATA, Flag.NONE, sid, 100, payload(100, W)), Frame(WU, FIN, sid, 0)]
    assert pair.received(server, sid) == payload(W + 100)
    assert pair.events[server][-1] == StreamEnded(sid)


def test_fin_without_data_is_a_window_update_frame() -> None:
    pair = Pair()
    sid = pair.open()
    pair.client.close_stream(sid)
    pair.client.close_stream(sid)  # twice is harmless
    pair.pump()
    assert pair.take_sent(pair.client) == [Frame(WU, FIN, sid, 0)]


@pytest.mark.parametrize("first_closer", ["client", "server"])
def test_half_close_both_ways(first_closer: str) -> None:
    pair = Pair()
    first = pair.client if first_closer == "client" else pair.server
    second = pair.peer(first)
    sid = pair.open()
    first.send_data(sid, b"request")
    first.close_stream(sid)
    pair.pump()
    assert pair.take_events(second) == [DataReceived(sid, b"request"), StreamEnded(sid)]
    # The side that closed keeps reading; the other keeps writing.
    second.send_data(sid, payload(W + 10))
    pair.auto_consume = True
    pair.pump()
    assert pair.received(first, sid) == payload(W + 10)
    assert first.num_streams == second.num_streams == 1
    second.close_stream(sid)
    pair.pump()
    assert pair.events[first][-2:] == [StreamEnded(sid), StreamClosed(sid)]
    assert pair.finished[second] == [sid]  # its FIN went out after the peer's: forgotten
    assert first.num_streams == second.num_streams == 0
    with pytest.raises(StreamResetError):
        first.send_data(sid, b"x")


def test_both_fins_crossing_on_the_wire_forget_the_stream() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    sid = pair.open()
    client.close_stream(sid)
    server.close_stream(sid)
    to_server, to_client = flush(client), flush(server)
    assert client.receive_data(to_client) == [StreamEnded(sid), StreamClosed(sid)]
    assert server.receive_data(to_server) == [StreamEnded(sid), StreamClosed(sid)]
    assert client.num_streams == server.num_streams == 0


def test_no_window_update_after_the_peers_fin() -> None:
    pair = Pair()
    client, server = pair.client, pair.server
    sid = pair.open()
    server.send_data(sid, payload(W))
    server.close_stream(sid)
    pair.pump()
    client.consume(sid, W)
    assert not client.outbox.control  # the peer sends nothing more: no credit needed


# --------------------------------------------------------------------- reset
@pytest.mark.parametrize("resetter", ["client", "server"])
def test_reset_both_ways(resetter: str) -> None:
    pair = Pair()
    side = pair.client if resetter == "client" else pair.server
    other = pair.peer(side)
    sid = pair.open()
    side.send_data(sid, payload(W + 1000))  # partly sent, partly queued
    pair.transfer(side, 64 * KIB)
    side.reset_stream(sid)
    assert side.pending_bytes(sid) == 0
    assert not side.outbox.sendable
    assert side.num_streams == 0
    pair.pump()
    assert Frame(WU, RST, sid, 0) in pair.sent[side]
    assert data_bytes(pair.sent[side], sid) == 64 * KIB
    assert pair.events[other][-1] == StreamReset(sid, "reset by peer")
    assert other.num_streams == 0
    with pytest.raises(StreamResetError):
        side.send_data(sid, b"x")
    with pytest.raises(StreamResetError):
        other.send_data(sid, b"x")
    side.reset_stream(sid)  # resetting again sends nothing
    other.close_stream(sid)
    assert not side.outbox.control
    assert not other.outbox.control


def test_rst_on_the_syn_frame_is_opened_then_reset() -> None:
    conn = Connection(client=False)
    events = conn.receive_data(raw(WU, SYN | RST, 1, 0))
    assert events == [StreamOpened(1), StreamReset(1, "reset by peer")]
    assert conn.num_streams == 0
    assert conn.unaccepted_inbound == 0


# ---------------------------------------------------------- many and fairness
def test_stream_counts_return_to_zero_after_many_streams() -> None:
    pair = Pair()
    pair.auto_consume = True
    client, server = pair.client, pair.server
    ids = []
    for i in range(300):
        opener = client if i % 2 else server
        sid = opener.open_stream()
        ids.append(sid)
        opener.send_data(sid, payload(1 + i * 37 % 5000, i))
        opener.close_stream(sid)
    pair.pump()
    for event in pair.take_events(client) + pair.take_events(server):
        if isinstance(event, StreamOpened):
            acceptor = server if event.stream_id % 2 else client
            acceptor.accept_stream(event.stream_id)
            acceptor.send_data(event.stream_id, b"reply")
            acceptor.close_stream(event.stream_id)
    pair.pump()
    assert client.num_streams == server.num_streams == 0
    assert client.unacked_outbound == server.unacked_outbound == 0
    assert client.unaccepted_inbound == server.unaccepted_inbound == 0
    assert not client.outbox.sendable
    assert not server.outbox.sendable
    assert len(set(ids)) == 300


def test_round_robin_between_streams_with_queued_data() -> None:
    pair = Pair()
    client = pair.client
    a, b = pair.open(), pair.open()
    client.send_data(a, payload(W))
    client.send_data(b, payload(W))
    frames = decode(flush(client))
    order = [f.stream_id for f in frames if f.type is DATA]
    assert order == [a, b] * 4
    assert all(f.length == 64 * KIB for f in frames)


def test_round_robin_shares_a_small_budget() -> None:
    pair = Pair(client=Config(max_frame_size=1000))
    client = pair.client
    a, b, c = pair.open(), pair.open(), pair.open()
    for sid in (a, b, c):
        client.send_data(sid, payload(100 * KIB))
    sent = {a: 0, b: 0, c: 0}
    for _ in range(30):
        for frame in decode(flush(client, 1500)):
            sent[frame.stream_id] += frame.length
        assert max(sent.values()) - min(sent.values()) <= 1000
    assert sum(sent.values()) >= 30 * 1500


def test_late_stream_joins_the_rotation() -> None:
    pair = Pair(client=Config(max_frame_size=1000))
    client = pair.client
    a, b = pair.open(), pair.open()
    client.send_data(a, payload(50 * KIB))
    decode(flush(client, 5000))
    client.send_data(b, payload(50 * KIB))
    order = [f.stream_id for f in decode(flush(client, 4000))]
    assert order.count(b) >= 2  # b is not starved behind a's backlog


# ------------------------------------------- direct paths for a lone Data frame
def twins(max_frame: int, used: int) -> list[tuple[Pair, int]]:
    """Two pairs in the same state: one stream open, ``used`` bytes of its window
    in the server's hands (sent, not consumed)."""
    out = []
    for _ in range(2):
        pair = Pair(Config(max_frame_size=max_frame))
        sid = pair.open()
        if used:
            pair.client.send_data(sid, payload(used))
            pair.pump()
            pair.take_events(pair.server)
        out.append((pair, sid))
    return out


@settings(max_examples=100, deadline=None)
@given(
    size=st.one_of(st.integers(1, 200), st.integers(1, 2 * W)),
    max_frame=st.sampled_from([1000, 16 * KIB, W]),
    used=st.integers(0, W),
)
def test_frame_now_writes_the_frame_send_data_and_a_flush_would(
    size: int, max_frame: int, used: int
) -> None:
    """Byte for byte the same frame, the same credit left; and only when the whole write
    fits the window and one frame (else the caller queues it as before)."""
    (direct, sid), (queued, _) = twins(max_frame, used)
    data = payload(size, 7)
    header = direct.client.frame_now(sid, data)
    queued.client.send_data(sid, data)
    expected = flush(queued.client)
    if size <= min(W - used, max_frame):
        assert header is not None
        assert header + data == expected
        assert direct.client.send_credit(sid) == queued.client.send_credit(sid) == W - used - size
    else:
        assert header is None
        assert direct.client.send_credit(sid) == W - used  # nothing taken


def test_frame_now_never_overtakes_anything_queued() -> None:
    pair = Pair()
    a, b = pair.open(), pair.open()
    client = pair.client
    client.ping()
    assert client.frame_now(a, b"x") is None  # a control frame goes first
    flush(client)
    client.send_data(b, payload(W + 1))  # b waits for window with 1 byte
    flush(client)
    assert client.frame_now(b, b"x") is None  # behind b's own bytes
    client.send_data(a, payload(10))
    assert client.frame_now(a, b"x") is None  # behind another stream's data
    flush(client)
    assert client.frame_now(a, b"x") is not None
    client.close_stream(a)
    assert client.frame_now(a, b"x") is None  # behind its FIN
    flush(client)
    assert client.frame_now(a, b"x") is None  # after its FIN
    with pytest.raises(StreamClosedError):
        client.send_data(a, b"x")  # the queued path says why
    client.reset_stream(b)
    assert client.frame_now(b, b"x") is None
    c = pair.open()
    client.terminate(SessionClosedError("test"))
    assert client.frame_now(c, b"x") is None


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(0, W + 1),
    flags=st.sampled_from([0, 0, 0, SYN, ACK, FIN, RST, 0x100]),
    used=st.integers(0, W),
    stream=st.sampled_from(["open", "unknown", "closed"]),
    tail=st.sampled_from([b"", b"\0"]),
)
def test_receive_lone_data_says_what_receive_data_would(
    size: int, flags: int, used: int, stream: str, tail: bytes
) -> None:
    """Where it takes a read, the same DataReceived and the same window accounting after;
    where it does not, nothing changed (receive_data then takes it, errors included)."""
    (direct, sid), (queued, _) = twins(W, used)
    target = sid if stream != "unknown" else sid + 2
    if stream == "closed":
        for pair in (direct, queued):
            pair.client.close_stream(sid)
            pair.pump()
            pair.take_events(pair.server)
    chunk = raw(DATA, flags, target, size, payload(size, 3)) + tail
    expected = queued.server.receive_data(chunk)
    lone = direct.server.receive_lone_data(chunk)
    if lone is None:
        assert not (size and not flags and not tail and stream == "open" and size <= W - used), (
            "a lone Data frame within the window must take the direct path"
        )
        assert repr(direct.server.receive_data(chunk)) == repr(expected)  # errors: by message
    else:
        assert expected == [DataReceived(*lone)]
    for pair in (direct, queued):  # the reader takes everything: the same window update
        pair.server.consume(sid, used + (size if lone is not None else 0))
    assert flush(direct.server) == flush(queued.server)


# --------------------------------------------------- random interleavings
MODEL_CONFIGS = (
    Config(max_stream_window_size=2 * W, accept_backlog=4, max_streams=6, max_frame_size=16 * KIB),
    Config(max_stream_window_size=2 * W, accept_backlog=3, max_streams=5),
)


class Side:
    """The application's view of one Connection in the random-interleaving model."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.wire = bytearray()  # flushed, not yet delivered to the peer
        self.opened: list[int] = []
        self.live: set[int] = set()  # streams the core should still know
        self.pending_accept: list[int] = []
        self.announced: set[int] = set()  # StreamOpened seen
        self.acked: set[int] = set()
        self.closed_by_us: set[int] = set()
        self.ended: set[int] = set()
        self.reset_by_us: set[int] = set()
        self.written: dict[int, bytearray] = defaultdict(bytearray)
        self.received: dict[int, bytearray] = defaultdict(bytearray)
        self.unconsumed: dict[int, int] = defaultdict(int)
        self.pings: set[int] = set()
        self.got_go_away = False
        self.sent_go_away = False


class PairModel:
    """A client and a server driven by random operations, checked against a model."""

    def __init__(self, opens: list[int], accepted: bool, direct: bool = False) -> None:
        """Start with a few streams, so the random steps have something to work on.

        ``direct``: writes and deliveries take the direct paths for a lone Data frame
        where they can (``frame_now``, ``receive_lone_data``), as the Session does.
        """
        self.direct = direct
        self.sides = [
            Side(Connection(client=True, config=MODEL_CONFIGS[0])),
            Side(Connection(client=False, config=MODEL_CONFIGS[1])),
        ]
        for i in opens:
            self.open_stream(i)
        self.tick()
        if accepted:
            for i in (0, 1):
                while self.sides[i].pending_accept:
                    self.accept(i, 0)
            self.tick()

    def peer(self, side: Side) -> Side:
        return self.sides[1] if side is self.sides[0] else self.sides[0]

    def side(self, index: int) -> Side:
        return self.sides[index]

    # ------------------------------------------------------------- events
    def handle(self, side: Side, events: list[Event]) -> None:
        peer = self.peer(side)
        window = side.conn.config.max_stream_window_size
        for item in events:
            note(type(item).__name__)
            self.check_event(side, peer, window, item)

    def check_event(self, side: Side, peer: Side, window: int, event: Event) -> None:
        assert not isinstance(event, SessionTerminated), event
        if isinstance(event, StreamOpened):
            sid = event.stream_id
            assert sid % 2 == (0 if side.conn.client else 1)
            assert sid not in side.live
            assert sid in peer.opened
            side.live.add(sid)
            side.announced.add(sid)
            side.pending_accept.append(sid)
        elif isinstance(event, PongReceived):
            assert event.opaque in side.pings
            side.pings.discard(event.opaque)
        elif isinstance(event, GoAwayReceived):
            assert event.code == 0
            assert peer.sent_go_away
            side.got_go_away = True
        elif isinstance(event, InputHeld):
            assert side.conn.input_held
            note("input held: a SYN found the accept backlog full")
        elif isinstance(event, StreamRefused):
            assert event.stream_id in peer.opened
            assert event.stream_id not in side.live
            note("refused SYN")
        else:
            self.check_stream_event(side, peer, window, event)

    def check_stream_event(self, side: Side, peer: Side, window: int, event: Event) -> None:
        sid = event.stream_id  # type: ignore[union-attr]
        assert sid in side.live, event
        if isinstance(event, StreamAcknowledged):
            assert sid in side.opened
            assert sid not in side.acked
            side.acked.add(sid)
        elif isinstance(event, DataReceived):
            start = len(side.received[sid])
            side.received[sid] += event.data
            assert peer.written[sid][start : start + len(event.data)] == event.data, (
                f"stream {sid}: bytes from {start} differ from what the peer wrote"
            )
            side.unconsumed[sid] += len(event.data)
            assert side.unconsumed[sid] <= window  # never more than one window held
        elif isinstance(event, StreamEnded):
            assert sid not in side.ended
            assert sid in peer.closed_by_us
            side.ended.add(sid)
        elif isinstance(event, StreamClosed):
            assert sid in side.ended
            assert sid in side.closed_by_us
            self.gone(side, sid)
        elif isinstance(event, StreamReset):
            # The peer reset it, or refused our SYN before announcing it.
            refused = sid in side.opened and sid not in peer.announced
            assert sid in peer.reset_by_us or refused, event
            note("refused SYN" if refused else "reset by peer")
            self.gone(side, sid)
        else:
            assert isinstance(event, WindowUpdated), event

    def gone(self, side: Side, sid: int) -> None:
        side.live.discard(sid)
        if sid in side.pending_accept:
            side.pending_accept.remove(sid)

    # -------------------------------------------------------------- rules
    def open_stream(self, i: int) -> None:
        side = self.side(i)
        conn = side.conn
        if conn.backlog_full:  # Session.open_stream waits here
            return
        if side.got_go_away:
            with pytest.raises(NoNewStreamsError):
                conn.open_stream()
            return
        if conn.num_streams >= conn.config.max_streams:
            with pytest.raises(TooManyStreamsError):
                conn.open_stream()
            return
        sid = conn.open_stream()
        expected = side.opened[-1] + 2 if side.opened else (1 if conn.client else 2)
        assert sid == expected
        side.opened.append(sid)
        side.live.add(sid)

    def accept(self, i: int, pick: int) -> None:
        side = self.side(i)
        if not side.pending_accept:
            return
        sid = side.pending_accept.pop(pick % len(side.pending_accept))
        side.conn.accept_stream(sid)
        self.handle(side, side.conn.resume_input())  # as the Session does after each accept

    def writable(self, side: Side) -> list[int]:
        return sorted(
            s for s in side.live if s not in side.closed_by_us and s not in side.pending_accept
        )

    def write(self, i: int, pick: int, size: int) -> None:
        side = self.side(i)
        streams = self.writable(side)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        data = payload(size, len(side.written[sid]) + sid)
        header = side.conn.frame_now(sid, data) if self.direct else None
        if header is None:
            side.conn.send_data(sid, data)
        else:  # on the wire at once: the Data frame send_data and a flush would make
            assert decode(header + data) == [Frame(DATA, 0, sid, size, data)]
            side.wire += header + data
            note("direct write")
        side.written[sid] += data

    def close(self, i: int, pick: int) -> None:
        side = self.side(i)
        streams = sorted(s for s in side.live if s not in side.closed_by_us)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        side.conn.close_stream(sid)
        side.closed_by_us.add(sid)

    def reset(self, i: int, pick: int) -> None:
        side = self.side(i)
        streams = sorted(side.live)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        side.conn.reset_stream(sid)
        side.reset_by_us.add(sid)
        self.gone(side, sid)
        self.handle(side, side.conn.resume_input())  # it may have left the accept backlog

    def consume(self, i: int, pick: int, fraction: float) -> None:
        side = self.side(i)
        streams = sorted(s for s, n in side.unconsumed.items() if n)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        n = max(1, int(side.unconsumed[sid] * fraction))
        side.unconsumed[sid] -= n
        side.conn.consume(sid, n)

    def ping(self, i: int) -> None:
        side = self.side(i)
        side.pings.add(side.conn.ping())

    def go_away(self, i: int) -> None:
        side = self.side(i)
        # Only once some streams exist: it refuses every new stream from then on.
        if len(side.announced) + len(side.opened) >= 4 and not side.sent_go_away:
            side.conn.go_away(GoAwayCode.NORMAL)
            side.sent_go_away = True
            self.handle(side, side.conn.resume_input())  # held SYNs are refused now

    def flush(self, i: int, budget: int) -> None:
        side = self.side(i)
        side.wire += flush(side.conn, budget)
        for sid in finished_streams(side.conn):
            assert sid in side.closed_by_us
            assert sid in side.ended
            self.gone(side, sid)

    def deliver(self, i: int, size: int) -> None:
        side = self.side(i)
        chunk = bytes(side.wire[:size])
        del side.wire[:size]
        if chunk:
            peer = self.peer(side)
            lone = peer.conn.receive_lone_data(chunk) if self.direct else None
            if lone is None:
                self.handle(peer, peer.conn.receive_data(chunk))
            else:  # what receive_data would have said
                note("direct read")
                self.handle(peer, [DataReceived(*lone)])

    def tick(self) -> None:
        """Both sides write all they can and the network delivers all of it."""
        for index, side in enumerate(self.sides):
            self.flush(index, BIG)
            self.deliver(index, len(side.wire))

    # --------------------------------------------------------- invariants
    def accounting_is_consistent(self) -> None:
        for side in self.sides:
            conn = side.conn
            assert not conn.closed, conn.error
            assert sorted(conn.stream_ids()) == sorted(side.live)
            assert conn.num_streams == len(side.live)
            unacked = [s for s in side.opened if s in side.live and s not in side.acked]
            assert conn.unacked_outbound == len(unacked)
            assert conn.unaccepted_inbound == len(side.pending_accept)
            assert conn.unaccepted_inbound <= conn.config.accept_backlog
            for sid in side.live:
                assert conn.send_credit(sid) >= 0
                assert sid % 2 == (1 if (sid in side.opened) == conn.client else 0)

    def teardown(self) -> None:
        """Accept, read and close everything: every byte arrives and every count is 0."""
        for _ in range(1000):
            moved = 0
            for side in self.sides:
                while side.pending_accept:
                    self.accept(self.sides.index(side), 0)
                for sid, n in list(side.unconsumed.items()):
                    if n:
                        side.unconsumed[sid] = 0
                        side.conn.consume(sid, n)
                for sid in self.writable(side):
                    side.conn.close_stream(sid)
                    side.closed_by_us.add(sid)
            for index, side in enumerate(self.sides):
                self.flush(index, BIG)
                moved += len(side.wire)
                self.deliver(index, len(side.wire))
            self.accounting_is_consistent()
            if not moved:
                break
        else:
            raise AssertionError("teardown never went quiet")
        for side in self.sides:
            peer = self.peer(side)
            assert side.conn.num_streams == 0
            assert side.conn.unacked_outbound == side.conn.unaccepted_inbound == 0
            assert not side.conn.outbox.sendable
            assert not side.pings, "a ping was never answered"
            for sid, written in side.written.items():
                if (
                    sid not in side.reset_by_us
                    and sid not in peer.reset_by_us
                    and (sid in peer.announced or sid in side.announced)
                ):
                    assert peer.received[sid] == written, f"stream {sid} lost data"


side_index = st.integers(0, 1)
pick = st.integers(0, 100)
OPERATIONS = st.one_of(
    st.tuples(st.just("open_stream"), side_index),
    st.tuples(st.just("accept"), side_index, pick),
    st.tuples(
        st.just("write"), side_index, pick, st.one_of(st.integers(1, 100), st.integers(1, 3 * W))
    ),
    st.tuples(st.just("write"), side_index, pick, st.integers(1, 20_000)),
    st.tuples(st.just("close"), side_index, pick),
    st.tuples(st.just("reset"), side_index, pick),
    st.tuples(st.just("consume"), side_index, pick, st.floats(0, 1)),
    st.tuples(st.just("consume"), side_index, pick, st.just(1.0)),
    st.tuples(st.just("ping"), side_index),
    st.tuples(st.just("go_away"), side_index),
    st.tuples(st.just("flush"), side_index, st.one_of(st.integers(1, 2000), st.just(BIG))),
    st.tuples(st.just("deliver"), side_index, st.one_of(st.integers(1, 30), st.integers(1, 4 * W))),
    st.tuples(st.just("tick")),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    opens=st.lists(side_index, min_size=1, max_size=4),
    accepted=st.booleans(),
    direct=st.booleans(),
    operations=st.lists(OPERATIONS, min_size=20, max_size=80),
)
def test_random_interleavings(
    opens: list[int], accepted: bool, direct: bool, operations: list[tuple[object, ...]]
) -> None:
    """Any interleaving of API calls, flushes and partial deliveries on a client and a
    server: no exception at all (these are legal uses), no session error, stream ids and
    backlog counts as the model predicts, every byte delivered in order, never more than
    one window held; and after accepting, reading and closing everything, both sides
    forget every stream. The same with the direct paths for lone Data frames in the mix."""
    model = PairModel(opens, accepted, direct)
    model.accounting_is_consistent()
    for name, *args in operations:
        getattr(model, str(name))(*args)
        model.accounting_is_consistent()
    model.teardown()


def test_operations_on_a_dead_connection_raise_yamux_errors_only() -> None:
    conn = Connection(client=True)
    sid = conn.open_stream()
    conn.receive_data(raw(GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
    for call in (conn.open_stream, conn.ping, conn.go_away, lambda: conn.send_data(sid, b"x")):
        with pytest.raises(YamuxError):
            call()
    # These are no-ops on a dead session rather than errors.
    conn.close_stream(sid)
    conn.reset_stream(sid)
    conn.consume(sid, 10)
    conn.accept_stream(sid)
    assert conn.outbox.take_data(BIG) == []
    assert conn.receive_frames([Frame(PING, SYN, 0, 1)]) == []
