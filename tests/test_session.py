"""Session behaviour over real loopback TCP: the checklist of ../shared/yamux-notes.md."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket

import pytest
import uvloop

import yamux
from yamux.const import Flag, FrameType, GoAwayCode
from yamux.frame import Frame
from yamux_peers import raw_peer, session_pair

KIB = 1024
MIB = 1024 * KIB


async def echo_handler(reader: yamux.Stream, writer: yamux.Stream) -> None:
    while data := await reader.read(64 * KIB):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


# ----------------------------------------------------------------- stream ids
async def test_first_client_stream_is_1_and_first_server_stream_is_2() -> None:
    async with session_pair() as (client, server):
        first, second = await client.open_stream(), await client.open_stream()
        from_server = await server.open_stream()
        assert (first.id, second.id, from_server.id) == (1, 3, 2)
        accepted = await client.accept_stream()
        assert accepted.id == 2


# ----------------------------------------------------------------------- ping
async def test_ping_round_trip_both_ways() -> None:
    async with session_pair() as (client, server):
        assert 0 < await client.ping() < 1
        assert 0 < await server.ping() < 1


def test_ping_round_trips_are_not_rounded_to_the_loops_clock_on_uvloop() -> None:
    """uvloop's loop.time() counts milliseconds; a loopback round trip must not read as 0."""

    async def pings() -> list[float]:
        async with session_pair() as (client, _server):
            rtts = [await client.ping() for _ in range(5)]
            assert client.last_rtt == rtts[-1]
            return rtts

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rtts = runner.run(pings())
    assert all(0 < rtt < 0.5 for rtt in rtts), rtts


async def test_ping_times_out_when_peer_stalls_and_late_pong_is_ignored() -> None:
    async with raw_peer() as (session, peer):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await session.ping()
        ping = await peer.expect(FrameType.PING)
        assert ping.flags & Flag.SYN
        peer.send(FrameType.PING, Flag.ACK, 0, ping.length)  # the late pong
        peer.send(FrameType.PING, Flag.ACK, 0, 987654)  # a pong nobody asked for
        task = asyncio.create_task(session.ping())
        second = await peer.expect(FrameType.PING)
        peer.send(FrameType.PING, Flag.ACK, 0, second.length)
        assert await asyncio.wait_for(task, 2) >= 0
        assert not session.closed


async def test_incoming_ping_is_answered_on_a_congested_session() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        await server.accept_stream()  # never read: the window fills up
        stream.write(os.urandom(4 * MIB))
        await asyncio.sleep(0.05)
        assert client._protocol.core.send_credit(stream.id) == 0
        assert client._protocol.core.pending_bytes(stream.id) > 0
        assert await asyncio.wait_for(server.ping(), 2) < 2
        assert await asyncio.wait_for(client.ping(), 2) < 2


# -------------------------------------------------------- backlog and opening
async def test_streams_closed_before_their_ack_still_free_the_backlog() -> None:
    config = yamux.Config(accept_backlog=8)
    async with session_pair(config, config) as (client, server):
        for _ in range(8):
            (await client.open_stream()).close()
        blocked = asyncio.create_task(client.open_stream())
        await asyncio.sleep(0.05)
        assert not blocked.done()
        for _ in range(8):
            (await server.accept_stream()).close()
        ninth = await asyncio.wait_for(blocked, 5)
        assert ninth.id == 17


async def test_resetting_an_unacknowledged_stream_returns_its_backlog_credit() -> None:
    async with raw_peer(config=yamux.Config(accept_backlog=4)) as (session, peer):
        streams = [await session.open_stream() for _ in range(4)]
        blocked = asyncio.create_task(session.open_stream())
        await asyncio.sleep(0.05)
        assert not blocked.done()
        streams[0].reset()
        fifth = await asyncio.wait_for(blocked, 2)
        assert fifth.id == 9
        frames = [await peer.expect(FrameType.WINDOW_UPDATE) for _ in range(6)]
        assert [(f.stream_id, f.flags) for f in frames] == [
            (1, Flag.SYN),
            (3, Flag.SYN),
            (5, Flag.SYN),
            (7, Flag.SYN),
            (1, Flag.RST),
            (9, Flag.SYN),
        ]


