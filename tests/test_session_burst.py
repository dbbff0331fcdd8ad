"""A burst of opens beyond the accept backlog: the session stops reading instead of resetting.

Real sessions against a raw peer over loopback TCP, on asyncio's loop and on
uvloop (their ``pause_reading`` differ in when it takes effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import yamux
from yamux.const import Flag, FrameType
from yamux.frame import Frame, FrameDecoder, encode_header
from yamux_peers import RawPeer, make_certificate, raw_peer, until

WU, DATA, PING = FrameType.WINDOW_UPDATE, FrameType.DATA, FrameType.PING
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST
MAX_READ = 256 * 1024
"""The largest single read of either loop: what a held session may keep at most."""


BOTH_LOOPS = True
"""Every test runs on asyncio's own loop and on uvloop (``conftest``)."""


def is_reading(session: yamux.Session) -> bool:
    transport = session._protocol.transport
    assert transport is not None
    return bool(transport.is_reading())  # type: ignore[attr-defined]


async def echo(reader: yamux.Stream, writer: yamux.Stream) -> None:
    writer.write(await reader.read())
    writer.close()


class Collector:
    """Reads every frame the session sends: each stream's bytes, FINs, RSTs and pongs."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer
        self.data: dict[int, bytearray] = {}
        self.fins: set[int] = set()
        self.rsts: list[Frame] = []
        self.pongs: list[int] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        decoder = FrameDecoder(1 << 31)
        while chunk := await self.peer.reader.read(1 << 16):
            for frame in decoder.feed(chunk):
                if frame.type is DATA:
                    self.data.setdefault(frame.stream_id, bytearray()).extend(frame.body)
                elif frame.type is PING and frame.flags & ACK:
                    self.pongs.append(frame.length)
                elif frame.type is PING:
                    self.peer.send(PING, ACK, 0, frame.length)  # answer the keepalive
                if frame.flags & RST:
                    self.rsts.append(frame)
                if frame.flags & FIN:
                    self.fins.add(frame.stream_id)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def one_stream(stream_id: int, body: bytes) -> bytes:
    """SYN, one Data frame, FIN: a whole request, as a burst of a libp2p client sends it."""
    return (
        encode_header(WU, SYN, stream_id, 0)
        + encode_header(DATA, 0, stream_id, len(body))
        + body
        + encode_header(WU, FIN, stream_id, 0)
    )


async def burst_is_echoed_in_full(session: yamux.Session, peer: RawPeer, count: int) -> int:
    """The peer opens, writes and half-closes ``count`` streams in one write (600 B each),
    far beyond the backlog of 256; once the session holds its input, accept and echo
    every one. Checks that none is reset and each echo is whole; returns the most
    input the session held at any accept."""
    streams = {2 * n + 1: b"%05d" % n * 120 for n in range(count)}
    collector = Collector(peer)
    protocol = session._protocol
    peer.writer.write(b"".join(one_stream(sid, body) for sid, body in streams.items()))
    await until(lambda: protocol.core.input_held)
    assert len(protocol.backlog) == session.config.accept_backlog == 256
    await asyncio.sleep(0.1)  # nothing moves while nobody accepts
    assert protocol.core.input_held
    held_peak = 0
    handlers: list[asyncio.Task[None]] = []
    try:
        while len(handlers) < len(streams):
            held_peak = max(held_peak, protocol.core.held_bytes)
            stream = await asyncio.wait_for(session.accept_stream(), 5)
            handlers.append(asyncio.create_task(echo(stream, stream)))
        await asyncio.wait_for(asyncio.gather(*handlers), 10)
        await until(lambda: len(collector.fins) == len(streams))
    finally:
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await collector.stop()
    assert collector.rsts == []
    assert {sid: bytes(data) for sid, data in collector.data.items()} == streams
    assert not protocol.core.input_held
    assert not session.closed
    return held_peak


async def test_a_burst_of_opens_in_one_write_is_accepted_and_echoed_in_full() -> None:
    """1,000 streams in one write (~630 KB: several reads) against the default backlog:
    while it is full the session reads nothing and holds at most one read."""
    async with raw_peer(client=False) as (session, peer):
        reading = []

        def on_hold() -> bool:
            if session._protocol.core.input_held:
                reading.append(is_reading(session))
            return bool(reading)

        waiting = asyncio.create_task(until(on_hold))
        held_peak = await burst_is_echoed_in_full(session, peer, 1000)
        await waiting
        assert reading == [False]
        assert 0 < held_peak <= MAX_READ
        assert is_reading(session)


@contextlib.asynccontextmanager
async def tls_or_pipes(kind: str, tmp_path: Path) -> AsyncIterator[tuple[yamux.Session, RawPeer]]:
    """A server-role session over TLS (the relay's control port) or over a pair of pipes
    (reading on another transport than writing), and a raw peer at the other end."""
    loop = asyncio.get_running_loop()
    if kind == "tls":
        cert, key = make_certificate(tmp_path)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        sessions: asyncio.Queue[yamux.Session] = asyncio.Queue()

        async def on_session(session: yamux.Session) -> None:
            await sessions.put(session)
            await session.wait_closed()

        async with await yamux.start_server(on_session, "127.0.0.1", 0, ssl=server_ctx) as server:
            client_ctx = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx)
            session = await asyncio.wait_for(sessions.get(), 5)
            try:
                yield session, RawPeer(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
        return
    to_session, from_peer = os.pipe()
    to_peer, from_session = os.pipe()
    files = [open(fd, mode) for fd, mode in ((to_session, "rb"), (from_session, "wb"))]  # noqa: SIM115, ASYNC230 - the session closes them
    session = await yamux.connect_pipes(files[0], files[1], client=False)
    reader = asyncio.StreamReader()
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader),
        open(to_peer, "rb"),  # noqa: SIM115, ASYNC230
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        open(from_peer, "wb"),  # noqa: SIM115, ASYNC230
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    try:
        yield session, RawPeer(reader, writer)
    finally:
        session.close()
        await session.wait_closed()
        writer.close()
        read_transport.close()


@pytest.mark.parametrize("kind", ["tls", "pipes"])
async def test_a_burst_over_tls_or_pipes_is_held_and_echoed_in_full(
    kind: str, tmp_path: Path
) -> None:
    async with tls_or_pipes(kind, tmp_path) as (session, peer):
        held_peak = await burst_is_echoed_in_full(session, peer, 600)
    assert 0 < held_peak <= MAX_READ


async def test_the_keepalive_cannot_fail_while_held_and_works_again_after() -> None:
    """The peer opens more streams than the backlog and then answers nothing: its pongs
    would wait behind the input we hold, so the keepalive waits too; once an accept
    lets us read again, its silence counts and the keepalive ends the session."""
    config = yamux.Config(accept_backlog=2, keepalive_interval=0.05, keepalive_timeout=0.2)
    async with raw_peer(client=False, config=config) as (session, peer):
        for stream_id in (1, 3, 5):
            peer.send(WU, SYN, stream_id, 0)
        await until(lambda: session._protocol.core.input_held)
        await asyncio.sleep(1.0)  # five keepalive timeouts without a pong: still alive
        assert not session.closed
        pings = [await peer.expect(PING) for _ in range(3)]  # it went on pinging, unanswered
        assert all(p.flags == SYN for p in pings)
        loop = asyncio.get_running_loop()
        before_release = loop.time()
        accepted = await asyncio.wait_for(session.accept_stream(), 5)
        assert accepted.id == 1
        assert is_reading(session)
        await asyncio.wait_for(session.wait_closed(), 5)
        assert isinstance(session.close_reason, yamux.KeepaliveTimeoutError)
        assert 0.2 <= loop.time() - before_release < 2.0  # its timeout began at the release


async def test_a_connection_that_dies_while_held_ends_the_session() -> None:
    """Reading stopped, so only a write can tell: the keepalive's next ping fails."""
    config = yamux.Config(accept_backlog=1, keepalive_interval=0.05, keepalive_timeout=0.2)
    async with raw_peer(client=False, config=config) as (session, peer):
        peer.send(WU, SYN, 1, 0)
        peer.send(WU, SYN, 3, 0)
        await until(lambda: session._protocol.core.input_held)
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()  # RST
        await asyncio.wait_for(session.wait_closed(), 5)
        assert "connection lost" in str(session.close_reason)


async def test_our_go_away_refuses_the_held_opens_and_reading_goes_on() -> None:
    """A server going away accepts no more: what waited behind the held SYN must not stall."""
    config = yamux.Config(accept_backlog=1, enable_keepalive=False)
    async with raw_peer(client=False, config=config) as (session, peer):
        peer.send(WU, SYN, 1, 0)
        peer.send(WU, SYN, 3, 0)
        peer.send(PING, SYN, 0, 5)
        await until(lambda: session._protocol.core.input_held)
        session.go_away()
        frames = [await peer.next_frame() for _ in range(3)]
        assert frames == [
            Frame(FrameType.GO_AWAY, 0, 0, 0),
            Frame(WU, RST, 3, 0),
            Frame(PING, ACK, 0, 5),
        ]
        assert is_reading(session)
        assert (await asyncio.wait_for(session.accept_stream(), 5)).id == 1


async def test_a_served_session_takes_a_burst_of_opens_in_full() -> None:
    """With ``serve``, each open is accepted from the read that brought it: a read with
    more opens than the backlog holds is resumed at once, and every stream is echoed."""
    async with raw_peer(client=False) as (session, peer):
        streams = {2 * n + 1: b"%05d" % n * 120 for n in range(1000)}
        collector = Collector(peer)
        serving = asyncio.create_task(session.serve(echo))
        try:
            peer.writer.write(b"".join(one_stream(sid, body) for sid, body in streams.items()))
            await until(lambda: len(collector.fins) == len(streams))
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await collector.stop()
        assert collector.rsts == []
        assert {sid: bytes(data) for sid, data in collector.data.items()} == streams
        assert not session._protocol.core.input_held
        assert is_reading(session)
        assert not session.closed
