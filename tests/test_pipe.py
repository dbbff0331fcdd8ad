"""relay.pipe in one process: a real TCP socket spliced to a yamux stream over a real socket pair.

These drive the pipe's callbacks into the exact orders that once went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import yamux
from relay.pipe import EARLY_DATA_PAUSE, MAX_READ, PipeResult, SocketEnd, pipe

BOTH_LOOPS = True
"""Every test runs on asyncio's own loop and on uvloop (``conftest``)."""


class CountingEnd(SocketEnd):
    """A SocketEnd that records every connection_lost call; ``connected(self)`` runs once it
    has its transport."""

    def __init__(self, connected: Callable[[CountingEnd], None]) -> None:
        super().__init__()
        self.connected = connected
        self.lost_calls: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_calls.append(exc)
        super().connection_lost(exc)


@dataclass
class Rig:
    """A public TCP client, the relay's SocketEnd for it, and a yamux session pair."""

    client: socket.socket
    end: CountingEnd
    relay_session: yamux.Session
    peer_session: yamux.Session
    errors: list[dict[str, Any]]
    listener: asyncio.Server


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    ends: asyncio.Queue[CountingEnd] = asyncio.Queue()
    listener = await loop.create_server(lambda: CountingEnd(ends.put_nowait), "127.0.0.1", 0)
    left, right = socket.socketpair()
    relay_transport, _ = await loop.create_connection(asyncio.Protocol, sock=left)
    relay_session = yamux.Session.attach(relay_transport, client=True)
    peer_transport, _ = await loop.create_connection(asyncio.Protocol, sock=right)
    peer_session = yamux.Session.attach(peer_transport, client=False)
    client = socket.create_connection(listener.sockets[0].getsockname()[:2])
    client.setblocking(False)
    end = await ends.get()
    try:
        yield Rig(client, end, relay_session, peer_session, errors, listener)
    finally:
        end.abort()
        client.close()
        relay_session.close()
        await relay_session.wait_closed()
        peer_session.close()
        await peer_session.wait_closed()
        listener.close()
        await listener.wait_closed()
        loop.set_exception_handler(None)


async def test_close_from_inside_resume_writing_is_deferred() -> None:
    """Issue #13 fix 4: the stream's FIN reaches the socket from inside its resume_writing.

    The client sent EOF long ago and stops reading; the registered side sends until
    the public socket's transport pauses (so the stream pauses too), then only FIN.
    When the client reads everything, the transport calls resume_writing with an
    empty buffer, the stream delivers its EOF, and the pipe is done: closing the
    transport right there made asyncio 3.11 run ``_call_connection_lost`` twice
    ("Exception in callback ..."), and our connection_lost twice.
    """
    loop = asyncio.get_running_loop()
    async with rig() as r:
        r.client.shutdown(socket.SHUT_WR)
        relay_stream = await r.relay_session.open_stream()
        piping = loop.create_task(pipe(r.end, relay_stream))
        peer_stream = await r.peer_session.accept_stream()
        assert await asyncio.wait_for(peer_stream.read(), 5) == b""  # the client's EOF
        chunk = b"x" * (64 * 1024)  # one Data frame: delivered to the socket whole
        sent = 0
        async with asyncio.timeout(20):
            while relay_stream.is_reading():
                peer_stream.write(chunk)
                await peer_stream.drain()
                sent += len(chunk)
                while relay_stream.is_reading() and piping_received(r) < sent:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        assert not r.end.transport.is_closing()  # type: ignore[union-attr]
        peer_stream.write_eof()
        await asyncio.sleep(0.05)  # the FIN waits in the paused stream, nothing else does
        received = 0
        async with asyncio.timeout(20):
            while data := await loop.sock_recv(r.client, 1 << 20):
                received += len(data)
        result: PipeResult = await asyncio.wait_for(piping, 5)
        await asyncio.sleep(0.05)  # let any scheduled callback run
        assert received == sent
        assert result.error is None
        assert result.received == sent
        assert r.end.lost_calls == [None]
        assert r.errors == []


def piping_received(r: Rig) -> int:
    """Bytes the pipe handed to the public socket so far."""
    splice = r.end._splice
    return 0 if splice is None else splice.result.received


async def test_early_data_is_bounded_while_the_stream_is_not_open() -> None:
    """A client that sends before its stream opens fills 64 KiB and one read, then waits.

    uvloop reads a socket even when reading is paused in connection_made; the
    pipe must pause again and keep what it holds bounded.
    """
    async with rig() as r:
        r.client.setblocking(True)
        r.client.settimeout(0.01)
        pushed = 0
        with contextlib.suppress(TimeoutError, BlockingIOError):
            for _ in range(20000):
                pushed += r.client.send(b"y" * 65536)
        await asyncio.sleep(0.2)
        with contextlib.suppress(TimeoutError, BlockingIOError):
            for _ in range(20000):
                pushed += r.client.send(b"y" * 65536)
        await asyncio.sleep(0.2)
        assert pushed > 4 * (EARLY_DATA_PAUSE + MAX_READ)  # the kernel took more than we may hold
        assert r.end.early_bytes <= EARLY_DATA_PAUSE + MAX_READ
        # Once the stream opens, everything arrives, in order and complete.
        r.client.setblocking(False)
        r.client.shutdown(socket.SHUT_WR)
        relay_stream = await r.relay_session.open_stream()
        piping = asyncio.get_running_loop().create_task(pipe(r.end, relay_stream))
        peer_stream = await r.peer_session.accept_stream()
        got = await asyncio.wait_for(peer_stream.read(), 20)
        assert len(got) == pushed
        assert set(got) == {ord("y")}
        peer_stream.write_eof()
        result = await asyncio.wait_for(piping, 5)
        assert result.error is None
        assert result.sent == pushed
        assert r.errors == []


async def test_both_halves_ending_after_the_pipe_was_cancelled_finish_quietly() -> None:
    """A cancelled pipe task is only told on the loop's next turn; until then the socket's
    EOF and the stream's FIN can both arrive (a session ending under churn). The pipe's
    done future is already cancelled then: setting it raised InvalidStateError inside the
    session's data_received, which ended the whole session with every stream on it."""
    loop = asyncio.get_running_loop()
    async with rig() as r:
        relay_stream = await r.relay_session.open_stream()
        piping = loop.create_task(pipe(r.end, relay_stream))
        peer_stream = await r.peer_session.accept_stream()
        relay_stream.pause_reading()  # the registered side's FIN waits in the stream
        peer_stream.write_eof()
        async with asyncio.timeout(5):
            while not relay_stream.at_eof():  # noqa: ASYNC110 - the FIN arrived, undelivered
                await asyncio.sleep(0.001)
        piping.cancel()
        r.end.eof_received()  # the public client's EOF ...
        relay_stream.resume_reading()  # ... and the FIN, in the same turn
        with pytest.raises(asyncio.CancelledError):
            await piping
        assert r.errors == []
        assert not r.relay_session.closed