async def test_finishing_an_unacknowledged_stream_wakes_a_blocked_open() -> None:
    async with raw_peer(config=yamux.Config(accept_backlog=1)) as (session, peer):
        stream = await session.open_stream()
        blocked = asyncio.create_task(session.open_stream())
        peer.send(FrameType.WINDOW_UPDATE, Flag.FIN, stream.id, 0)  # FIN, never an ACK
        assert await asyncio.wait_for(stream.read(), 2) == b""
        assert not blocked.done()
        stream.close()  # our FIN goes out after the peer's: the stream is finished
        assert (await asyncio.wait_for(blocked, 2)).id == 3


async def test_open_stream_nowait_sends_its_syn_at_once_and_declines_a_full_backlog() -> None:
    async with raw_peer(config=yamux.Config(accept_backlog=2)) as (session, peer):
        first = session.open_stream_nowait()
        second = session.open_stream_nowait()
        assert first is not None
        assert second is not None
        assert session.open_would_wait()
        assert session.open_stream_nowait() is None  # two opens await their ACK
        frames = [await peer.expect(FrameType.WINDOW_UPDATE) for _ in range(2)]
        assert [(f.stream_id, f.flags) for f in frames] == [(1, Flag.SYN), (3, Flag.SYN)]
        peer.send(FrameType.WINDOW_UPDATE, Flag.ACK, 1, 0)
        await asyncio.sleep(0.05)
        third = session.open_stream_nowait()
        assert third is not None
        assert third.id == 5
        session.close()
        await session.wait_closed()
        with pytest.raises(yamux.SessionClosedError):
            session.open_stream_nowait()


async def test_open_stream_nowait_sends_its_first_data_in_the_syns_write() -> None:
    async with raw_peer() as (session, peer):
        assert not session.open_would_wait()
        stream = session.open_stream_nowait(b"request")
        assert stream is not None
        syn = await peer.next_frame()
        assert peer.frames  # the Data frame came in the same read
        data = await peer.next_frame()
        assert (syn.type, syn.flags, syn.stream_id) == (FrameType.WINDOW_UPDATE, Flag.SYN, 1)
        assert (data.type, data.stream_id, data.body) == (FrameType.DATA, 1, b"request")
        stream.write(b" more")
        assert (await peer.expect(FrameType.DATA)).body == b" more"


async def test_open_blocked_by_backlog_fails_when_session_closes() -> None:
    async with raw_peer(config=yamux.Config(accept_backlog=2)) as (session, _peer):
        await session.open_stream()
        await session.open_stream()
        blocked = asyncio.create_task(session.open_stream())
        await asyncio.sleep(0.05)
        assert not blocked.done()
        session.close()
        await session.wait_closed()
        with pytest.raises(yamux.SessionClosedError):
            await asyncio.wait_for(blocked, 2)


async def test_unacknowledged_open_times_out_and_closes_the_session() -> None:
    config = yamux.Config(stream_open_timeout=0.2)
    async with raw_peer(config=config) as (session, peer):
        await session.open_stream()
        await asyncio.wait_for(session.wait_closed(), 3)
        assert isinstance(session.close_reason, yamux.StreamOpenTimeoutError)
        goaway = await peer.expect(FrameType.GO_AWAY)
        assert goaway.length == GoAwayCode.INTERNAL_ERROR


async def test_open_storm_of_five_times_the_backlog_has_no_resets() -> None:
    config = yamux.Config(accept_backlog=64)
    async with session_pair(config, config) as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))

        async def one(i: int) -> bytes:
            stream = await client.open_stream()
            stream.write(b"%d" % i)
            stream.write_eof()
            return await stream.read()

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(320))), 20)
        assert results == [b"%d" % i for i in range(320)]
        server_task.cancel()


