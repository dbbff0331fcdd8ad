"""The asyncio adapter: runs the sans-IO Connection over any asyncio transport.

It owns everything with a clock (keepalive, open/close/write timeouts, ping
round-trip times) and every task and timer it starts; ``close()`` cancels them
all, waits for its tasks and closes the transport. Streams talk to it through
the ``StreamLink`` methods (by stream id, like h2's connection) and it feeds
them through their public ``feed_*`` methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, assert_never

from .config import Config
from .connection import Connection
from .const import GoAwayCode
from .errors import (
    ConnectionWriteTimeoutError,
    ControlQueueFullError,
    KeepaliveTimeoutError,
    NoNewStreamsError,
    SessionClosedError,
    StreamOpenTimeoutError,
    StreamResetError,
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
from .liveness import Liveness
from .output import FrameWriter
from .ratelimit import RateLimitedLog
from .stream import Stream
from .stream_state import State
from .tasks import StreamHandler, TaskOwner, run_stream_handler
from .timers import PingTimes, StreamTimers

_LOCAL_CLOSE = State.LOCAL_CLOSE
"""Bound once: a class attribute lookup of an Enum member is slow on Python 3.11."""
_PEER_GONE = (KeepaliveTimeoutError, ConnectionWriteTimeoutError, ControlQueueFullError)
"""Ends after which the peer reads nothing more: the transport is aborted, not flushed."""


class Session(asyncio.Protocol):
    """A yamux session. Create with ``connect``, ``Session.attach`` or ``start_server``.

    It is the asyncio protocol of its transport (``protocol()`` returns itself).

    ``logger`` (default ``yamux.session``) gets its few log lines, rate-limited
    where the peer can provoke them; why the session ended is ``close_reason``,
    for its owner to report.
    """

    def __init__(
        self, *, client: bool, config: Config | None = None, logger: logging.Logger | None = None
    ) -> None:
        self.config = config or Config()
        self.client = client
        self._logger = logger or logging.getLogger("yamux.session")
        self._core = Connection(client=client, config=self.config)
        self._loop = asyncio.get_running_loop()
        self._read_transport: asyncio.BaseTransport | None = None
        self._streams: dict[int, Stream] = {}
        self._accept_queue: dict[int, Stream] = {}
        """Streams the peer opened, oldest first; a reset one leaves at once (core-bounded)."""
        self._accept_waiter: asyncio.Future[None] | None = None
        self._open_waiters: deque[asyncio.Future[None]] = deque()
        self._drain_waiting: dict[int, Stream] = {}
        self._open_timers = StreamTimers(
            self._loop, self.config.stream_open_timeout, self._open_timed_out
        )
        self._close_timers = StreamTimers(
            self._loop, self.config.stream_close_timeout, self._close_timed_out
        )
        self._pings = PingTimes(self._loop)
        self._writer = FrameWriter(self._core, self.config, self._write_stalled)
        self._abort_timer: asyncio.TimerHandle | None = None
        self._log = RateLimitedLog(self._logger)
        """Every line the peer can trigger over and over goes through this."""
        self._tasks = TaskOwner(self._logger)
        self._liveness = Liveness(
            self.config,
            self._core,
            self._pings,
            flush=self._flush,
            fail=self._shutdown,
            reset=self._reset_abandoned,
            log=self._log,
        )
        self._rtt_probed = False
        """A ping for window auto-tuning was sent (once, when data first flows)."""
        self._closing = False
        self._closed = self._loop.create_future()
        self._go_away: asyncio.Future[None] = self._loop.create_future()
        self.close_reason: YamuxError | None = None
        """Why the session ended (None while it runs)."""

    # ---------------------------------------------------------------- creation
    @classmethod
    def attach(
        cls,
        transport: asyncio.Transport,
        *,
        client: bool,
        config: Config | None = None,
        initial_data: bytes = b"",
    ) -> Session:
        """Switch an already connected transport to yamux, e.g. after a text greeting.

        ``initial_data`` is what the old protocol read beyond its greeting.
        """
        session = cls(client=client, config=config)
        transport.set_protocol(session)
        session.connection_made(transport)
        if initial_data:
            session.data_received(initial_data)
        return session

    def protocol(self) -> asyncio.Protocol:
        """The protocol to hand to ``loop.create_connection`` and friends."""
        return self

    # ------------------------------------------------------------------ public
    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def num_streams(self) -> int:
        return self._core.num_streams

    @property
    def write_buffer_size(self) -> int:
        """Bytes the transport holds that the peer has not taken yet (0 once closed)."""
        transport = self._writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def last_rtt(self) -> float | None:
        """Seconds of the last answered ping (keepalive or ``ping()``), for metrics."""
        return self._pings.last

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time of the keepalive pings, once one was answered."""
        return self._liveness.rtt

    @property
    def remote_go_away(self) -> bool:
        return self._core.remote_go_away

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``session`` is this session; anything else comes from the transport."""
        if name == "session":
            return self
        transport = self._writer.transport
        if transport is None:
            return default
        return transport.get_extra_info(name, default)

    async def open_stream(self) -> Stream:
        """Open a stream. Waits while ``accept_backlog`` of our opens are still unACKed."""
        while True:
            self._raise_if_closed()
            if self._core.remote_go_away:
                raise NoNewStreamsError(GoAwayCode.NORMAL)
            if not self._core.backlog_full:
                break
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._open_waiters:
                    self._open_waiters.remove(waiter)
        core = self._core
        stream_id = core.open_stream()
        stream = Stream(self, stream_id, core.stream_state(stream_id))
        self._streams[stream_id] = stream
        self._open_timers.arm(stream_id)
        self._flush()
        return stream

    async def accept_stream(self) -> Stream:
        """The next stream the peer opened; raises SessionClosedError once the session ends."""
        while not self._accept_queue:
            self._raise_if_closed()
            waiter = self._accept_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._accept_waiter = None
        stream = self._accept_queue.pop(next(iter(self._accept_queue)))
        self._core.accept_stream(stream.id)
        self._flush()
        return stream

    async def __aiter__(self) -> AsyncIterator[Stream]:
        """Every stream the peer opens, until the session ends."""
        while True:
            try:
                yield await self.accept_stream()
            except SessionClosedError:
                return

    async def serve(
        self,
        handler: StreamHandler,
        *,
        tasks: TaskOwner | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Run ``handler(reader, writer)`` for every accepted stream until the session ends.

        The stream is closed when the handler returns and reset when it raises
        (the error goes to ``logger``) or is cancelled. Handler tasks belong to
        ``tasks``, by default the session's own, which ``close()`` cancels and
        waits for.
        """
        owner = self._tasks if tasks is None else tasks
        log = self._log if logger is None else RateLimitedLog(logger)
        while True:  # as ``async for stream in self``, without an async generator per stream
            try:
                stream = await self.accept_stream()
            except SessionClosedError:
                return
            owner.spawn(run_stream_handler(handler, stream, log), name=f"yamux-stream-{stream.id}")

    async def ping(self) -> float:
        """Round-trip time in seconds of one ping (wrap in ``asyncio.timeout`` to bound it)."""
        self._raise_if_closed()
        opaque = self._core.ping()
        round_trip = self._pings.start(opaque)
        self._flush()
        try:
            rtt = await round_trip
        finally:
            self._pings.discard(opaque)
        self._liveness.record_rtt(rtt)
        return rtt

    async def wait_go_away(self) -> None:
        """Return once the peer sent Go Away 0 (it takes no new streams; existing ones go on).

        Raises SessionClosedError if the session ends first.
        """
        closed = asyncio.ensure_future(self.wait_closed())
        try:
            await asyncio.wait([self._go_away, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not self._go_away.done():
            raise SessionClosedError(reason=self.close_reason)

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Refuse new streams from the peer. A non-zero code also ends the session."""
        if self._closing:
            return
        if code == GoAwayCode.NORMAL:
            self._core.go_away(code)
            self._watch_abandoned_streams()
            self._flush()
        else:
            self._shutdown(SessionClosedError(f"we sent go away code {code}"), code)

    async def close(self) -> None:
        """Close the session: what the peer's windows allow is still sent, then Go Away.

        Every stream then ends with SessionClosedError, the session's tasks are
        cancelled and awaited, and the transport closes.
        """
        self._flush(force=True)
        self._shutdown(SessionClosedError("session closed locally"), GoAwayCode.NORMAL)
        await self.wait_closed()
        await self._tasks.close()

    async def wait_closed(self) -> None:
        """Until the transport is closed; never raises (see ``close_reason``)."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------- StreamLink: called by Stream
    @property
    def read_chunk_size(self) -> int:
        return self.config.max_stream_window_size

    def send_data(self, stream_id: int, data: bytes) -> None:
        self._core.send_data(stream_id, data)
        self._flush()

    def pending_bytes(self, stream_id: int) -> int:
        return self._core.pending_bytes(stream_id)

    def consume(self, stream_id: int, length: int) -> None:
        core = self._core
        core.consume(stream_id, length, time.perf_counter())  # the clock of the RTTs
        tuner = core.tuner
        if tuner is not None and tuner.rtt is None and not self._rtt_probed and tuner.can_grow:
            # Measured once data flows, not at session start: until then the wire is the
            # seed's, frame for frame (the relay's handshake ping may have measured it).
            self._rtt_probed = True
            self._tasks.spawn(self._liveness.measure_rtt(), name="yamux-rtt")
        if core.has_control:
            self._flush()

    def close_stream(self, stream_id: int) -> None:
        self._open_timers.cancel(stream_id)
        self._core.close_stream(stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None and stream.state is _LOCAL_CLOSE:
            self._close_timers.arm(stream_id)
        self._flush()

    def reset_stream(self, stream_id: int) -> None:
        self._core.reset_stream(stream_id)
        self._drop_reset(stream_id, "reset locally")
        self._flush()
        self._wake_openers()

    def watch_pending(self, stream: Stream) -> None:
        self._drain_waiting[stream.id] = stream

    # ------------------------------------------- asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._writer.attach(transport)
        if self.config.enable_keepalive:
            self._tasks.spawn(self._liveness.keepalive(), name="yamux-keepalive")

    def attach_read_transport(self, transport: asyncio.BaseTransport) -> None:
        """A second transport that only reads (two pipes); closed when the session ends."""
        self._read_transport = transport

    def eof_received(self) -> bool:
        self._shutdown(SessionClosedError("peer closed the connection (EOF)"))
        return False

    def data_received(self, data: bytes) -> None:
        self._liveness.heard()
        if self._dispatch(self._core.receive_data(data)):
            self._flush()
            self._wake_openers()

    def _dispatch(self, events: list[Event]) -> bool:
        """Carry out the core's events; False once the session is over."""
        streams = self._streams
        for event in events:
            match event:
                case DataReceived(stream_id, payload):
                    streams[stream_id].feed_data(payload)
                case WindowUpdated():
                    pass
                case StreamOpened(stream_id, state):
                    stream = Stream(self, stream_id, state)
                    streams[stream_id] = stream
                    self._accept_queue[stream_id] = stream
                    if self._accept_waiter is not None and not self._accept_waiter.done():
                        self._accept_waiter.set_result(None)
                case StreamAcknowledged(stream_id):
                    self._open_timers.cancel(stream_id)
                case StreamEnded(stream_id):
                    streams[stream_id].feed_eof()
                    self._close_timers.cancel(stream_id)
                case StreamClosed(stream_id):
                    self._forget(stream_id)
                case StreamReset(stream_id, reason, violation):
                    if violation:
                        self._log.log(logging.WARNING, "stream-violation", "resetting %s", reason)
                    self._drop_reset(stream_id, reason)
                case StreamRefused(stream_id, reason):
                    self._log.log(
                        logging.WARNING,
                        "stream-refused",
                        "refusing stream %d: %s",
                        stream_id,
                        reason,
                    )
                case PongReceived(opaque):
                    if not self._pings.pong(opaque):
                        self._log.log(
                            logging.DEBUG, "stray-pong", "ignoring pong %d nobody waits for", opaque
                        )
                case GoAwayReceived():
                    self._log.log(
                        logging.INFO, "go-away", "peer sent go away: no new streams on this session"
                    )
                    if not self._go_away.done():
                        self._go_away.set_result(None)
                    self._watch_abandoned_streams()
                    self._wake_openers(force=True)
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
        core = self._core
        if core.error is not None and not self._closing:
            self._shutdown(core.error)  # the core ended itself on a command (control queue full)
            return
        if self._writer.write(force):
            events = core.take_events()
            if events:
                self._dispatch(events)
                self._wake_openers()  # a finished stream that was never ACKed frees backlog
        if self._drain_waiting:
            self._wake_drained()

    def _wake_drained(self) -> None:
        core = self._core
        for stream_id, stream in list(self._drain_waiting.items()):
            if not stream.pending_changed(core.pending_bytes(stream_id)):
                del self._drain_waiting[stream_id]

    def _wake_openers(self, force: bool = False) -> None:
        """Wake every waiting open_stream; each checks the backlog again."""
        if self._open_waiters and (force or self._closing or not self._core.backlog_full):
            while self._open_waiters:
                waiter = self._open_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    # ----------------------------------------------------------------- timers
    def _write_stalled(self, buffered: int) -> None:
        self._shutdown(
            ConnectionWriteTimeoutError(
                f"connection write timeout: the peer accepted no bytes for "
                f"{self.config.connection_write_timeout} s ({buffered} bytes waiting)"
            )
        )

    def _open_timed_out(self, stream_id: int) -> None:
        self._shutdown(
            StreamOpenTimeoutError(
                f"stream {stream_id} was not acknowledged within "
                f"{self.config.stream_open_timeout} s (stream open timeout)"
            ),
            GoAwayCode.INTERNAL_ERROR,
        )

    def _close_timed_out(self, stream_id: int) -> None:
        self._log.log(
            logging.WARNING,
            "close-timeout",
            "stream %d: peer sent no FIN within %s s of our close; resetting",
            stream_id,
            self.config.stream_close_timeout,
        )
        self.reset_stream(stream_id)

    def _watch_abandoned_streams(self) -> None:
        """After Go Away either way, start resetting streams the peer went silent on (once)."""
        liveness = self._liveness
        if self.config.go_away_timeout and not liveness.watching_abandoned:
            liveness.watching_abandoned = True
            self._tasks.spawn(liveness.reset_abandoned_streams(), name="yamux-go-away-watch")

    def _reset_abandoned(self, stream_id: int, reason: str) -> None:
        self._core.reset_stream(stream_id)
        self._drop_reset(stream_id, reason)
        self._wake_openers()

    # --------------------------------------------------------------- shutdown
    def _shutdown(self, error: YamuxError, code: int | None = None) -> None:
        """End the session: tell the peer (Go Away ``code``), fail every waiter, close.

        Logged at debug level only: the session's owner reports ``close_reason``
        with what it knows (the peer, the port).
        """
        if self._closing:
            return
        self._closing = True
        self.close_reason = error
        self._logger.debug("session ended: %s", error)
        self._log.summary(logging.WARNING, "session ended")
        if self._core.discarded_frames:
            self._logger.debug(
                "session ended: discarded %d frames (%d bytes) for unknown streams",
                self._core.discarded_frames,
                self._core.discarded_bytes,
            )
        self._core.terminate(error, code)
        self._flush()
        self._writer.stop()
        self._open_timers.cancel_all()
        self._close_timers.cancel_all()
        for stream in list(self._streams.values()):
            stream.set_exception(error)
        self._streams.clear()
        self._drain_waiting.clear()
        self._accept_queue.clear()
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)
        self._wake_openers()
        self._pings.fail_all(SessionClosedError(reason=error))
        self._tasks.cancel()
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
        if self._closing:
            raise SessionClosedError(reason=self.close_reason)

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._open_timers.cancel(stream_id)
        self._close_timers.cancel(stream_id)

    def _drop_reset(self, stream_id: int, reason: str) -> None:
        """A reset stream, ours or the peer's, leaves the session at once."""
        stream = self._streams.get(stream_id)
        self._forget(stream_id)
        self._drain_waiting.pop(stream_id, None)
        self._accept_queue.pop(stream_id, None)
        if stream is not None:
            stream.set_exception(StreamResetError(reason))
