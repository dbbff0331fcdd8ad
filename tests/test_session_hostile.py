"""A real Session against a hostile raw peer over loopback TCP: everything it can fill is bounded.

Unit-level checks for issue #8's core items (the relay-level abuse suite with
RSS measurements lives elsewhere); each attack is real frames on a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest

import yamux
from yamux.const import Flag, FrameType
from yamux.frame import Frame, FrameDecoder, encode_header
from yamux_peers import raw_peer, until

WU = FrameType.WINDOW_UPDATE
SYN, RST = Flag.SYN, Flag.RST


async def test_reset_streams_leave_the_accept_queue_and_it_never_exceeds_the_backlog() -> None:
    config = yamux.Config(accept_backlog=4, enable_keepalive=False)
    async with raw_peer(client=False, config=config) as (session, peer):
        for n in range(20_000):  # SYN|RST: opened and reset in one frame, needs no room
            peer.send(WU, SYN | RST, 2 * n + 1, 0)
        peer.send(WU, SYN, 40_001, 0)
        peer.send(WU, SYN, 40_003, 0)
        peer.send(WU, RST, 40_003, 0)  # reset before we accepted it
        for n in range(4):
            peer.send(WU, SYN, 40_005 + 2 * n, 0)
        for n in range(20_000):  # behind a full backlog: not even read until we accept
            peer.send(WU, SYN | RST, 50_001 + 2 * n, 0)
        await peer.writer.drain()
        protocol = session._protocol
        await until(lambda: protocol.core.input_held)  # 40_001 and 3 more fill the backlog
        assert len(protocol.backlog) == config.accept_backlog
        assert protocol.core.held_bytes <= 256 * 1024  # one read, whatever the peer sent
        accepted = [await asyncio.wait_for(session.accept_stream(), 5) for _ in range(5)]
        assert [s.id for s in accepted] == [40_001, 40_005, 40_007, 40_009, 40_011]
        assert len(protocol.backlog) == 0
        assert session.num_streams == 5
        ping = asyncio.create_task(session.ping())  # all of the flood was read by now
        async with asyncio.timeout(5):
            while (frame := await peer.next_frame()).type is not FrameType.PING:
                assert frame.flags != RST, frame  # no stream was refused
        peer.send(FrameType.PING, Flag.ACK, 0, frame.length)
        await asyncio.wait_for(ping, 5)
        assert session.num_streams == 5


async def test_ping_flood_from_a_peer_that_never_reads_is_cut_with_a_clear_reason() -> None:
    """A peer pings as fast as it can and reads nothing: the pongs it owes stay bounded."""
    sessions: asyncio.Queue[yamux.Session] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        await sessions.put(session)
        await session.wait_closed()

    config = yamux.Config(enable_keepalive=False, connection_write_timeout=60)
    async with await yamux.start_server(on_session, "127.0.0.1", 0, config=config) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read it anyway
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        _, writer = await asyncio.open_connection(sock=sock, limit=4096)
        session = await asyncio.wait_for(sessions.get(), 5)
        pings = b"".join(encode_header(FrameType.PING, SYN, 0, n) for n in range(5461))
        sent = 0
        peak = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(20):
                while not session.closed and sent < 256 * 1024 * 1024:
                    writer.write(pings)
                    await writer.drain()
                    sent += len(pings)
                    peak = max(peak, session.write_buffer_size)
        await asyncio.wait_for(session.wait_closed(), 20)
        writer.close()
        assert isinstance(session.close_reason, yamux.ControlQueueFullError)
        assert "not reading" in str(session.close_reason)
        assert peak < 1024 * 1024, peak
        assert sent < 64 * 1024 * 1024, sent


async def test_100k_bad_frames_write_under_100_log_lines_with_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused SYNs, violations, stray pongs and repeated Go Away: the log stays short."""
    config = yamux.Config(max_streams=1, enable_keepalive=False)
    with caplog.at_level(logging.DEBUG, "yamux"):
        async with raw_peer(client=False, config=config) as (session, peer):
            pong = asyncio.create_task(read_until_pong(peer.reader, 424242))
            peer.send(WU, SYN, 1, 0)  # the one stream allowed: every later SYN is refused
            frames = []
            for n in range(25_000):
                frames.append(encode_header(WU, SYN, 3 + 2 * n, 0))  # refused
                frames.append(encode_header(FrameType.PING, Flag.ACK, 0, n))  # nobody pinged
                frames.append(encode_header(FrameType.GO_AWAY, 0, 0, 0))
                frames.append(encode_header(FrameType.DATA, 0, 100_001 + 2 * n, 1) + b"x")
            peer.writer.write(b"".join(frames))
            await peer.writer.drain()
            peer.send(FrameType.PING, SYN, 0, 424242)  # answered once all the above is read
            await asyncio.wait_for(pong, 30)
            assert not session.closed
            assert session._protocol.core.discarded_frames >= 50_000
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("yamux")]
    assert len(lines) < 100, lines[:20]
    summary = [line for line in lines if "suppressed log messages" in line]
    assert summary, lines
    assert "x stream-refused" in summary[0]