async def test_backlog_full_holds_extra_inbound_streams_until_accepted() -> None:
    config = yamux.Config(accept_backlog=2)
    async with raw_peer(client=False, config=config) as (session, peer):
        for stream_id in (1, 3, 5):
            peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0)
        peer.send(FrameType.PING, Flag.SYN, 0, 7)
        accepted = [await asyncio.wait_for(session.accept_stream(), 5) for _ in range(3)]
        assert [s.id for s in accepted] == [1, 3, 5]
        frames = [await peer.next_frame() for _ in range(4)]
        # The ping behind SYN 5 is read once the first accept made room: no RST anywhere.
        assert frames == [
            Frame(FrameType.WINDOW_UPDATE, Flag.ACK, 1, 0),
            Frame(FrameType.PING, Flag.ACK, 0, 7),
            Frame(FrameType.WINDOW_UPDATE, Flag.ACK, 3, 0),
            Frame(FrameType.WINDOW_UPDATE, Flag.ACK, 5, 0),
        ]


# -------------------------------------------------------------------- go away
async def test_go_away_makes_the_peers_next_open_fail_and_existing_streams_go_on() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        accepted = await server.accept_stream()
        server.go_away()
        await asyncio.sleep(0.05)
        with pytest.raises(yamux.NoNewStreamsError):
            await client.open_stream()
        stream.write(b"still here")
        assert await accepted.readexactly(10) == b"still here"


async def test_go_away_wakes_an_open_blocked_on_the_backlog_and_is_awaitable() -> None:
    async with raw_peer(config=yamux.Config(accept_backlog=1)) as (session, peer):
        await session.open_stream()
        blocked = asyncio.create_task(session.open_stream())
        waiting = asyncio.create_task(session.wait_go_away())
        await asyncio.sleep(0.05)
        assert not blocked.done()
        assert not waiting.done()
        peer.send(FrameType.GO_AWAY, 0, 0, GoAwayCode.NORMAL)
        with pytest.raises(yamux.NoNewStreamsError):
            await asyncio.wait_for(blocked, 2)
        await asyncio.wait_for(waiting, 2)
        ping = asyncio.create_task(session.ping())  # pings and accepts still work after go away
        request = await peer.expect(FrameType.PING)
        peer.send(FrameType.PING, Flag.ACK, 0, request.length)
        assert await asyncio.wait_for(ping, 2) >= 0
        peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, 2, 0)
        assert (await asyncio.wait_for(session.accept_stream(), 2)).id == 2


async def test_wait_go_away_raises_if_the_session_ends_first() -> None:
    async with raw_peer() as (session, peer):
        waiting = asyncio.create_task(session.wait_go_away())
        peer.writer.close()  # EOF without a Go Away
        with pytest.raises(yamux.SessionClosedError):
            await asyncio.wait_for(waiting, 2)


async def test_go_away_with_error_code_ends_the_peers_session() -> None:
    async with session_pair() as (client, server):
        server.go_away(GoAwayCode.INTERNAL_ERROR)
        await asyncio.wait_for(client.wait_closed(), 2)
        assert isinstance(client.close_reason, yamux.PeerTerminatedError)
        assert client.close_reason.code == GoAwayCode.INTERNAL_ERROR


# ------------------------------------------------------------------ close
async def test_accept_and_open_after_session_close_fail_cleanly() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        client.close()
        await client.wait_closed()
        with pytest.raises(yamux.SessionClosedError):
            await client.open_stream()
        with pytest.raises(yamux.SessionClosedError):
            await client.accept_stream()
        with pytest.raises(yamux.SessionClosedError):
            stream.write(b"x")
        await asyncio.wait_for(server.wait_closed(), 2)
        with pytest.raises(yamux.SessionClosedError):
            await server.accept_stream()
        assert [s async for s in server] == []


async def test_session_close_wakes_blocked_readers_and_accepters() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        reader = asyncio.create_task(stream.read(10))
        accepter = asyncio.create_task(client.accept_stream())
        await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()
        with pytest.raises(yamux.SessionClosedError):
            await asyncio.wait_for(reader, 2)
        with pytest.raises(yamux.SessionClosedError):
            await asyncio.wait_for(accepter, 2)
        assert client.close_reason is not None


