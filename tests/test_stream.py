"""The Stream's asyncio StreamReader/StreamWriter API, and sessions over TLS and pipes."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest

import yamux
from yamux_peers import make_certificate, session_pair


async def upper_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A handler written for asyncio.start_server, used unchanged on yamux streams."""
    peer = writer.get_extra_info("peername")
    assert peer is not None
    async for line in reader:
        if line == b"quit\n":
            break
        writer.write(line.upper())
        await writer.drain()
    rest = await reader.readexactly(3)
    writer.write(b"rest=" + rest)
    writer.close()
    await writer.wait_closed()


async def talk_to_upper(reader: object, writer: object) -> bytes:
    writer.write(b"hello\nworld\nquit\nabc")  # type: ignore[attr-defined]
    writer.write_eof()  # type: ignore[attr-defined]
    return await reader.read()  # type: ignore[attr-defined,no-any-return]


async def test_asyncio_start_server_handler_runs_unchanged_on_a_yamux_stream() -> None:
    plain = await asyncio.start_server(upper_handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*plain.sockets[0].getsockname()[:2])
    over_tcp = await talk_to_upper(reader, writer)
    writer.close()
    await writer.wait_closed()
    plain.close()
    await plain.wait_closed()

    async with session_pair() as (client, server):
        serving = asyncio.create_task(server.serve(upper_handler))  # type: ignore[arg-type]
        stream = await client.open_stream()
        over_yamux = await talk_to_upper(*stream.pair())
        serving.cancel()
    assert over_tcp == over_yamux == b"HELLO\nWORLD\nrest=abc"


async def test_reader_methods_follow_asyncio_semantics() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"line one\nA|B|tail")
        stream.write_eof()
        peer = await server.accept_stream()
        assert await peer.readline() == b"line one\n"
        assert await peer.readuntil(b"|") == b"A|"
        assert await peer.readexactly(2) == b"B|"
        assert not peer.at_eof()
        with pytest.raises(asyncio.IncompleteReadError) as incomplete:
            await peer.readexactly(10)
        assert incomplete.value.partial == b"tail"
        assert peer.at_eof()
        assert await peer.read(5) == b""
        assert await peer.readline() == b""
        assert peer.can_write_eof()
        assert peer.get_extra_info("stream_id") == stream.id
        assert peer.get_extra_info("session") is server
        assert peer.get_extra_info("sockname")[0] == "127.0.0.1"


async def test_readuntil_without_separator_past_the_limit_raises_instead_of_deadlocking() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"x" * (100 * 1024))
        peer = await server.accept_stream()
        with pytest.raises(asyncio.LimitOverrunError):
            await asyncio.wait_for(peer.readuntil(b"\n"), 2)
        with pytest.raises(ValueError, match="limit"):
            await asyncio.wait_for(peer.readline(), 2)


async def test_readexactly_larger_than_the_window_does_not_deadlock() -> None:
    payload = os.urandom(3 * 1024 * 1024)
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(payload)
        peer = await server.accept_stream()
        assert await asyncio.wait_for(peer.readexactly(len(payload)), 5) == payload


async def test_reading_continues_after_our_own_fin_until_the_peers() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"question")
        stream.close()
        assert stream.is_closing()
        await stream.wait_closed()
        peer = await server.accept_stream()
        assert await peer.read() == b"question"
        for word in (b"long ", b"answer"):
            peer.write(word)
            await peer.drain()
        peer.close()
        assert await stream.read() == b"long answer"
        assert stream.at_eof()


async def test_buffered_bytes_stay_readable_after_the_session_ends() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"last words")
        peer = await server.accept_stream()
        await asyncio.sleep(0.05)
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(server.wait_closed(), 2)
        assert await peer.read(100) == b"last words"
        with pytest.raises(yamux.SessionClosedError):
            await peer.read(100)


