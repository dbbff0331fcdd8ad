"""The hot path: bytes between a plain TCP socket and a yamux stream, both ways.

Used by the relay (public connection <-> stream to the registered side) and by
the forwarder (stream from the relay <-> local service). Everything about
copying lives here so it can be optimised in one place.

Both sides are spliced by callbacks, with no task per direction: the socket is
an ``asyncio.Protocol`` (``SocketEnd``) and the stream runs in protocol mode
(``Stream.set_protocol``), so a chunk received on one side is written to the
other in the same callback, without a task wake-up in between.

* Backpressure both ways: when the stream holds too much unsent data it calls
  ``pause_writing`` and we pause reading the socket; when the socket transport
  is over its high-water mark we pause reading the stream, which withholds
  window credit so the peer stops sending.
* Half-close both ways: EOF from the socket becomes FIN on the stream, FIN from
  the stream becomes ``shutdown(SHUT_WR)`` on the socket, and the other
  direction goes on until it ends too.
* An error on either side (reset, connection lost, session ended) aborts both:
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
from typing import cast

import yamux

_LINGER_RESET = struct.pack("ii", 1, 0)
EARLY_DATA_PAUSE = 64 * 1024
"""Stop reading a socket whose stream is not open yet once it holds this much (the same
limit as a stream's write buffer); at most one more read arrives after that."""
MAX_READ = 256 * 1024
"""The largest single read of either loop (asyncio's ``max_size``, uvloop's buffer)."""


@dataclass(slots=True, eq=False)
class PipeResult:
    """What one pipe carried, and why it stopped early (``error`` is None for a clean end)."""

    sent: int = 0
    """Bytes from the socket into the stream."""
    received: int = 0
    """Bytes from the stream out to the socket."""
    error: BaseException | None = None
    stalls: int = 0
    """Times the stream paused the socket: the peer's window was full (for metrics)."""


class SocketEnd(asyncio.Protocol):
    """The TCP side of a pipe.

    Reading starts paused: nothing is read from the socket until ``pipe()``
    splices it to a stream. uvloop reads anyway (``pause_reading`` in
    ``connection_made`` does not hold there), so a connection waiting for its
    stream to open pauses again once it holds ``EARLY_DATA_PAUSE`` bytes: it
    holds at most that plus one read, and a small request (the usual case)
    goes through without a pause/resume round.
    ``on_connected(end)`` runs from ``connection_made``.
    """

    __slots__ = (
        "_early",
        "_early_size",
        "_lost",
        "_on_connected",
        "_splice",
        "activity",
        "in_resume_writing",
        "transport",
    )

    def __init__(self, on_connected: Callable[[SocketEnd], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._splice: Splice | None = None
        self._lost = False
        self._early: list[bytes] = []
        """Bytes, then b"" for EOF, that came before the splice (uvloop may read while paused)."""
        self._early_size = 0
        self.in_resume_writing = False
        """Inside the transport's ``resume_writing`` callback (see there)."""
        self.activity = 0
        """Chunks moved either way since the idle timeout's last tick (it resets it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        if self._splice is not None:
            self._splice.socket_data(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= EARLY_DATA_PAUSE:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        if self._splice is not None:
            self._splice.socket_eof()
        else:
            self._early.append(b"")
        return True  # half-close: keep the transport open to send the rest of the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._early.clear()
        self._early_size = 0
        if self._splice is not None:
            self._splice.socket_lost(exc)

    def pause_writing(self) -> None:
        if self._splice is not None:
            self._splice.stream.pause_reading()

    def resume_writing(self) -> None:
        """Resume the stream; what it delivers here is written at once, its FIN later.

        The stream's FIN shuts down and may close this very transport. From inside
        its ``resume_writing`` (with an empty buffer) asyncio 3.11 then runs
        ``shutdown`` or ``_call_connection_lost`` a second time ("Exception in
        callback ..."), so ``Splice.eof_received`` defers itself while
        ``in_resume_writing``. Data is not deferred: that would cost a loop
        iteration per backpressure round on the bulk path.
        """
        if self._splice is not None:
            self.in_resume_writing = True
            try:
                self._splice.stream.resume_reading()
            finally:
                self.in_resume_writing = False

    @property
    def early_bytes(self) -> int:
        """Bytes read before the stream opened, not yet handed to it."""
        return self._early_size

    @property
    def closed(self) -> bool:
        return self._lost

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

    def _take_early(self) -> list[bytes]:
        early, self._early, self._early_size = self._early, [], 0
        return early


class Splice(asyncio.Protocol):
    """Protocol of the stream side, and the socket side's partner; owns the pipe's outcome."""

    __slots__ = (
        "_done",
        "_down_done",
        "_up_done",
        "end",
        "finished",
        "result",
        "socket_paused",
        "stream",
        "transport",
    )

    def __init__(
        self, end: SocketEnd, stream: yamux.Stream, done: asyncio.Future[None], result: PipeResult
    ) -> None:
        assert end.transport is not None
        self.end = end
        self.transport = end.transport
        self.stream = stream
        self.result = result
        self._done = done
        self.finished = False
        """Set once, by the clean end or the first failure (not by cancelling ``done``)."""
        self._up_done = False
        """The socket sent EOF and we passed it on as FIN."""
        self._down_done = False
        """The stream sent FIN and we passed it on as a socket shutdown."""
        self.socket_paused = False
        """We paused reading the socket because the stream holds too much unsent data."""

    # -------------------------------------------------- socket -> stream
    def socket_data(self, data: bytes) -> None:
        try:
            self.stream.write(data)
        except yamux.YamuxError as exc:
            self.fail(exc)
            return
        self.result.sent += len(data)

    def socket_eof(self) -> None:
        self.stream.write_eof()
        self._up_done = True
        self._finish_if_done()

    def socket_lost(self, exc: BaseException | None) -> None:
        if not self.finished:
            self.fail(exc or ConnectionAbortedError("connection closed before the stream ended"))

    # -------------------------------------- stream -> socket (stream protocol)
    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self.end.activity += 1
        self.transport.write(data)
        self.result.received += len(data)

    def eof_received(self) -> None:
        if self.end.in_resume_writing:
            asyncio.get_running_loop().call_soon(self.eof_received)
            return
        if self.finished:
            return
        if not self.transport.is_closing():
            try:
                self.transport.write_eof()
            except OSError as exc:
                self.fail(exc)
                return
        self._down_done = True
        self._finish_if_done()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.finished:
            self.fail(exc or yamux.StreamResetError("stream ended"))

    def pause_writing(self) -> None:
        self.result.stalls += 1
        self.socket_paused = True
        if not self._up_done and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.socket_paused = False
        if not self._up_done and not self.transport.is_closing():
            self.transport.resume_reading()

    # ----------------------------------------------------------- outcome
    def fail(self, exc: BaseException) -> None:
        """Abort both sides: RST on the stream and on the socket."""
        if self.finished:
            return
        self._finish()
        self.result.error = exc
        self.stream.reset()
        self.end.abort()

    def _finish_if_done(self) -> None:
        if self._up_done and self._down_done and not self.finished:
            self._finish()
            self.transport.close()

    def _finish(self) -> None:
        """The one way to the outcome. ``done`` may be cancelled already: the pipe's task was
        cancelled and is only told on the loop's next turn, while callbacks still arrive."""
        self.finished = True
        if not self._done.done():
            self._done.set_result(None)


def splice(
    end: SocketEnd, stream: yamux.Stream, done: asyncio.Future[None], result: PipeResult
) -> Splice:
    """Start copying both ways between a connected ``end`` and ``stream``, at once (from
    ``connection_made`` at the earliest): what the socket already sent goes to the stream,
    what the stream holds to the socket. ``done`` is set once both directions ended or one
    failed (``result`` says which); ``Splice.fail`` aborts both sides.
    """
    joined = Splice(end, stream, done, result)
    if end.closed:
        joined.fail(ConnectionAbortedError("connection closed before the stream opened"))
        return joined
    end._splice = joined
    stream.set_protocol(joined)
    early = end._take_early()
    for data in early:
        if joined.finished:
            break
        if data:
            joined.socket_data(data)
        else:
            joined.socket_eof()
    # Replaying may have filled the stream and paused the socket: only resume if not.
    if not joined.finished and not joined.socket_paused and not (early and early[-1] == b""):
        end.transport.resume_reading()  # type: ignore[union-attr]
    return joined


async def pipe(
    end: SocketEnd, stream: yamux.Stream, result: PipeResult | None = None
) -> PipeResult:
    """Copy both ways until both directions ended, then close the socket.

    Never raises for I/O errors: they abort both sides and are reported in the
    result. Cancelling the pipe aborts both sides too. Pass ``result`` to watch
    the byte counts while the pipe runs (metrics, status).
    """
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    joined = splice(end, stream, done, result if result is not None else PipeResult())
    return await wait_pipe(joined, done)


async def wait_pipe(joined: Splice, done: asyncio.Future[None]) -> PipeResult:
    """Wait for the ``done`` of ``splice``; cancelling aborts both sides."""
    try:
        await done
    except asyncio.CancelledError:
        joined.fail(ConnectionAbortedError("relaying cancelled"))
        raise
    return joined.result