async def test_stream_closed_right_before_session_close_still_delivers_its_window() -> None:
    payload = os.urandom(256 * KIB)
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(payload)
        stream.close()
        client.close()
        await client.wait_closed()
        accepted = await server.accept_stream()
        assert await accepted.read() == payload


async def test_close_timeout_resets_a_half_closed_stream_whose_peer_never_closes() -> None:
    async with session_pair(yamux.Config(stream_close_timeout=0.2)) as (client, server):
        stream = await client.open_stream()
        stream.write(b"bye")
        stream.close()
        accepted = await server.accept_stream()
        assert await accepted.read() == b"bye"
        assert client.num_streams == 1
        await asyncio.sleep(0.4)
        assert client.num_streams == 0
        assert server.num_streams == 0
        with pytest.raises(yamux.StreamResetError):
            accepted.write(b"too late")


async def test_stream_counts_return_to_zero_after_many_small_writes() -> None:
    async with session_pair() as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))

        async def one() -> None:
            stream = await client.open_stream()
            messages = [os.urandom(random.randint(1, 100)) for _ in range(100)]
            for message in messages:
                stream.write(message)
            stream.write_eof()
            assert await stream.read() == b"".join(messages)

        await asyncio.gather(*(one() for _ in range(20)))
        await asyncio.sleep(0.05)
        assert client.num_streams == 0
        assert server.num_streams == 0
        server_task.cancel()


# -------------------------------------------------------------- half-close
async def test_half_close_both_ways() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"request")
        stream.write_eof()
        accepted = await server.accept_stream()
        assert await accepted.read() == b"request"
        assert accepted.at_eof()
        accepted.write(b"response after the peer's FIN")
        with pytest.raises(yamux.StreamClosedError):
            stream.write(b"no more")
        assert await stream.readexactly(8) == b"response"
        accepted.write_eof()
        assert await stream.read() == b" after the peer's FIN"
        assert await stream.read() == b""
        await asyncio.sleep(0.02)
        assert client.num_streams == server.num_streams == 0


# --------------------------------------------------------------------- reset
async def test_reset_surfaces_as_a_distinct_error_on_both_sides() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"x")
        accepted = await server.accept_stream()
        blocked_read = asyncio.create_task(accepted.read(100))
        assert await blocked_read == b"x"
        blocked_read = asyncio.create_task(accepted.read(100))
        await asyncio.sleep(0.02)
        stream.reset()
        with pytest.raises(yamux.StreamResetError):
            await asyncio.wait_for(blocked_read, 2)
        with pytest.raises(yamux.StreamResetError):
            accepted.write(b"y")
        with pytest.raises(yamux.StreamResetError):
            stream.write(b"y")
        assert isinstance(yamux.StreamResetError("x"), ConnectionResetError)


