"""The hot path: bytes between a plain TCP socket and a yamux stream, both ways.

Used by the relay (public connection <-> stream to the registered side) and by
the forwarder (stream from the relay <-> local service). Everything about
copying lives here so it can be optimised in one place:

* the socket side is a bare ``asyncio.Protocol`` (``SocketEnd``): received
  chunks are handed to the stream as they are, without the extra copy a
  StreamReader makes;
* backpressure both ways: socket -> stream waits on ``Stream.drain()`` and
  pauses reading the socket while too much is waiting; stream -> socket waits
  while the socket transport is over its high-water mark;
* half-close both ways: EOF from the socket becomes FIN on the stream
  (``write_eof``), FIN from the stream becomes ``shutdown(SHUT_WR)`` on the
  socket, and the other direction goes on until it ends too;
* an error on either side (reset, connection lost, session ended) aborts both:
  RST on the stream, and RST on the socket (SO_LINGER 0) so the TCP peer can
  tell a failure from a complete answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import yamux

READ_CHUNK = 256 * 1024
"""Most bytes taken from the yamux stream per read (its default window)."""
SOCKET_HIGH_WATER = 256 * 1024
"""Reading the socket pauses while this much received data waits to go into the stream."""
_LINGER_RESET = struct.pack("ii", 1, 0)


class SocketEnd(asyncio.Protocol):
    """The TCP side of a pipe.

    Reading starts paused: nothing is read from the socket until ``pipe()``
    (or the owner) asks for data, so a connection waiting for its stream to
    open buffers nothing. ``on_connected(end)`` runs from ``connection_made``.
    """

    def __init__(self, on_connected: Callable[[SocketEnd], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.pause_reading()
        self._reading_paused = True
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= SOCKET_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake(self._read_waiter)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(self._read_waiter)
        return True  # half-close: keep the transport open to send the rest of the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        self._wake(self._read_waiter)
        self._wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake(self._drain_waiter)

    # -------------------------------------------------------------- reading
    async def read(self) -> bytes:
        """Everything received so far (at least one byte); ``b""`` once the peer sent EOF."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._lost:
                raise self._error("read")
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            waiter = self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._reading_paused and not self._eof and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    # -------------------------------------------------------------- writing
    def write(self, data: bytes) -> None:
        if self._lost or self.transport is None or self.transport.is_closing():
            raise self._error("write")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport holds more than its high-water mark."""
        while self._write_paused:
            if self._lost:
                raise self._error("write")
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost:
            raise self._error("write")

    def write_eof(self) -> None:
        """Half-close: send FIN after the buffered bytes; reading goes on."""
        if self._lost or self.transport is None or self.transport.is_closing():
            raise self._error("write_eof")
        self.transport.write_eof()

    def close(self) -> None:
        """Close after the buffered bytes are sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once with RST (SO_LINGER 0): the peer sees a reset, not a clean end."""
        transport = self.transport
        if transport is None or self._lost:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    @property
    def closed(self) -> bool:
        return self._lost

    # ------------------------------------------------------------- internals
    def _error(self, operation: str) -> ConnectionError:
        exc = self._lost_exc
        if isinstance(exc, ConnectionError):
            return type(exc)(exc.errno, f"{operation} failed: {exc.strerror}") if exc.errno else exc
        if exc is not None:
            error = ConnectionResetError(f"{operation} failed: {exc}")
            error.__cause__ = exc
            return error
        return ConnectionAbortedError(f"{operation} failed: connection closed")

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass(slots=True)
class PipeResult:
    """What one pipe carried, and why it stopped early (``error`` is None for a clean end)."""

    sent: int = 0
    """Bytes from the socket into the stream."""
    received: int = 0
    """Bytes from the stream out to the socket."""
    error: BaseException | None = None


_PIPE_ERRORS = (OSError, yamux.YamuxError)


def _abort_both(end: SocketEnd, stream: yamux.Stream) -> None:
    stream.reset()
    end.abort()


async def _socket_to_stream(end: SocketEnd, stream: yamux.Stream, result: PipeResult) -> None:
    read = end.read
    write = stream.write
    drain = stream.drain
    while True:
        data = await read()
        if not data:
            break
        write(data)
        result.sent += len(data)
        await drain()
    stream.write_eof()


async def _stream_to_socket(stream: yamux.Stream, end: SocketEnd, result: PipeResult) -> None:
    read = stream.read
    write = end.write
    while True:
        data = await read(READ_CHUNK)
        if not data:
            break
        write(data)
        result.received += len(data)
        if end._write_paused:
            await end.drain()
    end.write_eof()


async def pipe(end: SocketEnd, stream: yamux.Stream) -> PipeResult:
    """Copy both ways until both directions ended, then close the socket.

    Never raises for I/O errors: they abort both sides and are reported in the
    result. Cancelling the pipe aborts both sides too.
    """
    result = PipeResult()
    up = asyncio.get_running_loop().create_task(
        _socket_to_stream(end, stream, result), name=f"relay-pipe-up-{stream.id}"
    )

    def up_done(task: asyncio.Task[None]) -> None:
        # A failure going up must stop the direction this task is waiting on.
        if task.cancelled() or task.exception() is not None:
            _abort_both(end, stream)

    up.add_done_callback(up_done)
    try:
        try:
            await _stream_to_socket(stream, end, result)
        except _PIPE_ERRORS as exc:
            result.error = exc
            _abort_both(end, stream)
        try:
            await up
        except _PIPE_ERRORS as exc:
            if result.error is None:
                result.error = exc
    except BaseException:  # cancelled: abort both, and let the other direction finish
        _abort_both(end, stream)
        up.cancel()
        await asyncio.wait([up])
        raise
    if result.error is None:
        end.close()
    return result
