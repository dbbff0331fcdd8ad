"""The sans-IO session core: bytes in, events and bytes out, no sockets, no clocks.

``receive_data`` turns the peer's bytes into events (yamux.events); commands
(open, send, close, reset, ping, go away) change the streams' state machines
and queue frames in the connection's ``outbox``, which the I/O adapter empties
when the transport has room (yamux.outbox). The peer's opens are admitted, or
their input held while the accept backlog is full, by yamux.inbound.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .config import Config
from .const import HEADER_SIZE, Flag, FrameType, GoAwayCode
from .errors import (
    ControlQueueFullError,
    NoNewStreamsError,
    PeerTerminatedError,
    ProtocolError,
    SessionClosedError,
    SessionError,
    StreamClosedError,
    StreamResetError,
    TooManyStreamsError,
    YamuxError,
)
from .events import (
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
from .flow import Clock, no_clock
from .frame import Frame, FrameDecoder, encode_header
from .inbound import BacklogFull, Inbound, Read
from .outbox import Outbox
from .stream_record import StreamRecord, StreamTable
from .stream_state import (
    RECEIVING,
    SENDING,
    Effect,
    Handshake,
    Input,
    StreamMachine,
    StreamStateError,
)

_DATA = FrameType.DATA
_WINDOW_UPDATE = FrameType.WINDOW_UPDATE
_PING = FrameType.PING
_GO_AWAY = FrameType.GO_AWAY
_SYN, _ACK, _FIN, _RST = int(Flag.SYN), int(Flag.ACK), int(Flag.FIN), int(Flag.RST)
# The stream_state members the per-frame path uses, bound once: on Python 3.11 each
# ``Input.SEND_DATA`` is a class attribute lookup that costs more than the step itself.
_SEND_SYN, _RECV_SYN = Input.SEND_SYN, Input.RECV_SYN
_SEND_ACK, _RECV_ACK = Input.SEND_ACK, Input.RECV_ACK
_SEND_DATA, _RECV_DATA = Input.SEND_DATA, Input.RECV_DATA
_SEND_FIN, _RECV_FIN = Input.SEND_FIN, Input.RECV_FIN
_SEND_RST, _RECV_RST = Input.SEND_RST, Input.RECV_RST
_ACKNOWLEDGED, _ACCEPTED = Effect.ACKNOWLEDGED, Effect.ACCEPTED
_ENDED, _CLOSED = Effect.ENDED, Effect.CLOSED
_ACK_OWED = Handshake.ACK_OWED
_MAX_STREAM_ID = 0xFFFFFFFF


class Connection:
    """One yamux session's protocol state. ``client`` opens odd stream ids, the server even.

    Everything it has to report comes out as events, never as log lines (a
    peer must not write our log): ``receive_data`` returns them, and
    ``take_events`` hands over those that local calls produced (the outbox
    sent the last FIN of a stream).
    """

    def __init__(self, *, client: bool, config: Config | None = None) -> None:
        self.client = client
        self.config = config or Config()
        self._next_id = 1 if client else 2
        self.outbox = Outbox(self.config, overflow=self._control_full, finished=self._finished)
        """The frames to send: ``take_control()``, then ``take_data(budget)`` while room lasts."""
        self._sendable = self.outbox.sendable
        self._queue_control = self.outbox.queue_control  # bound once: the per-frame path uses both
        self._max_frame = self.config.max_frame_size
        self.streams = StreamTable(self.config, self._sendable)
        self._streams = self.streams.records
        self.tuner = self.streams.tuner
        """Receive-window auto-tuning (Config.window_autotune); the adapter feeds its RTT."""
        self._events: list[Event] = []
        self._decoder = FrameDecoder(
            max(self.config.max_frame_size, self.config.max_stream_window_size)
        )
        self._ping_id = 0
        self._inbound = Inbound(self.config, self._decoder, client=client)
        self.local_go_away = False
        self.remote_go_away = False
        self.error: YamuxError | None = None
        """Why the session ended; None while it is alive."""
        self.discarded_frames = 0
        """Frames for streams we no longer know (reset or refused), counted, never logged."""
        self.discarded_bytes = 0
        """Their payload, and that of Data|RST frames."""

    # ----------------------------------------------------------------- queries
    @property
    def closed(self) -> bool:
        return self.error is not None

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    @property
    def unacked_outbound(self) -> int:
        """Our opens awaiting ACK; open_stream should wait while this reaches the backlog."""
        return self.streams.unacked_outbound

    @property
    def unaccepted_inbound(self) -> int:
        """The peer's opens awaiting accept_stream."""
        return self.streams.unaccepted_inbound

    @property
    def backlog_full(self) -> bool:
        return self.streams.unacked_outbound >= self.config.accept_backlog

    @property
    def input_held(self) -> bool:
        """Since InputHeld: stop reading until ``resume_input`` clears it."""
        return self._inbound.frame is not None

    @property
    def held_bytes(self) -> int:
        """At most this many bytes of input wait while ``input_held``."""
        return self._inbound.held_bytes

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def stream_state(self, stream_id: int) -> StreamMachine:
        """The state machine of a live stream (a Stream keeps it to read, never to change)."""
        return self._streams[stream_id].state

    def send_credit(self, stream_id: int) -> int:
        rec = self._streams.get(stream_id)
        return rec.send.credit if rec is not None else 0

    def pending_bytes(self, stream_id: int) -> int:
        """Bytes written to a stream and not yet framed."""
        rec = self._streams.get(stream_id)
        return rec.out.size if rec is not None else 0

    # ---------------------------------------------------------------- commands
    def open_stream(self) -> int:
        """Allocate the next stream id and queue its SYN (carrying any extra window grant)."""
        self._check_alive()
        if self.remote_go_away:
            raise NoNewStreamsError(GoAwayCode.NORMAL)
        if len(self._streams) >= self.config.max_streams:
            raise TooManyStreamsError(
                f"session has {len(self._streams)} streams, the maximum (max_streams)"
            )
        stream_id = self._next_id
        if stream_id > _MAX_STREAM_ID:
            raise SessionError("stream ids exhausted on this session")
        self._next_id += 2
        rec = self.streams.open(stream_id, _SEND_SYN)
        self._queue_control(
            encode_header(_WINDOW_UPDATE, _SYN, stream_id, rec.recv.initial_grant())
        )
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """ACK a stream the peer opened (after StreamOpened), granting our window."""
        rec = self._streams.get(stream_id)
        if rec is None or rec.state.handshake is not _ACK_OWED:
            return
        self._apply(rec, rec.state.process(_SEND_ACK))

    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        """Queue payload; it is framed within the peer's window by take_data."""
        self._check_alive()
        rec = self._streams.get(stream_id)
        if rec is None:
            raise StreamResetError(f"stream {stream_id} is reset or closed")
        try:
            rec.state.process(_SEND_DATA)
        except StreamStateError:
            raise StreamClosedError(
                f"stream {stream_id}: write after close (FIN already queued)"
            ) from None
        if not data:
            return
        rec.out.append(data)
        if rec.send.credit > 0:
            self._sendable[stream_id] = rec

    def frame_now(self, stream_id: int, data: bytes) -> bytes | None:
        """The direct path for a small write: the header of a Data frame carrying ``data``
        whole (its credit taken; the caller writes header and data at once) if the stream
        may send, nothing waits in the outbox, and the peer's window and max_frame_size
        allow. None otherwise: call ``send_data`` (which raises what it must)."""
        rec = self._streams.get(stream_id)
        if (
            rec is None
            or rec.out.size
            or self._sendable
            or self.outbox.control
            or rec.state.state not in SENDING
            or self.error is not None
        ):
            return None
        size = len(data)
        if size > self._max_frame or not rec.send.try_debit(size):
            return None
        return encode_header(_DATA, 0, stream_id, size)

    def close_stream(self, stream_id: int) -> None:
        """Half-close: queue FIN behind everything already written."""
        rec = self._streams.get(stream_id)
        if rec is None or rec.state.local_closed:
            return
        self._check_alive()
        effects = rec.state.process(_SEND_FIN)
        rec.out.fin = True
        if rec.sendable:
            self._sendable[stream_id] = rec
        self._apply(rec, effects)

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream both ways: drop unsent data and send RST."""
        rec = self._streams.get(stream_id)
        if rec is None:
            return
        self._apply(rec, rec.state.process(_SEND_RST))
        if not self.closed:
            self._queue_control(encode_header(_WINDOW_UPDATE, _RST, stream_id, 0))

    def consume(self, stream_id: int, length: int, clock: Clock = no_clock) -> bool:
        """The application took ``length`` received bytes; True if a window update was queued.

        ``clock()`` (seconds, any clock) matters only to window auto-tuning, and is
        read only when an update is due.
        """
        rec = self._streams.get(stream_id)
        if rec is None or self.error is not None:
            return False
        delta = rec.recv.consume(length, self.tuner, clock)
        if delta:
            self._queue_control(encode_header(_WINDOW_UPDATE, 0, stream_id, delta))
            return True
        return False

    def ping(self) -> int:
        """Queue a ping; returns the opaque value its pong will carry."""
        self._check_alive()
        self._ping_id = (self._ping_id + 1) & _MAX_STREAM_ID
        self._queue_control(encode_header(_PING, _SYN, 0, self._ping_id))
        return self._ping_id

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Tell the peer we accept no new streams. A non-zero code also ends the session."""
        self._check_alive()
        self.local_go_away = True
        self._queue_control(encode_header(_GO_AWAY, 0, 0, code))
        if code != GoAwayCode.NORMAL:
            self.error = SessionClosedError(f"we sent go away code {code}")
            self.streams.forget_all()

    def terminate(self, error: YamuxError, code: int | None = None) -> None:
        """End the session locally; with ``code``, queue a Go Away telling the peer why."""
        if self.closed:
            return
        if code is not None:
            self._queue_control(encode_header(_GO_AWAY, 0, 0, code))
        self.error = error
        self._inbound.clear()
        self.streams.forget_all()

    # ------------------------------------------------------------------ output
    def take_events(self) -> list[Event]:
        """Events produced by local calls since the last receive_data or take_events."""
        out = self._events
        self._events = []
        return out

    # ------------------------------------------------------------------- input
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume bytes from the peer; returns what happened, in order.

        Processing stops at the first frame that ends the session: SessionTerminated
        is then the last event, and later frames in ``data`` are ignored. It also
        stops at a SYN that finds the accept backlog full (``input_held``).
        """
        inbound = self._inbound
        if inbound.frame is None:
            self._process(self._decoder.feed(data), data)
        else:
            inbound.add(bytes(data))
        return self.take_events()

    def receive_lone_data(self, data: bytes) -> tuple[int, bytes] | None:
        """The direct path for a read of one small message: if ``data`` is exactly one
        Data frame (no flags) for a stream that may receive it within its window, it is
        taken as ``receive_data`` would, and its DataReceived is returned as (stream id,
        payload). None otherwise, with nothing changed: call ``receive_data``."""
        if self.error is not None or self._inbound.frame is not None:
            return None
        stream_id = self._decoder.lone_data(data)
        if stream_id is None:
            return None
        rec = self._streams.get(stream_id)
        if (
            rec is None
            or rec.state.state not in RECEIVING
            or not rec.recv.try_receive(len(data) - HEADER_SIZE)
        ):
            return None
        heard = self.streams.heard
        if heard is not None:
            heard.add(stream_id)
        return stream_id, data[HEADER_SIZE:]

    def receive_frames(self, frames: Iterable[Frame]) -> list[Event]:
        """Like receive_data for frames already decoded, while nothing is held (for tests)."""
        self._process(iter(frames), b"")
        return self.take_events()

    def resume_input(self) -> list[Event]:
        """Go on with held input, now that an accept, a reset or our Go Away may have made
        room; returns the events, as receive_data. Holds again at the next SYN that does
        not fit (a no-op when nothing is held)."""
        inbound = self._inbound
        while self.error is None and (held := inbound.release()) is not None:
            self._process(*held)
            if inbound.frame is not None:
                break
        return self.take_events()

    def _process(self, frames: Iterator[Frame], source: Read, first: Frame | None = None) -> None:
        """Handle ``first`` (a frame that was held), then ``frames``, decoded from ``source``."""
        if self.error is not None:
            return
        frame = first
        try:
            if frame is not None:
                self._handle_frame(frame)
            if self.error is None:
                for frame in frames:
                    self._handle_frame(frame)
                    if self.error is not None:
                        break
        except BacklogFull:
            assert frame is not None
            self._inbound.hold(frame, frames, source)
            self._events.append(InputHeld())
        except ProtocolError as exc:
            self.terminate(exc, GoAwayCode.PROTOCOL_ERROR)
        if self.error is not None:
            self._events.append(SessionTerminated(self.error))

    def _handle_frame(self, frame: Frame) -> None:
        type_ = frame.type
        if type_ is _DATA or type_ is _WINDOW_UPDATE:
            self._handle_stream_frame(frame)
            return
        if frame.stream_id != 0:
            raise ProtocolError(
                f"{type_.name} frame with stream id {frame.stream_id}; it must be 0"
            )
        if type_ is _PING:
            if frame.flags & _SYN:
                self._queue_control(encode_header(_PING, _ACK, 0, frame.length))
            else:
                self._events.append(PongReceived(frame.length))
        else:
            code = frame.length
            if code == GoAwayCode.NORMAL:
                self.remote_go_away = True
                self._events.append(GoAwayReceived(code))
            else:
                self.terminate(PeerTerminatedError(code))

    def _handle_stream_frame(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        flags = frame.flags
        if stream_id == 0:
            raise ProtocolError(f"{frame.type.name} frame on stream id 0, which is the session's")
        rec = self._streams.get(stream_id)
        if flags & _SYN:
            rec = self._incoming_stream(frame, rec)
        if rec is None:
            self.discarded_frames += 1
            self.discarded_bytes += len(frame.body)
            return
        heard = self.streams.heard
        if heard is not None:
            heard.add(stream_id)
        state = rec.state
        if flags & _ACK:
            self._apply(rec, state.process(_RECV_ACK))
        if flags & _RST:
            # go-yamux puts an error code in a RST's length: it is no window delta,
            # and a reset discards the frame's payload like everything unread.
            self.discarded_bytes += len(frame.body)
            self._apply(rec, state.process(_RECV_RST))
            self._events.append(StreamReset(stream_id, "reset by peer"))
            return
        if frame.type is _WINDOW_UPDATE:
            if frame.length:
                rec.send.grant(stream_id, frame.length)
                if rec.sendable:
                    self._sendable[stream_id] = rec
                self._events.append(WindowUpdated(stream_id))
        elif frame.length:
            try:
                state.process(_RECV_DATA)
            except StreamStateError as exc:
                self._reset_for_misbehaviour(
                    rec,
                    f"stream {stream_id}: {frame.length} bytes of data after the peer's "
                    f"FIN ({exc})",
                )
                return
            rec.recv.receive(stream_id, frame.length)
            self._events.append(DataReceived(stream_id, frame.body))
        if flags & _FIN:
            self._apply(rec, state.process(_RECV_FIN))

    def _incoming_stream(self, frame: Frame, existing: StreamRecord | None) -> StreamRecord | None:
        stream_id = frame.stream_id
        refusal = self._inbound.refusal(frame, existing, self.streams, go_away=self.local_go_away)
        if refusal is not None:
            self._queue_control(encode_header(_WINDOW_UPDATE, _RST, stream_id, 0))
            self._events.append(StreamRefused(stream_id, refusal))
            return None
        rec = self.streams.open(stream_id, _RECV_SYN)
        self._events.append(StreamOpened(stream_id, rec.state))
        return rec

    # ---------------------------------------------------------------- internals
    def _apply(self, rec: StreamRecord, effects: tuple[Effect, ...]) -> None:
        """Carry out what a state machine step asks for (see stream_state.Effect)."""
        for effect in effects:
            if effect is _ACKNOWLEDGED:
                self.streams.unacked_outbound -= 1
                self._events.append(StreamAcknowledged(rec.id))
            elif effect is _ACCEPTED:
                self.streams.unaccepted_inbound -= 1
                self._queue_control(
                    encode_header(_WINDOW_UPDATE, _ACK, rec.id, rec.recv.initial_grant())
                )
            elif effect is _ENDED:
                rec.recv.end()
                self._events.append(StreamEnded(rec.id))
            elif effect is _CLOSED:
                if not rec.out.fin:  # else take_data finishes it once our FIN is out
                    self.streams.forget(rec)
                    self._events.append(StreamClosed(rec.id))
            else:
                self.streams.forget(rec)

    def _control_full(self, frames: int) -> None:
        """The peer let control frames pile up past the limit (see Outbox.queue_control)."""
        if not self.closed:
            self.terminate(
                ControlQueueFullError(
                    f"peer is not reading: {frames} control frames (pongs, window updates, "
                    f"resets) wait to be written, over the limit of "
                    f"{self.config.control_queue_limit} bytes (control_queue_limit)"
                )
            )

    def _finished(self, rec: StreamRecord) -> None:
        self.streams.forget(rec)
        self._events.append(StreamClosed(rec.id))

    def _reset_for_misbehaviour(self, rec: StreamRecord, reason: str) -> None:
        """A stream-level violation ends only that stream (the adapter logs it, rate-limited)."""
        self.reset_stream(rec.id)
        self._events.append(StreamReset(rec.id, reason, violation=True))

    def _check_alive(self) -> None:
        if self.error is not None:
            raise SessionClosedError(reason=self.error)