async def test_reset_while_the_peer_is_blocked_writing() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"hello")
        accepted = await server.accept_stream()
        await accepted.readexactly(5)
        accepted.write(os.urandom(2 * MIB))  # the client never reads: drain blocks
        drain = asyncio.create_task(accepted.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()
        stream.reset()
        with pytest.raises(yamux.StreamResetError):
            await asyncio.wait_for(drain, 2)


# ----------------------------------------------------------------- deadlines
async def test_read_deadline_set_on_an_already_blocked_read() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        read = asyncio.create_task(stream.read(10))
        await asyncio.sleep(0.02)
        stream.set_read_deadline(asyncio.get_running_loop().time() + 0.1)
        with pytest.raises(yamux.StreamTimeoutError):
            await asyncio.wait_for(read, 2)
        stream.set_read_deadline(None)
        stream.write(b"ping")
        accepted = await server.accept_stream()
        accepted.write(await accepted.readexactly(4))
        assert await stream.readexactly(4) == b"ping"


async def test_write_deadline_set_on_an_already_blocked_drain() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(os.urandom(2 * MIB))
        drain = asyncio.create_task(stream.drain())
        await asyncio.sleep(0.02)
        assert not drain.done()
        stream.set_write_deadline(asyncio.get_running_loop().time() + 0.1)
        with pytest.raises(yamux.StreamTimeoutError):
            await asyncio.wait_for(drain, 2)
        assert isinstance(yamux.StreamTimeoutError("x"), TimeoutError)
        assert server.num_streams == 1


# ----------------------------------------------------------------- keepalive
async def test_keepalive_pings_flow_and_keep_the_session_alive() -> None:
    config = yamux.Config(keepalive_interval=0.05, keepalive_timeout=1)
    async with raw_peer(config=config) as (session, peer):
        for _ in range(3):
            ping = await peer.expect(FrameType.PING, timeout=1)
            assert ping.flags & Flag.SYN
            peer.send(FrameType.PING, Flag.ACK, 0, ping.length)
        assert not session.closed


async def test_keepalive_timeout_closes_the_session() -> None:
    config = yamux.Config(keepalive_interval=0.05, keepalive_timeout=0.1)
    async with raw_peer(config=config) as (session, _peer):
        await asyncio.wait_for(session.wait_closed(), 2)
        assert isinstance(session.close_reason, yamux.KeepaliveTimeoutError)
        assert "keepalive failed" in str(session.close_reason)


async def test_keepalive_on_both_sides_survives_bulk_transfer() -> None:
    config = yamux.Config(keepalive_interval=0.02, keepalive_timeout=0.5)
    async with session_pair(config, config) as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))
        stream = await client.open_stream()
        payload = os.urandom(64 * MIB)

        async def send() -> None:
            for i in range(0, len(payload), MIB):
                stream.write(payload[i : i + MIB])
                await stream.drain()
            stream.write_eof()

        sender = asyncio.create_task(send())
        assert hashlib.sha256(await stream.read()).digest() == hashlib.sha256(payload).digest()
        await sender
        assert not client.closed
        assert not server.closed
        server_task.cancel()


# --------------------------------------------------------------- write stall
async def test_blocked_connection_write_times_out() -> None:
    config = yamux.Config(connection_write_timeout=0.3, enable_keepalive=False)
    async with raw_peer(config=config) as (session, peer):
        stream = await session.open_stream()
        syn = await peer.expect(FrameType.WINDOW_UPDATE)
        # ACK with a huge window, then never read again: the socket buffers fill up.
        peer.send(FrameType.WINDOW_UPDATE, Flag.ACK, syn.stream_id, 1 << 30)
        await asyncio.sleep(0.05)
        reader = asyncio.create_task(stream.read(1))

        async def write_until_it_fails() -> None:
            for _ in range(512):
                stream.write(bytes(MIB))
                await asyncio.wait_for(stream.drain(), 5)

        with pytest.raises(yamux.SessionClosedError):
            await write_until_it_fails()
        await asyncio.wait_for(session.wait_closed(), 5)
        assert isinstance(session.close_reason, yamux.ConnectionWriteTimeoutError)
        with pytest.raises(yamux.SessionClosedError):
            await reader


# ------------------------------------------------------------------- windows
async def test_larger_window_granted_on_ack_lets_one_big_write_through_at_once() -> None:
    big = yamux.Config(max_stream_window_size=4 * MIB)
    async with session_pair(server_config=big) as (client, server):
        stream = await client.open_stream()
        stream.write(b"!")
        accepted = await server.accept_stream()
        assert await accepted.readexactly(1) == b"!"
        await asyncio.sleep(0.02)
        assert client._protocol.core.send_credit(stream.id) == 4 * MIB - 1
        payload = os.urandom(4 * MIB - 1)
        stream.write(payload)
        await asyncio.wait_for(stream.drain(), 2)  # no read on the other side needed
        assert await accepted.readexactly(len(payload)) == payload


