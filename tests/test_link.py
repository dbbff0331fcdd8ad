"""testkit.link.SlowLink: the delay and the rate it emulates, a dead path, clean ends.

Timing bounds are loose on the slow side (a shared 2-core CI machine may stall
for a while) and tight on the fast side, which no stall can fake: a link that
is too fast is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import pytest

from testkit.link import SlowLink
from testkit.procs import Proc


async def echo_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 18):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def round_trip(port: int, payload: bytes = b"x" * 64) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"warm-up")
        await reader.readexactly(7)
        t0 = time.monotonic()
        writer.write(payload)
        await reader.readexactly(len(payload))
        return time.monotonic() - t0
    finally:
        writer.close()
        await writer.wait_closed()


async def assert_ended(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The connection ends (EOF or reset) with no byte on it; then close our side."""
    try:
        tail = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        tail = b""
    assert tail == b""
    writer.close()
    with contextlib.suppress(ConnectionResetError):  # raised once, by read or here
        await writer.wait_closed()


async def test_each_direction_is_delayed() -> None:
    server = await echo_server()
    async with server, SlowLink("127.0.0.1", port_of(server), delay=0.05, rate=None) as link:
        rtt = await round_trip(link.port)
    assert 0.099 <= rtt < 0.3, f"64-byte round trip took {rtt * 1000:.1f} ms, want ~100"


async def test_rate_is_shared_by_connections_and_bytes_arrive_intact() -> None:
    received: dict[bytes, bytearray] = {}

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        while chunk := await reader.read(1 << 20):
            data.extend(chunk)
        received[bytes(data[:1])] = data
        writer.close()
        await writer.wait_closed()

    async def send(port: int, payload: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == b""  # the sink closes once it has everything
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    payloads = [bytes([n]) + bytes(range(256)) * (6 * 1024) for n in (1, 2)]  # 1.5 MiB each
    rate = 6e6
    async with server, SlowLink("127.0.0.1", port_of(server), delay=0.01, rate=rate) as link:
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(send(link.port, p) for p in payloads)), 30)
        took = time.monotonic() - t0
    assert received == {p[:1]: p for p in payloads}
    expected = sum(map(len, payloads)) / rate + 2 * 0.01
    assert expected * 0.95 <= took < expected * 2.5, f"{took:.2f} s, want ~{expected:.2f}"


async def test_in_flight_bytes_are_bounded_when_the_receiver_stalls() -> None:
    """A receiver that does not read pushes back: the link holds about rate*delay+slack."""
    stalled = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stalled.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    link = SlowLink("127.0.0.1", port_of(server), delay=0.02, rate=50e6, slack=1 << 20)
    async with server, link:
        _, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"\0" * (64 << 20))
        await asyncio.sleep(1.0)
        sent = (64 << 20) - writer.transport.get_write_buffer_size()
        stalled.set()
        writer.transport.abort()
        await asyncio.sleep(0.05)
    bound = 50e6 * 0.02 + (1 << 20)
    kernel = 16 << 20  # socket buffers on the way (both ends' send and receive buffers)
    assert bound <= sent < bound + kernel, f"the link accepted {sent} bytes"


async def test_blackhole_delivers_nothing_until_lifted_and_keeps_the_connection() -> None:
    server = await echo_server()
    async with server, SlowLink("127.0.0.1", port_of(server), delay=0.0, rate=None) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"
        link.blackhole()
        writer.write(b"during the outage")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.5)
        link.blackhole(False)
        got = await asyncio.wait_for(reader.readexactly(17), 5)
        assert got == b"during the outage"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()


async def test_half_close_passes_through_after_the_data() -> None:
    server = await echo_server()
    payload = b"y" * 500_000
    async with server, SlowLink("127.0.0.1", port_of(server), delay=0.005, rate=None) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == payload
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        assert not link.connections


async def test_close_ends_open_connections() -> None:
    server = await echo_server()
    async with server:
        link = SlowLink("127.0.0.1", port_of(server), delay=0.0, rate=None)
        await link.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        await link.close()
        await assert_ended(reader, writer)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", link.port)


async def test_refused_target_resets_the_client() -> None:
    server = await echo_server()
    port = port_of(server)
    server.close()
    await server.wait_closed()
    async with SlowLink("127.0.0.1", port, delay=0.0, rate=None) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        await assert_ended(reader, writer)


async def test_runs_as_a_process() -> None:
    server = await echo_server()
    async with server:
        proc = Proc(
            [
                sys.executable,
                "-m",
                "testkit.link",
                "--listen",
                "127.0.0.1:0",
                "--target",
                f"127.0.0.1:{port_of(server)}",
                "--delay",
                "0.02",
                "--rate",
                "1e8",
            ],
            "slowlink",
        )
        try:
            _, match = await proc.await_line(r"^LISTENING 127\.0\.0\.1:(\d+)$", stream="stdout")
            rtt = await round_trip(int(match.group(1)))
            assert 0.039 <= rtt < 0.25
        finally:
            proc.send_signal(15)
            assert await proc.await_exit() == 0
            proc.stop()