async def read_until_pong(reader: asyncio.StreamReader, opaque: int) -> None:
    """Read (the peer must read our RSTs, or we rightly cut it off) until our pong shows."""
    decoder = FrameDecoder(1 << 31)
    while chunk := await reader.read(1 << 16):
        for frame in decoder.feed(chunk):
            if frame.type is FrameType.PING and frame.flags & Flag.ACK and frame.length == opaque:
                return
    raise EOFError("session closed before answering the ping")


# ------------------------- issue 13 fix 3: streams a peer abandons after Go Away end in time
@pytest.mark.parametrize("who_goes_away", ["peer", "we"])
async def test_streams_the_peer_abandons_after_go_away_are_reset_in_bounded_time(
    who_goes_away: str,
) -> None:
    """A libp2p peer drops its streams on Go Away without FIN or RST and keeps the socket."""
    config = yamux.Config(enable_keepalive=False, go_away_timeout=0.3)
    async with raw_peer(client=False, config=config) as (session, peer):
        peer.send(WU, SYN, 1, 0)
        peer.send(WU, SYN, 3, 0)
        abandoned = await asyncio.wait_for(session.accept_stream(), 5)
        active = await asyncio.wait_for(session.accept_stream(), 5)
        if who_goes_away == "peer":
            peer.send(FrameType.GO_AWAY, 0, 0, 0)
            await asyncio.wait_for(session.wait_go_away(), 5)
        else:
            session.go_away()
        loop = asyncio.get_running_loop()
        start = loop.time()
        reading = asyncio.ensure_future(abandoned.read())
        while not reading.done() and loop.time() - start < 3:
            peer.send(FrameType.DATA, 0, 3, 4, b"live")  # the other stream goes on
            await asyncio.sleep(0.05)
        with pytest.raises(yamux.StreamResetError, match="go away"):
            await reading
        assert 0.3 <= loop.time() - start < 1.5
        frames = [await peer.next_frame() for _ in range(2)]
        while frames[-1].flags != RST:  # after the ACKs and maybe our Go Away
            frames.append(await peer.next_frame())
        assert frames[-1] == Frame(WU, RST, 1, 0)
        assert not active.at_eof()
        assert active.exception() is None
        assert (await active.read(4)) == b"live"
        assert session.num_streams == 1


async def test_a_session_left_without_streams_after_go_away_closes() -> None:
    config = yamux.Config(enable_keepalive=False, go_away_timeout=0.3)
    async with raw_peer(client=False, config=config) as (session, peer):
        peer.send(WU, SYN, 1, 0)
        stream = await asyncio.wait_for(session.accept_stream(), 5)
        session.go_away()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(yamux.StreamResetError, match="go away"):
            await asyncio.wait_for(stream.read(), 5)
        await asyncio.wait_for(session.wait_closed(), 5)
        assert 0.6 <= loop.time() - start < 2.0
        assert "no streams for 0.3 s after go away" in str(session.close_reason)


async def test_a_session_with_streams_coming_and_going_after_go_away_stays() -> None:
    config = yamux.Config(enable_keepalive=False, go_away_timeout=0.2)
    async with raw_peer(client=True, config=config) as (session, peer):
        peer.send(FrameType.GO_AWAY, 0, 0, 0)
        await asyncio.wait_for(session.wait_go_away(), 5)
        for n in range(10):  # the Go Away sender may still open streams (hashicorp)
            peer.send(WU, SYN, 2 + 2 * n, 0)
            stream = await asyncio.wait_for(session.accept_stream(), 5)
            peer.send(WU, RST, stream.id, 0)
            await asyncio.sleep(0.1)
        assert not session.closed