# ---------------------------------------------------------- bad peer input
async def test_client_client_pairing_is_rejected_with_a_clear_error() -> None:
    accepted: asyncio.Queue[yamux.Session] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        await accepted.put(session)
        await session.wait_closed()

    server = await yamux.start_server(on_session, "127.0.0.1", 0, client=True)
    session = await yamux.connect("127.0.0.1", server.port, client=True)
    other = await accepted.get()
    await session.open_stream()
    await asyncio.wait_for(other.wait_closed(), 2)
    await asyncio.wait_for(session.wait_closed(), 2)
    assert isinstance(other.close_reason, yamux.ProtocolError)
    assert "same yamux role" in str(other.close_reason)
    assert isinstance(session.close_reason, yamux.PeerTerminatedError)
    assert session.close_reason.code == GoAwayCode.PROTOCOL_ERROR
    server.close()
    await server.wait_closed()


async def test_data_beyond_the_window_ends_the_session_with_go_away_1() -> None:
    async with raw_peer(client=False) as (session, peer):
        peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        accepted = await session.accept_stream()
        read = asyncio.create_task(accepted.read(10))
        peer.send(FrameType.DATA, 0, 1, 200 * KIB, bytes(200 * KIB))
        peer.send(FrameType.DATA, 0, 1, 100 * KIB, bytes(100 * KIB))
        goaway = await peer.expect(FrameType.GO_AWAY)
        assert goaway.length == GoAwayCode.PROTOCOL_ERROR
        assert await read == bytes(10)  # what arrived before the violation is kept
        assert await accepted.readexactly(200 * KIB - 10) == bytes(200 * KIB - 10)
        with pytest.raises(yamux.SessionClosedError, match="exceeds the receive window"):
            await accepted.read(10)
        assert isinstance(session.close_reason, yamux.ProtocolError)


async def test_oversized_data_frame_is_an_error_not_a_hang() -> None:
    async with raw_peer(client=False) as (session, peer):
        peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        peer.send(FrameType.DATA, 0, 1, 300 * KIB)  # header only: the body never comes
        goaway = await peer.expect(FrameType.GO_AWAY)
        assert goaway.length == GoAwayCode.PROTOCOL_ERROR
        assert "length=307200" in str(session.close_reason)


async def test_garbage_ends_the_session_but_delivers_what_came_before() -> None:
    async with raw_peer(client=False) as (session, peer):
        peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        peer.send(FrameType.DATA, Flag.FIN, 1, 5, b"hello")
        peer.writer.write(b"GET / HTTP/1.1\r\n\r\n")
        goaway = await peer.expect(FrameType.GO_AWAY)
        assert goaway.length == GoAwayCode.PROTOCOL_ERROR
        assert "version=71" in str(session.close_reason)
        accepted = await session.accept_stream() if session._protocol.backlog else None
        assert accepted is None  # the session ended; its streams are gone...
        assert session.closed


async def test_per_session_stream_limit() -> None:
    async with session_pair(server_config=yamux.Config(max_streams=2)) as (client, server):
        streams = [await client.open_stream() for _ in range(3)]
        for stream in streams:
            stream.write(b"x")
        with pytest.raises(yamux.StreamResetError):
            await asyncio.wait_for(streams[2].read(1), 2)
        assert server.num_streams == 2
    async with session_pair(client_config=yamux.Config(max_streams=1)) as (client, _server):
        await client.open_stream()
        with pytest.raises(yamux.TooManyStreamsError):
            await client.open_stream()


# -------------------------------------------------------------- bulk / many
async def test_50_streams_of_1000_messages() -> None:
    async with session_pair() as (client, server):
        digests: dict[int, bytes] = {}

        async def receiver(reader: yamux.Stream, writer: yamux.Stream) -> None:
            digests[reader.id] = hashlib.sha256(await reader.read()).digest()
            writer.close()

        server_task = asyncio.create_task(server.serve(receiver))

        async def sender() -> tuple[int, bytes]:
            stream = await client.open_stream()
            h = hashlib.sha256()
            for _ in range(1000):
                message = os.urandom(random.randint(1, 512))
                h.update(message)
                stream.write(message)
            await stream.drain()
            stream.write_eof()
            assert await stream.read() == b""
            return stream.id, h.digest()

        sent = dict(await asyncio.gather(*(sender() for _ in range(50))))
        assert sent == digests
        server_task.cancel()


