"""The asyncio protocol behind a Session: runs the sans-IO Connection over a transport.

It owns everything with a clock (keepalive, open/close/write timeouts, ping
round-trip times) and every task and timer it starts; ``close()`` cancels them
all and closes the transport, ``wait_closed()`` waits for both. Streams talk to
it through the ``StreamLink`` methods (by stream id, like h2's connection) and
it feeds them through their public ``feed_*`` methods.

``Session`` is the object a user holds and this one the package's (as asyncio's
StreamWriter and StreamReaderProtocol): the transport's callbacks and the
streams' calls stay out of the public API, and still reach the object that does
the work directly, with no call in between per frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, assert_never, cast

from .backlog import Backlog
from .config import Config
from .connection import Connection
from .const import GoAwayCode
from .errors import (
    ConnectionWriteTimeoutError,
    ControlQueueFullError,
    KeepaliveTimeoutError,
    SessionClosedError,
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
from .liveness import Liveness
from .output import FrameWriter
from .ratelimit import RateLimitedLog
from .session_streams import SessionStreams
from .stream import Stream
from .tasks import TaskOwner
from .timers import PingTimes

JOIN_LIMIT = 16 * 1024
"""A Data frame written at once goes out as header + payload in one bytes object up to
this payload size (one write call); a larger payload is not copied (writelines)."""
_PEER_GONE = (KeepaliveTimeoutError, ConnectionWriteTimeoutError, ControlQueueFullError)
"""Ends after which the peer reads nothing more: the transport is aborted, not flushed."""


logger = logging.getLogger("yamux.session")


class SessionProtocol(asyncio.Protocol):
    """The engine of one Session (see the module docstring).

    It logs a few lines to ``yamux.session``, rate-limited where the peer can
    provoke them; why the session ended is ``close_reason``, for its owner to
    report.
    """

    def __init__(self, *, client: bool, config: Config | None = None) -> None:
        self.config = config or Config()
        self.client = client
        self.core = Connection(client=client, config=self.config)
        self.session: object = None
        """The user's object (a Session, which sets it) for ``get_extra_info("session")``."""
        self._loop = asyncio.get_running_loop()
        self._read_transport: asyncio.BaseTransport | None = None
        self.log = RateLimitedLog(logger)
        """Every line the peer can trigger over and over goes through this."""
        self.streams = SessionStreams(
            self._loop, self.config, self.log, fail=self._shutdown, reset=self.reset_stream
        )
        self._streams = self.streams.by_id
        self.backlog = Backlog(self.core)
        """The peer's streams waiting for accept_stream, our opens waiting for ACKs."""
        self._on_stream: Callable[[Stream], None] | None = None
        """While ``serve_streams`` runs: takes each new stream, accepted."""
        self.pings = PingTimes(self._loop)
        self._writer = FrameWriter(self.core.outbox, self.config, self._write_stalled)
        self._abort_timer: asyncio.TimerHandle | None = None
        self.tasks = TaskOwner(logger, self._loop)
        """The session's tasks: keepalive, watches, and the handlers ``Session.serve`` runs."""
        self.liveness = Liveness(
            self.config,
            self.core,
            self.pings,
            flush=self._flush,
            fail=self._shutdown,
            reset=self._reset_abandoned,
            log=self.log,
        )
        self._rtt_probed = False
        """A ping for window auto-tuning was sent (once, when data first flows)."""
        self.closing = False
        self._closed = self._loop.create_future()
        self._go_away: asyncio.Future[None] = self._loop.create_future()
        self.close_reason: YamuxError | None = None
        """Why the session ended (None while it runs)."""

    @property
    def transport(self) -> asyncio.WriteTransport | None:
        """The transport frames go to; None before it is attached and once it is lost."""
        return self._writer.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``session`` is the Session; anything else comes from the transport."""
        if name == "session":
            return self.session
        transport = self._writer.transport
        if transport is None:
            return default
        return transport.get_extra_info(name, default)

    # ------------------------------------- Session's commands (documented there)
    async def open_stream(self) -> Stream:
        await self.backlog.room_to_open()
        return self._open()

    def open_stream_nowait(self, first: bytes = b"") -> Stream | None:
        return self._open(first) if self.backlog.may_open() else None

    def _open(self, first: bytes = b"") -> Stream:
        core = self.core
        stream_id = core.open_stream()
        stream = Stream(self, stream_id, core.stream_state(stream_id))
        self.streams.add(stream, opened_by_us=True)
        if not first or not self._writer.write_first(core, stream_id, first):
            if first:
                core.send_data(stream_id, first)
            self._flush()
        return stream

    async def serve_streams(self, on_stream: Callable[[Stream], None]) -> None:
        """Accept every stream the peer opens and hand it to ``on_stream`` until the session
        ends: those already waiting first, then each from the callback that read its SYN
        (no accept waiter to wake, no loop iteration in between)."""
        if self._on_stream is not None:
            raise RuntimeError("the session's streams are served already")
        self._on_stream = on_stream
        try:
            while True:  # only the streams that came before: later ones skip the backlog
                on_stream(await self.accept_stream())
        except SessionClosedError:
            return
        finally:
            self._on_stream = None

    async def accept_stream(self) -> Stream:
        stream = await self.backlog.next_incoming()
        core = self.core
        core.accept_stream(stream.id)
        if core.input_held:
            self._resume_input()
        else:
            self._flush()
        return stream

    async def ping(self) -> float:
        self._raise_if_closed()
        opaque = self.core.ping()
        round_trip = self.pings.start(opaque)
        self._flush()
        try:
            rtt = await round_trip
        finally:
            self.pings.discard(opaque)
        self.liveness.record_rtt(rtt)
        return rtt

    async def wait_go_away(self) -> None:
        await asyncio.wait([self._go_away, self._closed], return_when=asyncio.FIRST_COMPLETED)
        if not self._go_away.done():
            raise SessionClosedError(reason=self.close_reason)

    def go_away(self, code: int) -> None:
        if self.closing:
            return
        if code == GoAwayCode.NORMAL:
            self.core.go_away(code)
            self._watch_abandoned_streams()
            self._flush()
            if self.core.input_held:  # a held SYN is refused now; not from inside a dispatch
                self._loop.call_soon(self._resume_input)
        else:
            self._shutdown(SessionClosedError(f"we sent go away code {code}"), code)

    def close(self) -> None:
        self._flush(force=True)
        self._shutdown(SessionClosedError("session closed locally"), GoAwayCode.NORMAL)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)
        await self.tasks.wait()

    # ------------------------------------------- StreamLink: called by Stream
    @property
    def read_chunk_size(self) -> int:
        return self.config.max_stream_window_size

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def send_data(self, stream_id: int, data: bytes) -> int:
        core = self.core
        writer = self._writer
        transport = writer.transport
        if transport is not None and not writer.paused and not transport.is_closing():
            header = core.frame_now(stream_id, data)
            if header is not None:  # nothing waits before it: no queue, no flush
                if len(data) <= JOIN_LIMIT:
                    transport.write(header + data)
                else:
                    transport.writelines((header, data))
                return 0
        core.send_data(stream_id, data)
        self._flush()
        return core.pending_bytes(stream_id)

    def pending_bytes(self, stream_id: int) -> int:
        return self.core.pending_bytes(stream_id)

    def consume(self, stream_id: int, length: int) -> None:
        if self.core.consume(stream_id, length, time.perf_counter):  # the clock of the RTTs
            self._flush()
        if not self._rtt_probed:
            self._probe_rtt()

    def _probe_rtt(self) -> None:
        """Measure the RTT once data flows, not at session start: until then the wire is the
        seed's, frame for frame (the relay's handshake ping may have measured it)."""
        self._rtt_probed = True
        tuner = self.core.tuner
        if tuner is not None and tuner.rtt is None and tuner.can_grow and not self.closing:
            self.tasks.spawn(self.liveness.measure_rtt(), name="yamux-rtt")

    def close_stream(self, stream_id: int) -> None:
        self.core.close_stream(stream_id)
        self.streams.closed_locally(stream_id)
        self._flush()

    def reset_stream(self, stream_id: int) -> None:
        self.core.reset_stream(stream_id)
        self._drop_reset(stream_id, "reset locally")
        self._flush()
        self.backlog.wake_openers()

    def watch_pending(self, stream: Stream) -> None:
        self.streams.watch_pending(stream)

    def protocol_failed(self, stream_id: int, callback: str, exc: Exception) -> None:
        self.log.log(
            logging.ERROR,
            "stream-protocol-failed",
            "stream %d: its protocol raised in %s; resetting the stream",
            stream_id,
            callback,
            exc_info=exc,
        )

    # ------------------------------------------- asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._writer.attach(transport)
        if self.config.enable_keepalive:
            self.tasks.spawn(self.liveness.keepalive(), name="yamux-keepalive")

    def attach_read_transport(self, transport: asyncio.BaseTransport) -> None:
        """A second transport that only reads (two pipes); closed when the session ends."""
        self._read_transport = transport

    def eof_received(self) -> bool:
        self._shutdown(SessionClosedError("peer closed the connection (EOF)"))
        return False

    def data_received(self, data: bytes) -> None:
        self.liveness.reads += 1
        lone = self.core.receive_lone_data(data)
        if lone is not None:  # one Data frame: its DataReceived, without events or a flush
            stream = self._streams.get(lone[0])
            if stream is not None:
                stream.feed_data(lone[1])
            return
        if self._dispatch(self.core.receive_data(data)):
            self._flush()
            self.backlog.wake_openers()

    def _hold_input(self) -> None:
        """A SYN found the accept backlog full: read nothing more until accepts make room.

        What the core holds is then at most this read; the peer's further bytes
        wait in the kernel, and the keepalive cannot fail meanwhile (Liveness.hold).
        """
        if self.liveness.holding:
            return
        self.liveness.hold()
        transport = self._reading_transport()
        if transport is not None:
            transport.pause_reading()

    def _resume_input(self) -> None:
        """Go on with the held input; read again once it is all handled."""
        core = self.core
        if self._dispatch(core.resume_input()):
            if not core.input_held and self.liveness.holding:
                self.liveness.release()
                transport = self._reading_transport()
                if transport is not None:
                    transport.resume_reading()
            self._flush()
            self.backlog.wake_openers()

    def _reading_transport(self) -> asyncio.ReadTransport | None:
        transport = self._read_transport or self._writer.transport
        if transport is None or transport.is_closing():
            return None
        return cast(asyncio.ReadTransport, transport)

    def _dispatch(self, events: list[Event]) -> bool:
        """Carry out the core's events; False once the session is over."""
        streams = self._streams
        for event in events:
            match event:
                case DataReceived(stream_id, payload):
                    # .get: a stream callback may have reset it earlier in this batch
                    stream = streams.get(stream_id)
                    if stream is not None:
                        stream.feed_data(payload)
                case WindowUpdated():
                    pass
                case StreamOpened(stream_id, state):
                    stream = Stream(self, stream_id, state)
                    self.streams.add(stream)
                    if self._on_stream is None:
                        self.backlog.add(stream)
                    else:  # its ACK goes out with this read's flush
                        self.core.accept_stream(stream_id)
                        self._on_stream(stream)
                case StreamAcknowledged(stream_id):
                    self.streams.acknowledged(stream_id)
                case StreamEnded(stream_id):
                    self.streams.ended(stream_id)
                case StreamClosed(stream_id):
                    self.streams.forget(stream_id)
                case StreamReset(stream_id, reason, violation):
                    if violation:
                        self.log.log(logging.WARNING, "stream-violation", "resetting %s", reason)
                    self._drop_reset(stream_id, reason)
                case StreamRefused(stream_id, reason):
                    self.log.log(
                        logging.WARNING,
                        "stream-refused",
                        "refusing stream %d: %s",
                        stream_id,
                        reason,
                    )
                case PongReceived(opaque):
                    if not self.pings.pong(opaque):
                        self.log.log(
                            logging.DEBUG, "stray-pong", "ignoring pong %d nobody waits for", opaque
                        )
                case GoAwayReceived():
                    self.log.log(
                        logging.INFO, "go-away", "peer sent go away: no new streams on this session"
                    )
                    if not self._go_away.done():
                        self._go_away.set_result(None)
                    self._watch_abandoned_streams()
                    self.backlog.wake_openers(force=True)
                case InputHeld():
                    self._hold_input()
                    if self._on_stream is not None:  # the opens before it are accepted
                        self._loop.call_soon(self._resume_input)
                case SessionTerminated(error):
                    self._shutdown(error)
                    return False
                case _:
                    assert_never(event)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._shutdown(SessionClosedError("connection closed"))
        else:
            self._shutdown(SessionClosedError("connection lost", reason=exc))
        self._writer.transport = None
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writer.pause()

    def resume_writing(self) -> None:
        self._writer.resume()
        self._flush()

    # ----------------------------------------------------------------- output
    def _flush(self, force: bool = False) -> None:
        """Write what the transport takes now (FrameWriter); carry out the events that causes."""
        core = self.core
        if core.error is not None and not self.closing:
            self._shutdown(core.error)  # the core ended itself on a command (control queue full)
            return
        if self._writer.write(force):
            events = core.take_events()
            if events:
                self._dispatch(events)
                self.backlog.wake_openers()  # a finished stream that was never ACKed frees backlog
        self.streams.wake_drained(core.pending_bytes)

    # ----------------------------------------------------------------- timers
    def _write_stalled(self, buffered: int) -> None:
        self._shutdown(
            ConnectionWriteTimeoutError(
                f"connection write timeout: the peer accepted no bytes for "
                f"{self.config.connection_write_timeout} s ({buffered} bytes waiting)"
            )
        )

    def _watch_abandoned_streams(self) -> None:
        """After Go Away either way, start resetting streams the peer went silent on (once)."""
        liveness = self.liveness
        if self.config.go_away_timeout and not liveness.watching_abandoned:
            liveness.watching_abandoned = True
            self.tasks.spawn(liveness.reset_abandoned_streams(), name="yamux-go-away-watch")

    def _reset_abandoned(self, stream_id: int, reason: str) -> None:
        self.core.reset_stream(stream_id)
        self._drop_reset(stream_id, reason)
        self.backlog.wake_openers()
        if self.core.input_held:  # it may have waited in the accept backlog
            self._resume_input()

    # --------------------------------------------------------------- shutdown
    def _shutdown(self, error: YamuxError, code: int | None = None) -> None:
        """End the session: tell the peer (Go Away ``code``), fail every waiter, close.

        Logged at debug level only: the session's owner reports ``close_reason``
        with what it knows (the peer, the port).
        """
        if self.closing:
            return
        self.closing = True
        self.close_reason = error
        logger.debug("session ended: %s", error)
        self.log.summary(logging.WARNING, "session ended")
        if self.core.discarded_frames:
            logger.debug(
                "session ended: discarded %d frames (%d bytes) for unknown streams",
                self.core.discarded_frames,
                self.core.discarded_bytes,
            )
        self.core.terminate(error, code)
        self._flush()
        self._writer.stop()
        self.streams.end(error)
        self.backlog.end(error)
        self.pings.fail_all(SessionClosedError(reason=error))
        self.tasks.cancel()
        if self._read_transport is not None:
            self._read_transport.close()
        transport = self._writer.transport
        if transport is None:
            if not self._closed.done():
                self._closed.set_result(None)
            return
        if isinstance(error, _PEER_GONE):
            transport.abort()  # nothing would reach the peer: do not wait to flush
            return
        transport.close()
        self._abort_timer = self._loop.call_later(
            self.config.connection_write_timeout, transport.abort
        )

    def _raise_if_closed(self) -> None:
        if self.closing:
            raise SessionClosedError(reason=self.close_reason)

    def _drop_reset(self, stream_id: int, reason: str) -> None:
        """A reset stream, ours or the peer's, leaves the session at once."""
        self.backlog.discard(stream_id)
        self.streams.reset(stream_id, reason)