async def test_session_over_tls(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def echo_session(session: yamux.Session) -> None:
        async def echo(reader: yamux.Stream, writer: yamux.Stream) -> None:
            writer.write(await reader.read())
            writer.close()

        await session.serve(echo)

    server = await yamux.start_server(echo_session, "127.0.0.1", 0, ssl=server_ctx)
    client = await yamux.connect("127.0.0.1", server.port, ssl=client_ctx)
    assert client.get_extra_info("ssl_object") is not None
    stream = await client.open_stream()
    payload = os.urandom(1024 * 1024)
    stream.write(payload)
    stream.write_eof()
    assert await stream.read() == payload
    client.close()
    await client.wait_closed()
    server.close()
    await server.wait_closed()


async def test_session_over_a_pair_of_pipes() -> None:
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    modes = ((a_read, "rb"), (a_write, "wb"), (b_read, "rb"), (b_write, "wb"))
    files = [open(fd, mode) for fd, mode in modes]  # noqa: SIM115, ASYNC230 - sessions close them
    client = await yamux.connect_pipes(files[0], files[1], client=True)
    server = await yamux.connect_pipes(files[2], files[3], client=False)
    stream = await client.open_stream()
    stream.write(b"through a pipe")
    stream.write_eof()
    peer = await server.accept_stream()
    assert await peer.read() == b"through a pipe"
    assert await server.ping() > 0
    client.close()
    await client.wait_closed()
    await asyncio.wait_for(server.wait_closed(), 2)
    assert server.closed


class Recorder(asyncio.Protocol):
    """Records the callbacks a stream in protocol mode makes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls: list[str] = []
        self.lost: BaseException | None = None
        self.changed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> None:
        self.calls.append("eof")
        self.changed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("lost")
        self.lost = exc
        self.changed.set()

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")
        self.changed.set()

    async def wait_for(self, condition: object) -> None:
        async with asyncio.timeout(5):
            while not condition():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


async def test_protocol_mode_delivers_buffered_then_live_data_then_eof() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"early ")
        peer = await server.accept_stream()
        await asyncio.sleep(0.02)
        recorder = Recorder()
        peer.set_protocol(recorder)
        assert recorder.data == b"early "
        stream.write(b"late")
        stream.write_eof()
        await recorder.wait_for(lambda: "eof" in recorder.calls)
        assert recorder.data == b"early late"
        assert recorder.calls == ["eof"]
        peer.write(b"answer after eof")
        peer.close()
        assert await stream.read() == b"answer after eof"


async def test_protocol_mode_reports_a_reset_as_connection_lost() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"x")
        peer = await server.accept_stream()
        recorder = Recorder()
        peer.set_protocol(recorder)
        stream.reset()
        await recorder.wait_for(lambda: "lost" in recorder.calls)
        assert isinstance(recorder.lost, yamux.StreamResetError)


async def test_protocol_mode_reports_a_reset_that_came_before_it() -> None:
    """A protocol set on a stream the peer has reset already gets connection_lost at once
    (a relay splices a public socket only once its transport exists)."""
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"x")
        peer = await server.accept_stream()
        stream.reset()
        with pytest.raises(yamux.StreamResetError):
            await peer.read()
        recorder = Recorder()
        peer.set_protocol(recorder)
        assert recorder.calls == ["lost"]
        assert isinstance(recorder.lost, yamux.StreamResetError)


async def test_protocol_mode_after_the_session_ended_delivers_what_came_then_the_loss() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"last words")
        peer = await server.accept_stream()
        await asyncio.sleep(0.02)
        client.close()
        await client.wait_closed()
        await asyncio.sleep(0.02)
        recorder = Recorder()
        peer.set_protocol(recorder)
        assert recorder.data == b"last words"
        assert recorder.calls[-1] == "lost"
        assert recorder.lost is not None


async def test_protocol_mode_pause_reading_withholds_credit_from_the_sender() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        stream.write(b"!")
        peer = await server.accept_stream()
        recorder = Recorder()
        peer.set_protocol(recorder)
        await recorder.wait_for(lambda: recorder.data == b"!")
        peer.pause_reading()
        assert not peer.is_reading()
        payload = os.urandom(1024 * 1024)
        stream.write(payload)
        await asyncio.sleep(0.1)
        assert client._protocol.core.send_credit(stream.id) == 0  # the peer holds a full window
        assert len(recorder.data) == 1
        peer.resume_reading()
        stream.write_eof()
        await recorder.wait_for(lambda: "eof" in recorder.calls)
        assert recorder.data == b"!" + payload


async def test_protocol_mode_pauses_and_resumes_writing_with_the_peers_window() -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        recorder = Recorder()
        stream.set_protocol(recorder)
        stream.write(os.urandom(1024 * 1024))  # the peer has not even accepted yet
        assert recorder.calls == ["pause_writing"]
        peer = await server.accept_stream()
        assert len(await peer.readexactly(1024 * 1024)) == 1024 * 1024
        await recorder.wait_for(lambda: "resume_writing" in recorder.calls)
        assert recorder.calls == ["pause_writing", "resume_writing"]