async def test_50_streams_of_1000_ping_pong_round_trips() -> None:
    async with session_pair() as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))

        async def pinger() -> int:
            stream = await client.open_stream()
            for i in range(1000):
                stream.write(b"%08d" % i)
                assert await stream.readexactly(8) == b"%08d" % i
            stream.close()
            return 1000

        assert sum(await asyncio.gather(*(pinger() for _ in range(50)))) == 50_000
        server_task.cancel()


async def test_one_250_mib_write_arrives_intact_in_4_kib_reads() -> None:
    payload = os.urandom(250 * MIB)
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(payload)
        stream.write_eof()
        accepted = await server.accept_stream()
        h = hashlib.sha256()
        total = 0
        while chunk := await accepted.read(4 * KIB):
            assert len(chunk) <= 4 * KIB
            h.update(chunk)
            total += len(chunk)
        assert total == len(payload)
        assert h.digest() == hashlib.sha256(payload).digest()


async def echo_digest(client: yamux.Session, size: int, chunk: int = MIB) -> tuple[bytes, bytes]:
    """Send ``size`` random bytes through an echo stream; (sent digest, received digest)."""
    stream = await client.open_stream()
    sent = hashlib.sha256()
    block = os.urandom(chunk)

    async def send() -> None:
        left = size
        while left:
            piece = block[: min(left, chunk)]
            sent.update(piece)
            stream.write(piece)
            await stream.drain()
            left -= len(piece)
        stream.write_eof()

    sender = asyncio.create_task(send())
    received = hashlib.sha256()
    while data := await stream.read(256 * KIB):
        received.update(data)
    await sender
    return sent.digest(), received.digest()


async def test_100_parallel_streams_arrive_byte_identical() -> None:
    async with session_pair() as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))
        sizes = [random.randint(1, 2 * MIB) for _ in range(100)]
        results = await asyncio.gather(*(echo_digest(client, n, 64 * KIB) for n in sizes))
        assert all(sent == received for sent, received in results)
        server_task.cancel()


async def test_16_streams_in_parallel_bulk() -> None:
    async with session_pair() as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))
        results = await asyncio.gather(*(echo_digest(client, 128 * MIB) for _ in range(16)))
        assert all(sent == received for sent, received in results)
        server_task.cancel()


@pytest.mark.slow
async def test_1_gib_through_one_stream() -> None:
    async with session_pair() as (client, server):
        server_task = asyncio.create_task(server.serve(echo_handler))
        sent, received = await echo_digest(client, 1024 * MIB)
        assert sent == received
        server_task.cancel()


async def test_any_frame_from_the_peer_is_proof_of_life_for_the_keepalive() -> None:
    """A peer that never answers pings but keeps sending is busy, not dead."""
    config = yamux.Config(keepalive_interval=0.05, keepalive_timeout=0.2)
    async with raw_peer(config=config) as (session, peer):
        stream = await session.open_stream()
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 1.0:
            peer.send(FrameType.WINDOW_UPDATE, Flag.ACK, stream.id, 0)
            await asyncio.sleep(0.05)
        assert not session.closed
        await asyncio.wait_for(session.wait_closed(), 1)  # silent: dead within the timeout
        assert isinstance(session.close_reason, yamux.KeepaliveTimeoutError)


async def test_tcp_sessions_keep_the_kernels_unsent_queue_small() -> None:
    config = yamux.Config(tcp_notsent_lowat=96 * KIB)
    async with session_pair(config, yamux.Config(tcp_notsent_lowat=0)) as (client, server):
        for session, expected in ((client, 96 * KIB), (server, None)):
            sock = session.get_extra_info("socket")
            value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
            if expected is None:
                assert value == 0  # not set: the system-wide default (unbounded) applies
            else:
                assert value == expected
