"""The sans-IO session core: bytes in, events and bytes out, no sockets, no clocks.

Outgoing bytes come in two queues. Control frames (SYN/ACK, window updates,
pings and pongs, RST, Go Away) are small and written at once while the peer
reads; the queue is bounded (``Config.control_queue_limit``) for when it does not. Stream
data waits in per-stream queues and is framed only when the I/O adapter asks
for it (``take_data``), i.e. when the transport has room; so a pong never waits
behind megabytes of queued bulk data, and streams share the connection
round-robin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .config import Config
from .const import HEADER_SIZE, INITIAL_STREAM_WINDOW, Flag, FrameType, GoAwayCode
from .errors import (
    ControlQueueFullError,
    GoAwayError,
    ProtocolError,
    RemoteGoAwayError,
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
from .flow import WindowTuner
from .frame import Frame, FrameDecoder, encode_header
from .stream_state import OpenState, StreamState

logger = logging.getLogger("yamux.connection")

_DATA = FrameType.DATA
_WINDOW_UPDATE = FrameType.WINDOW_UPDATE
_PING = FrameType.PING
_GO_AWAY = FrameType.GO_AWAY
_SYN, _ACK, _FIN, _RST = int(Flag.SYN), int(Flag.ACK), int(Flag.FIN), int(Flag.RST)
_MAX_STREAM_ID = 0xFFFFFFFF


class Connection:
    """One yamux session's protocol state. ``client`` opens odd stream ids, the server even."""

    def __init__(self, *, client: bool, config: Config | None = None) -> None:
        self.client = client
        self.config = config or Config()
        self._next_id = 1 if client else 2
        self._streams: dict[int, StreamState] = {}
        self._sendable: dict[int, StreamState] = {}
        self._control: list[bytes] = []
        self._finished: list[int] = []
        self._decoder = FrameDecoder(max(self.config.max_frame_size,
                                         self.config.max_stream_window_size))
        self._heard: set[int] | None = None
        """Streams that received a frame, once silent_streams is in use."""
        self.tuner: WindowTuner | None = None
        """Receive-window auto-tuning (Config.window_autotune); the adapter feeds its RTT."""
        self._stream_window = self.config.max_stream_window_size
        if self.config.window_autotune:
            self.tuner = WindowTuner(self.config.max_stream_window_size,
                                     self.config.max_session_window)
            self._stream_window = INITIAL_STREAM_WINDOW
        self._ping_id = 0
        self.unacked_outbound = 0
        """Our opens awaiting ACK; open_stream should wait while this reaches the backlog."""
        self.unaccepted_inbound = 0
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
    def backlog_full(self) -> bool:
        return self.unacked_outbound >= self.config.accept_backlog

    @property
    def has_control(self) -> bool:
        return bool(self._control)

    @property
    def has_data(self) -> bool:
        return bool(self._sendable)

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def send_credit(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.send.credit if st is not None else 0

    @property
    def heard_any(self) -> bool:
        """A stream frame arrived since silent_streams last looked."""
        return bool(self._heard)

    def silent_streams(self) -> list[int]:
        """Streams that received no frame since the previous call; starts a new period.

        Nothing is tracked before the first call (it costs nothing per stream).
        """
        heard = self._heard
        self._heard = set()
        if heard is None:
            return []
        return [stream_id for stream_id in self._streams if stream_id not in heard]

    def pending_bytes(self, stream_id: int) -> int:
        """Bytes written to a stream and not yet framed."""
        st = self._streams.get(stream_id)
        return st.pending_bytes if st is not None else 0

    # ---------------------------------------------------------------- commands
    def open_stream(self) -> int:
        """Allocate the next stream id and queue its SYN (carrying any extra window grant)."""
        self._check_alive()
        if self.remote_go_away:
            raise GoAwayError(GoAwayCode.NORMAL)
        if len(self._streams) >= self.config.max_streams:
            raise TooManyStreamsError(
                f"session has {len(self._streams)} streams, the maximum (max_streams)"
            )
        stream_id = self._next_id
        if stream_id > _MAX_STREAM_ID:
            raise SessionError("stream ids exhausted on this session")
        self._next_id += 2
        st = self._new_stream(stream_id, OpenState.SYN_SENT)
        self.unacked_outbound += 1
        self._queue_control(encode_header(_WINDOW_UPDATE, _SYN, stream_id, st.recv.initial_grant()))
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """ACK a stream the peer opened (after StreamOpened), granting our window."""
        st = self._streams.get(stream_id)
        if st is None or st.open_state is not OpenState.SYN_RECEIVED:
            return
        st.open_state = OpenState.ESTABLISHED
        if st.leave_backlog():
            self.unaccepted_inbound -= 1
        self._queue_control(encode_header(_WINDOW_UPDATE, _ACK, stream_id, st.recv.initial_grant()))

    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        """Queue payload; it is framed within the peer's window by take_data."""
        st = self._writable_stream(stream_id)
        if not data:
            return
        st.pending.append(data)
        st.pending_bytes += len(data)
        if st.send.credit > 0:
            self._sendable[stream_id] = st

    def close_stream(self, stream_id: int) -> None:
        """Half-close: queue FIN behind everything already written."""
        st = self._streams.get(stream_id)
        if st is None or st.fin_queued:
            return
        self._check_alive()
        st.fin_queued = True
        if st.sendable:
            self._sendable[stream_id] = st

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream both ways: drop unsent data and send RST."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        self._forget(st)
        if not self.closed:
            self._queue_control(encode_header(_WINDOW_UPDATE, _RST, stream_id, 0))

    def consume(self, stream_id: int, length: int, now: float = 0.0) -> None:
        """The application took ``length`` received bytes; maybe queue a window update.

        ``now`` (seconds, any clock) matters only to window auto-tuning.
        """
        st = self._streams.get(stream_id)
        if st is None or self.closed:
            return
        delta = st.recv.consume(length, self.tuner, now)
        if delta and not st.remote_fin:
            self._queue_control(encode_header(_WINDOW_UPDATE, 0, stream_id, delta))

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
        self._control.append(encode_header(_GO_AWAY, 0, 0, code))
        if code != GoAwayCode.NORMAL:
            self.error = SessionClosedError(f"we sent go away code {code}")
            self._forget_all()

    def terminate(self, error: YamuxError, code: int | None = None) -> None:
        """End the session locally; with ``code``, queue a Go Away telling the peer why."""
        if self.closed:
            return
        if code is not None:
            self._control.append(encode_header(_GO_AWAY, 0, 0, code))
        self.error = error
        self._forget_all()

    # ------------------------------------------------------------------ output
    def take_control(self, limit: int | None = None) -> list[bytes]:
        """Queued control frames, oldest first; at most ``limit`` bytes of them if given."""
        out = self._control
        if limit is not None and limit < len(out) * HEADER_SIZE:
            count = limit // HEADER_SIZE
            self._control = out[count:]
            return out[:count]
        self._control = []
        return out

    def take_data(self, budget: int) -> list[bytes | memoryview]:
        """Frame up to about ``budget`` payload bytes, one frame per stream per round.

        FIN always goes on its own Window Update frame after the last data, as
        hashicorp sends it: a peer that handles FIN before a Data frame's payload
        (``@chainsafe/libp2p-yamux``) would otherwise drop that payload.
        """
        out: list[bytes | memoryview] = []
        sendable = self._sendable
        max_frame = self.config.max_frame_size
        while budget > 0 and sendable:
            stream_id = next(iter(sendable))
            st = sendable.pop(stream_id)
            size = min(st.pending_bytes, st.send.credit, max_frame)
            if size:
                out.append(encode_header(_DATA, 0, stream_id, size))
                self._take_pending(st, size, out)
                st.send.credit -= size
                budget -= size
            if st.fin_queued and not st.pending_bytes:
                out.append(encode_header(_WINDOW_UPDATE, _FIN, stream_id, 0))
                st.fin_sent = True
            if st.fin_sent:
                if st.remote_fin:
                    self._forget(st)
                    self._finished.append(stream_id)
            elif st.sendable:
                sendable[stream_id] = st
        return out

    def take_finished(self) -> list[int]:
        """Streams take_data finished (our FIN went out after the peer's) and forgot."""
        out = self._finished
        self._finished = []
        return out

    # ------------------------------------------------------------------- input
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume bytes from the peer; returns what happened, in order.

        Processing stops at the first frame that ends the session: SessionTerminated
        is then the last event, and later frames in ``data`` are ignored.
        """
        return self.receive_frames(self._decoder.feed(data))

    def receive_frames(self, frames: Iterable[Frame]) -> list[Event]:
        """Like receive_data for frames already decoded (used by tests)."""
        events: list[Event] = []
        if self.closed:
            return events
        try:
            for frame in frames:
                self._handle_frame(frame, events)
                if self.error is not None:
                    break
        except ProtocolError as exc:
            logger.warning("protocol error from peer: %s", exc)
            self.terminate(exc, GoAwayCode.PROTOCOL_ERROR)
        if self.error is not None:
            events.append(SessionTerminated(self.error))
        return events

    def _handle_frame(self, frame: Frame, events: list[Event]) -> None:
        type_ = frame.type
        if type_ is _DATA or type_ is _WINDOW_UPDATE:
            self._handle_stream_frame(frame, events)
        elif type_ is _PING:
            self._require_session_id(frame)
            if frame.flags & _SYN:
                self._queue_control(encode_header(_PING, _ACK, 0, frame.length))
            else:
                events.append(PongReceived(frame.length))
        else:
            self._require_session_id(frame)
            code = frame.length
            if code == GoAwayCode.NORMAL:
                self.remote_go_away = True
                events.append(GoAwayReceived(code))
            else:
                self.terminate(RemoteGoAwayError(code))

    def _handle_stream_frame(self, frame: Frame, events: list[Event]) -> None:
        stream_id = frame.stream_id
        flags = frame.flags
        if stream_id == 0:
            raise ProtocolError(f"{frame.type.name} frame on stream id 0, which is the session's")
        st = self._streams.get(stream_id)
        if flags & _SYN:
            st = self._incoming_stream(frame, st, events)
        if st is None:
            self.discarded_frames += 1
            self.discarded_bytes += len(frame.body)
            return
        if self._heard is not None:
            self._heard.add(stream_id)
        if flags & _ACK and st.open_state is OpenState.SYN_SENT:
            st.open_state = OpenState.ESTABLISHED
            if st.leave_backlog():
                self.unacked_outbound -= 1
            events.append(StreamAcknowledged(stream_id))
        if flags & _RST:
            # go-yamux puts an error code in a RST's length: it is no window delta,
            # and a reset discards the frame's payload like everything unread.
            self.discarded_bytes += len(frame.body)
            self._forget(st)
            events.append(StreamReset(stream_id, "reset by peer"))
            return
        if frame.type is _WINDOW_UPDATE:
            if frame.length:
                st.send.grant(stream_id, frame.length)
                if st.sendable and not st.fin_sent:
                    self._sendable[stream_id] = st
                events.append(WindowUpdated(stream_id))
        elif frame.length:
            if st.remote_fin:
                self._reset_for_misbehaviour(
                    st, f"stream {stream_id}: {frame.length} bytes of data after the peer's FIN",
                    events,
                )
                return
            st.recv.receive(stream_id, frame.length)
            events.append(DataReceived(stream_id, frame.body))
        if flags & _FIN and not st.remote_fin:
            st.remote_fin = True
            events.append(StreamEnded(stream_id))
            if st.fin_sent:
                self._forget(st)
                events.append(StreamClosed(stream_id))

    def _incoming_stream(
        self, frame: Frame, existing: StreamState | None, events: list[Event]
    ) -> StreamState | None:
        stream_id = frame.stream_id
        if existing is not None:
            raise ProtocolError(f"duplicate SYN for stream {stream_id}, which is already open")
        if (stream_id & 1) == (1 if self.client else 0):
            side = "client" if self.client else "server"
            raise ProtocolError(
                f"peer opened stream {stream_id}, an id reserved for our side ({side}); "
                f"are both ends the same yamux role?"
            )
        refusal = None
        if self.local_go_away:
            refusal = "we sent go away"
        elif len(self._streams) >= self.config.max_streams:
            refusal = f"session has the maximum of {self.config.max_streams} streams"
        elif self.unaccepted_inbound >= self.config.accept_backlog:
            refusal = f"accept backlog of {self.config.accept_backlog} streams is full"
        if refusal is not None:
            self._queue_control(encode_header(_WINDOW_UPDATE, _RST, stream_id, 0))
            events.append(StreamRefused(stream_id, refusal))
            return None
        st = self._new_stream(stream_id, OpenState.SYN_RECEIVED)
        self.unaccepted_inbound += 1
        events.append(StreamOpened(stream_id))
        return st

    # ---------------------------------------------------------------- internals
    def _queue_control(self, frame: bytes) -> None:
        """Queue one control frame; a peer that lets them pile up past the limit is cut off.

        The adapter writes control frames at once unless the transport is paused
        (the peer is not reading), so the queue only grows while the peer owes us
        reads; pongs, updates and resets it provokes meanwhile must not grow
        without bound (a ping flood).
        """
        control = self._control
        control.append(frame)
        if len(control) * HEADER_SIZE > self.config.control_queue_limit and not self.closed:
            self.terminate(ControlQueueFullError(
                f"peer is not reading: {len(control)} control frames (pongs, window updates, "
                f"resets) wait to be written, over the limit of "
                f"{self.config.control_queue_limit} bytes (control_queue_limit)"
            ))

    def _reset_for_misbehaviour(self, st: StreamState, reason: str, events: list[Event]) -> None:
        """A stream-level violation ends only that stream (the adapter logs it, rate-limited)."""
        self.reset_stream(st.id)
        events.append(StreamReset(st.id, reason, violation=True))

    def _writable_stream(self, stream_id: int) -> StreamState:
        self._check_alive()
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamResetError(f"stream {stream_id} is reset or closed")
        if st.fin_queued:
            raise StreamClosedError(f"stream {stream_id}: write after close (FIN already queued)")
        return st

    def _take_pending(self, st: StreamState, size: int, out: list[bytes | memoryview]) -> None:
        st.pending_bytes -= size
        pending = st.pending
        while size:
            chunk = pending[0]
            n = len(chunk)
            if n <= size:
                out.append(pending.popleft())
                size -= n
            else:
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                out.append(view[:size])
                pending[0] = view[size:]
                size = 0

    def _new_stream(self, stream_id: int, open_state: OpenState) -> StreamState:
        st = StreamState(stream_id, open_state, self._stream_window)
        self._streams[stream_id] = st
        if self.tuner is not None:
            self.tuner.used += self._stream_window
        return st

    def _forget(self, st: StreamState) -> None:
        if self._streams.pop(st.id, None) is not None and self.tuner is not None:
            self.tuner.used -= st.recv.max_window
        self._sendable.pop(st.id, None)
        st.pending.clear()
        st.pending_bytes = 0
        if st.leave_backlog():
            if st.open_state is OpenState.SYN_SENT:
                self.unacked_outbound -= 1
            elif st.open_state is OpenState.SYN_RECEIVED:
                self.unaccepted_inbound -= 1

    def _forget_all(self) -> None:
        for st in list(self._streams.values()):
            self._forget(st)

    def _check_alive(self) -> None:
        if self.error is not None:
            raise SessionClosedError(reason=self.error)

    @staticmethod
    def _require_session_id(frame: Frame) -> None:
        if frame.stream_id != 0:
            raise ProtocolError(
                f"{frame.type.name} frame with stream id {frame.stream_id}; it must be 0"
            )
