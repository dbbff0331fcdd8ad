"""A yamux stream with the API of asyncio's StreamReader and StreamWriter in one object.

Code written for ``asyncio.start_server``'s ``(reader, writer)`` runs unchanged
on ``stream.pair()``. The differences that matter: ``close()`` and
``write_eof()`` both send FIN (a half-close: reading goes on until the peer's
FIN), ``reset()`` aborts both directions with RST, and a reset surfaces as
StreamResetError (a ConnectionResetError) on both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .errors import (
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    StreamTimeoutError,
    YamuxError,
)
from .stream_state import State, StreamMachine

DEFAULT_LIMIT = 64 * 1024
"""readline/readuntil give up (LimitOverrunError) past this many bytes without a separator."""
WRITE_BUFFER_LIMIT = 64 * 1024
"""drain() waits while more than this is written but not yet handed to the transport."""


class StreamLink(Protocol):
    """All a Stream asks of its session (SessionProtocol implements it), by stream id."""

    @property
    def read_chunk_size(self) -> int:
        """How much ``read(-1)`` asks for at a time: the receive window."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the session runs on (the stream's futures belong to it)."""
        ...

    def send_data(self, stream_id: int, data: bytes) -> int:
        """Send or queue ``data`` (not empty); the bytes of the stream still unsent."""
        ...

    def pending_bytes(self, stream_id: int) -> int:
        """Bytes written and not yet handed to the transport."""
        ...

    def consume(self, stream_id: int, length: int) -> None:
        """The application took ``length`` bytes: credit may go back to the peer."""
        ...

    def close_stream(self, stream_id: int) -> None: ...

    def reset_stream(self, stream_id: int) -> None: ...

    def watch_pending(self, stream: Stream) -> None:
        """Call ``stream.pending_changed`` as its unsent bytes go out, until it returns False."""
        ...

    def protocol_failed(self, stream_id: int, callback: str, exc: Exception) -> None:
        """The stream's protocol raised from ``callback``: log it (the stream resets itself)."""
        ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class Stream:
    """One yamux stream. Obtain it from Session.open_stream or Session.accept_stream.

    Its session feeds it through ``feed_data``/``feed_eof``/``set_exception``
    (as asyncio's protocol feeds a StreamReader) and ``pending_changed``; the
    stream's protocol state is the core's ``StreamMachine``, read, never copied.
    """

    __slots__ = (
        "_buffer",
        "_closed_waiter",
        "_deadlines",
        "_drain_waiter",
        "_eof_delivered",
        "_error",
        "_extra",
        "_limit",
        "_link",
        "_loop",
        "_protocol",
        "_read_timeout",
        "_read_waiter",
        "_reading_paused",
        "_state",
        "_write_timeout",
        "_writing_paused",
        "id",
    )

    def __init__(
        self, link: StreamLink, stream_id: int, state: StreamMachine, limit: int = DEFAULT_LIMIT
    ) -> None:
        self._link = link
        self._loop = link.loop
        self.id = stream_id
        self._state = state
        self._limit = limit
        self._buffer = bytearray()
        self._eof_delivered = False
        self._error: YamuxError | None = None
        self._extra: dict[str, Any] | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._deadlines: list[float | None] = [None, None]
        self._read_timeout: asyncio.Timeout | None = None
        self._write_timeout: asyncio.Timeout | None = None
        self._protocol: asyncio.Protocol | None = None
        self._reading_paused = False
        self._writing_paused = False

    def __repr__(self) -> str:
        return f"<yamux.Stream id={self.id} {self._state.state.value} buffered={len(self._buffer)}>"

    @property
    def state(self) -> State:
        """Where the stream is in the protocol (see yamux.stream_state)."""
        return self._state.state

    @property
    def _eof(self) -> bool:
        return self._state.remote_closed

    # ------------------------------------------------------------ reader side
    def pair(self) -> tuple[Stream, Stream]:
        """``(reader, writer)`` for code written against asyncio streams; both are this stream."""
        return self, self

    def at_eof(self) -> bool:
        """True once the peer's FIN arrived and every byte before it was read."""
        return self._eof and not self._buffer

    def exception(self) -> YamuxError | None:
        return self._error

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all until EOF if ``n < 0``); ``b""`` at EOF."""
        if n == 0:
            return b""
        if n < 0:
            parts = bytearray()
            while True:
                chunk = await self.read(self._link.read_chunk_size)
                if not chunk:
                    return bytes(parts)
                parts += chunk
        while not self._buffer:
            if self._eof:
                return b""
            await self._wait_for_data()
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or IncompleteReadError with what came before EOF."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        out = bytearray()
        while len(out) < n:
            if self._buffer:
                out += self._take(n - len(out))
            elif self._eof:
                raise asyncio.IncompleteReadError(bytes(out), n)
            else:
                await self._wait_for_data()
        return bytes(out)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``, with asyncio's errors for EOF and limit."""
        if not separator:
            raise ValueError("Separator should be at least one-byte string")
        seplen = len(separator)
        offset = 0
        while True:
            index = self._buffer.find(separator, offset)
            if index >= 0:
                return self._take(index + seplen)
            offset = max(0, len(self._buffer) + 1 - seplen)
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", offset
                )
            if self._eof:
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, None)
            await self._wait_for_data()

    async def readline(self) -> bytes:
        """A line ending in ``\\n``, or the rest before EOF (asyncio's semantics)."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            if self._buffer.startswith(b"\n", exc.consumed):
                self._take(exc.consumed + 1)
            else:
                self._take(len(self._buffer))
            raise ValueError(exc.args[0]) from None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    # ------------------------------------------------------------ writer side
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; it goes out as the peer's window allows. Use drain() for backpressure."""
        if self._error is not None:
            raise self._error_for("write")
        if self._state.local_closed:
            raise StreamClosedError(f"stream {self.id}: write after close/write_eof")
        if data:
            pending = self._link.send_data(self.id, data if type(data) is bytes else bytes(data))
            if (
                pending > WRITE_BUFFER_LIMIT
                and self._protocol is not None
                and not self._writing_paused
            ):
                self._writing_paused = True
                self._link.watch_pending(self)
                try:
                    self._protocol.pause_writing()
                except Exception as exc:
                    self._protocol_failed("pause_writing", exc)

    def writelines(self, data: list[bytes | bytearray | memoryview]) -> None:
        for chunk in data:
            self.write(chunk)

    async def drain(self) -> None:
        """Wait until the data written is (nearly all) handed to the transport."""
        link = self._link
        while True:
            if self._error is not None:
                raise self._error_for("drain")
            if link.pending_bytes(self.id) <= WRITE_BUFFER_LIMIT:
                return
            if self._drain_waiter is None:
                self._drain_waiter = self._loop.create_future()
                link.watch_pending(self)
            deadline = self._deadlines[1]
            try:
                async with asyncio.timeout_at(deadline) as timeout:
                    self._write_timeout = timeout
                    await asyncio.shield(self._drain_waiter)
            except TimeoutError:
                raise StreamTimeoutError(f"stream {self.id}: write deadline passed") from None
            finally:
                self._write_timeout = None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send FIN after the data already written; reading goes on until the peer's FIN."""
        if self._state.local_closed or self._error is not None:
            return
        self._link.close_stream(self.id)

    def close(self) -> None:
        """Half-close, as write_eof. The peer sees EOF; a stream it never closes is reset later."""
        self.write_eof()

    def is_closing(self) -> bool:
        return self._state.local_closed or self._error is not None

    async def wait_closed(self) -> None:
        """Wait until our FIN is handed to the transport, or the stream is reset; never raises."""
        link = self._link
        while self._error is None and link.pending_bytes(self.id):
            if self._closed_waiter is None:
                self._closed_waiter = self._loop.create_future()
                link.watch_pending(self)
            await asyncio.shield(self._closed_waiter)

    def reset(self) -> None:
        """Abort both directions with RST; pending and buffered bytes are discarded."""
        if self._error is None:
            self._link.reset_stream(self.id)
            self.set_exception(StreamResetError("reset locally"))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``stream_id``, ``session``, what ``set_extra_info`` set; else the transport's."""
        if self._extra is not None and name in self._extra:
            return self._extra[name]
        if name == "stream_id":
            return self.id
        return self._link.get_extra_info(name, default)

    def set_extra_info(self, name: str, value: Any) -> None:
        """Override one ``get_extra_info`` key for this stream only.

        For a layer above yamux that knows better than the session's transport,
        e.g. a relay reporting the public client as ``peername``.
        """
        if self._extra is None:
            self._extra = {}
        self._extra[name] = value

    # ---------------------------------------------------------- protocol mode
    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        """Deliver to ``protocol`` by callbacks instead of through read(), as a transport does.

        For splicing a stream to a socket without a task per direction: the
        protocol gets ``data_received``, ``eof_received`` (the peer's FIN),
        ``connection_lost(exc)`` (reset or session end; None never comes, a FIN
        both ways is not a loss), and ``pause_writing``/``resume_writing`` as
        what we wrote waits for the peer's window. Bytes are consumed (credit
        goes back to the peer) as they are delivered; ``pause_reading`` holds
        them back, so the peer stops once our window is full. A callback that
        raises resets this stream only, as a transport ends on a failing
        protocol; the session logs it and its other streams go on.
        """
        self._protocol = protocol
        self._deliver()
        if self._error is not None:  # ended before the protocol came: it hears so now
            self._lose_protocol()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._deliver()

    def is_reading(self) -> bool:
        return not self._reading_paused

    def _deliver(self) -> None:
        protocol = self._protocol
        if protocol is None or self._reading_paused:
            return
        if self._buffer:
            try:
                protocol.data_received(self._take(len(self._buffer)))
            except Exception as exc:
                self._protocol_failed("data_received", exc)
                return
        if self._eof and not self._buffer and not self._reading_paused and not self._eof_delivered:
            self._eof_delivered = True
            try:
                protocol.eof_received()
            except Exception as exc:
                self._protocol_failed("eof_received", exc)

    def pending_changed(self, pending: int) -> bool:
        """Wake what waits on our unsent bytes; True while something still waits."""
        if self._closed_waiter is not None and pending == 0:
            self._closed_waiter.set_result(None)
            self._closed_waiter = None
        if pending <= WRITE_BUFFER_LIMIT:
            if self._drain_waiter is not None:
                self._drain_waiter.set_result(None)
                self._drain_waiter = None
            if self._writing_paused:
                self._writing_paused = False
                if self._protocol is not None:
                    try:
                        self._protocol.resume_writing()
                    except Exception as exc:
                        self._protocol_failed("resume_writing", exc)
        return (
            self._drain_waiter is not None
            or self._closed_waiter is not None
            or (self._writing_paused)
        )

    # --------------------------------------------------------------- deadlines
    def set_read_deadline(self, when: float | None) -> None:
        """Reads blocked past ``when`` (loop.time() clock) raise StreamTimeoutError; None clears.

        Applies to a read that is already waiting, too.
        """
        self._deadlines[0] = when
        if self._read_timeout is not None:
            self._read_timeout.reschedule(when)

    def set_write_deadline(self, when: float | None) -> None:
        """Like set_read_deadline, for drain()."""
        self._deadlines[1] = when
        if self._write_timeout is not None:
            self._write_timeout.reschedule(when)

    def set_deadline(self, when: float | None) -> None:
        self.set_read_deadline(when)
        self.set_write_deadline(when)

    # ------------------------------------------------ fed by the session
    def feed_data(self, data: bytes) -> None:
        """Payload that arrived for this stream."""
        protocol = self._protocol
        if protocol is not None and not self._reading_paused and not self._buffer:
            self._link.consume(self.id, len(data))
            try:
                protocol.data_received(data)
            except Exception as exc:  # zero-cost on 3.11 while nothing raises
                self._protocol_failed("data_received", exc)
            return
        self._buffer += data
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed_eof(self) -> None:
        """The peer's FIN arrived (the state machine already says so): wake the reader."""
        if self._protocol is not None:
            self._deliver()
        self._wake_reader()

    def set_exception(self, error: YamuxError) -> None:
        """End with ``error``. A reset drops buffered bytes; a session end keeps them to read."""
        if self._error is not None:
            return
        self._error = error
        if isinstance(error, StreamResetError):
            self._buffer.clear()
        self._wake_reader()
        self._wake_writers()
        self._lose_protocol()

    def _lose_protocol(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            try:
                protocol.connection_lost(self._error)
            except Exception as exc:
                self._link.protocol_failed(self.id, "connection_lost", exc)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writers(self) -> None:
        for name in ("_drain_waiter", "_closed_waiter"):
            waiter = getattr(self, name)
            if waiter is not None:
                setattr(self, name, None)
                if not waiter.done():
                    waiter.set_result(None)

    # --------------------------------------------------------------- internals
    def _protocol_failed(self, callback: str, exc: Exception) -> None:
        """A protocol callback raised: reset this stream alone (see set_protocol)."""
        self._link.protocol_failed(self.id, callback, exc)
        if self._error is None:
            self.set_exception(StreamResetError(f"the stream's protocol failed in {callback}"))
            self._link.reset_stream(self.id)

    def _take(self, n: int) -> bytes:
        buffer = self._buffer
        if n >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:n])
            del buffer[:n]
        self._link.consume(self.id, len(data))
        return data

    async def _wait_for_data(self) -> None:
        if self._error is not None:
            raise self._error_for("read")
        waiter = self._loop.create_future()
        self._read_waiter = waiter
        try:
            async with asyncio.timeout_at(self._deadlines[0]) as timeout:
                self._read_timeout = timeout
                await waiter
        except TimeoutError:
            raise StreamTimeoutError(f"stream {self.id}: read deadline passed") from None
        finally:
            self._read_waiter = None
            self._read_timeout = None
        if self._error is not None and not self._buffer and not self._eof:
            raise self._error_for("read")

    def _error_for(self, operation: str) -> YamuxError:
        error = self._error
        assert error is not None
        if isinstance(error, StreamResetError | StreamClosedError):
            return type(error)(f"stream {self.id}: {operation} failed: {error}")
        return SessionClosedError(f"stream {self.id}: {operation} failed", reason=error)
