"""The Python API (relay.start_server / register) against an in-process RelayServer.

Real sockets on 127.0.0.1, one event loop; the autouse ``no_leaks`` fixture
checks that closing the server and the relay leaves no task or socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import relay
import yamux
from relay.errors import RegistrationError
from relay.wire.greeting import parse_greeting, port_line
from relay.wire.refusal import format_refusal
from yamux.const import Flag, FrameType
from yamux.frame import encode_header, parse_header

HOST = "127.0.0.1"


@pytest.fixture
async def relay_server() -> AsyncIterator[relay.RelayServer]:
    async with relay.RelayServer(0, bind=HOST) as server:
        yield server


async def echo(reader, writer) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # accepted by the kernel just as the listener closed
        return False
    writer.close()
    await writer.wait_closed()
    return False


async def eventually(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.01)


async def test_start_server_serves_and_exposes_the_public_port(relay_server):
    server = await relay.start_server(echo, HOST, relay_server.port)
    async with server:
        assert server.public_address == (HOST, server.public_port)
        assert server.public_endpoint == f"{HOST}:{server.public_port}"
        assert [s.public_port for s in relay_server.sessions] == [server.public_port]
        assert server.is_serving()
        replies = await asyncio.gather(
            *(roundtrip(server.public_port, bytes([i]) * 70_000 * i) for i in range(1, 9))
        )
        assert replies == [bytes([i]) * 70_000 * i for i in range(1, 9)]
    assert not server.is_serving()
    assert server.close_reason is None  # closed by us
    # The relay freed the public port as soon as the session ended.
    await eventually(lambda: refused(server.public_port))
    await eventually(lambda: asyncio.sleep(0, not relay_server.sessions))


async def test_close_cancels_running_handlers(relay_server):
    started, cancelled = [], []

    async def stuck(reader, writer) -> None:
        started.append(await reader.readline())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    server = await relay.start_server(stuck, HOST, relay_server.port)
    clients = [await asyncio.open_connection(HOST, server.public_port) for _ in range(3)]
    try:
        for _, writer in clients:
            writer.write(b"hello\n")
        await eventually(lambda: asyncio.sleep(0, len(started) == 3))
        assert server.connections == 3
        server.close()
        async with asyncio.timeout(5):
            await server.wait_closed()
        assert cancelled == [True, True, True]
        for reader, _ in clients:  # the public clients are disconnected, not left hanging
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
    finally:
        for _, writer in clients:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_handler_error_resets_only_its_stream(relay_server, caplog):
    async def picky(reader, writer) -> None:
        line = await reader.readline()
        if line != b"please\n":
            raise ValueError(f"rude client: {line!r}")
        writer.write(b"thank you\n")

    async with await relay.start_server(picky, HOST, relay_server.port) as server:
        with caplog.at_level(logging.ERROR, logger="relay.api"):
            reader, writer = await asyncio.open_connection(HOST, server.public_port)
            writer.write(b"gimme\n")
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)
        assert "rude client" in caplog.text
        assert await roundtrip(server.public_port, b"please\n") == b"thank you\n"


async def test_serve_forever_raises_when_the_relay_goes_away():
    relay_server = relay.RelayServer(0, bind=HOST)
    await relay_server.start()
    try:
        server = await relay.start_server(echo, HOST, relay_server.port, reconnect=False)
        serving = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        relay_server.close()
        await relay_server.wait_closed()
        with pytest.raises(relay.RelayDisconnectedError, match="lost the relay"):
            await asyncio.wait_for(serving, 5)
        assert server.close_reason is not None
        await server.wait_closed()
    finally:
        relay_server.close()
        await relay_server.wait_closed()


async def test_serve_forever_cancelled_closes_the_server(relay_server):
    server = await relay.start_server(echo, HOST, relay_server.port)
    serving = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert not server.is_serving()
    await eventually(lambda: refused(server.public_port))


async def test_same_handler_runs_under_asyncio_and_relay(relay_server):
    """The point of the API: an asyncio.start_server handler works unchanged."""

    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for line in reader:
            writer.write(line.upper())
            await writer.drain()
        writer.write(b"BYE\n")
        writer.close()
        await writer.wait_closed()

    direct = await asyncio.start_server(shout, HOST, 0)
    relayed = await relay.start_server(shout, HOST, relay_server.port)
    try:
        for port in (direct.sockets[0].getsockname()[1], relayed.public_port):
            assert await roundtrip(port, b"one\ntwo\n") == b"ONE\nTWO\nBYE\n"
    finally:
        direct.close()
        await direct.wait_closed()
        relayed.close()
        await relayed.wait_closed()


async def test_registration_refused_when_the_relay_is_full():
    async with (
        relay.RelayServer(0, bind=HOST, max_sessions=1) as relay_server,
        await relay.start_server(echo, HOST, relay_server.port) as first,
    ):
        with pytest.raises(relay.RelayRefusedError, match="relay is full") as info:
            await relay.start_server(echo, HOST, relay_server.port)
        assert info.value.reason.startswith("relay is full: 1 sessions")
        assert await roundtrip(first.public_port, b"fine\n") == b"fine\n"


async def connect_and_read(port: int, clients: list[tuple[Any, Any]]) -> bytes:
    """Connect (the connection goes to ``clients``) and read to the end."""
    clients.append(await asyncio.open_connection(HOST, port))
    return await asyncio.wait_for(clients[-1][0].read(), 5)


async def test_max_connections_per_session():
    async with relay.RelayServer(0, bind=HOST, max_connections=2) as relay_server:
        hold = asyncio.Event()

        async def holding(reader, writer) -> None:
            await hold.wait()
            writer.write(b"done\n")

        async with await relay.start_server(holding, HOST, relay_server.port) as server:
            clients = [await asyncio.open_connection(HOST, server.public_port) for _ in range(2)]
            try:
                # The third one is refused: reset before or after our connect() returned.
                with pytest.raises(ConnectionResetError):
                    await connect_and_read(server.public_port, clients)
                hold.set()
                for reader, writer in clients[:2]:
                    writer.write_eof()
                    assert await asyncio.wait_for(reader.read(), 5) == b"done\n"
            finally:
                for _, writer in clients:
                    writer.close()
                    await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_streams_opened_by_the_registered_side_are_reset(relay_server, caplog):
    registration = await relay.register(HOST, relay_server.port)
    session, public_port = registration.session, registration.public_port
    try:
        stream = await session.open_stream()
        with pytest.raises(yamux.StreamResetError):
            await asyncio.wait_for(stream.read(), 5)
        assert "does not use; resetting it" in caplog.text
        # The session itself is fine: a public connection still arrives as a stream.
        _, writer = await asyncio.open_connection(HOST, public_port)
        incoming = await asyncio.wait_for(session.accept_stream(), 5)
        writer.write(b"hi")
        assert await incoming.readexactly(2) == b"hi"
        writer.close()
        await writer.wait_closed()
    finally:
        session.close()
        await session.wait_closed()


async def test_register_times_out_on_a_silent_server():
    async def silent(reader, writer) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TimeoutError, match=r"could not get a port line .* within 0.2 s"):
            await relay.register(HOST, port, connect_timeout=0.2)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("line", "port"), [(b"1", 1), (b"4532", 4532), (b"65535", 65535), (b"00080", 80)]
)
def test_parse_greeting_ports(line, port):
    assert parse_greeting(line) == port


@pytest.mark.parametrize(
    "line",
    [b"", b"0", b"65536", b"123456", b"45a", b" 45", b"45\r", b"+45", b"HTTP/1.1 400 Bad Request"],
)
def test_parse_greeting_rejects_anything_but_a_port(line):
    with pytest.raises(RegistrationError, match="expected a port line"):
        parse_greeting(line)


def test_error_and_port_lines_wire_format():
    assert port_line(4532) == b"4532\n"
    assert format_refusal("no free port in range 5000-5001", "retry") == (
        b"error: no free port in range 5000-5001; refusal=retry\n"
    )
    with pytest.raises(relay.RelayRefusedError, match="go away") as info:
        parse_greeting(b"error: go away")
    assert info.value.reason == "go away"


async def test_go_away_from_the_registered_side_frees_the_port(relay_server, caplog):
    caplog.set_level(logging.INFO, logger="relay.server")
    registration = await relay.register(HOST, relay_server.port)
    session, public_port = registration.session, registration.public_port
    try:
        assert not await refused(public_port)
        session.go_away()  # "open no more streams to me": the public port is useless now
        # No public connection is needed for the relay to notice: the session just ends.
        await eventually(lambda: asyncio.sleep(0, not relay_server.sessions), timeout=2)
        assert "ended: the registered side sent go away" in caplog.text
        assert await refused(public_port)
    finally:
        session.close()
        await session.wait_closed()


async def test_yamux_bytes_in_the_same_segment_as_the_port_line_are_not_lost():
    """The registering side hands what follows the newline to yamux (initial_data)."""
    answered = asyncio.get_running_loop().create_future()

    async def fake_relay(reader, writer) -> None:
        ping = encode_header(FrameType.PING, Flag.SYN, 0, 77)
        writer.write(b"4532\n" + ping)  # port line + ping, one write
        answered.set_result(parse_header(await reader.readexactly(12)))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(fake_relay, HOST, 0)
    try:
        registration = await relay.register(HOST, server.sockets[0].getsockname()[1])
        session, public_port = registration.session, registration.public_port
        assert public_port == 4532
        assert await asyncio.wait_for(answered, 5) == (FrameType.PING, Flag.ACK, 0, 77)  # the pong
        session.close()
        await session.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_start_server_reconnects_when_the_relay_restarts(caplog):
    """reconnect=True (the default): a new registration, reported, and the old handlers end."""
    caplog.set_level(logging.INFO, logger="relay.api")
    endpoints: list[str] = []
    started, ended = asyncio.Event(), []

    async def echo_or_hang(reader, writer) -> None:
        if await reader.readexactly(4) == b"hang":
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                ended.append("cancelled")
        writer.write(await reader.read())
        writer.close()

    first_relay = relay.RelayServer(0, bind=HOST)
    await first_relay.start()
    control_port = first_relay.port
    server = await relay.start_server(
        echo_or_hang,
        HOST,
        control_port,
        on_endpoint=endpoints.append,
        reconnect_delay=0.05,
        reconnect_max_delay=0.1,
    )
    second_relay = None
    try:
        first_endpoint = await server.wait_endpoint()
        assert endpoints == [first_endpoint] == [server.public_endpoint]
        assert await roundtrip(server.public_port, b"echo one") == b" one"
        _, hanging = await asyncio.open_connection(HOST, server.public_port)
        hanging.write(b"hang")
        await asyncio.wait_for(started.wait(), 5)

        first_relay.close()
        await first_relay.wait_closed()
        await eventually(lambda: asyncio.sleep(0, server.close_reason is not None))
        assert not server.is_serving()  # reconnecting; close_reason says why
        assert ended == ["cancelled"]  # the old session's handler did not linger
        assert server.connections == 0
        hanging.close()

        second_relay = relay.RelayServer(control_port, bind=HOST)
        await second_relay.start()
        second_endpoint = await asyncio.wait_for(server.wait_endpoint(), 5)
        assert endpoints == [first_endpoint, second_endpoint]
        assert server.registrations == 2
        assert server.is_serving()
        assert server.close_reason is None
        assert await roundtrip(server.public_port, b"echo two") == b" two"
        assert "lost the relay at" in caplog.text
        assert "reconnecting to" in caplog.text
    finally:
        server.close()
        await server.wait_closed()
        for relay_server in (first_relay, second_relay):
            if relay_server is not None:
                relay_server.close()
                await relay_server.wait_closed()
    with pytest.raises(relay.RelayDisconnectedError, match="closed"):
        await server.wait_endpoint()


async def test_wait_endpoint_fails_when_the_server_stops_without_reconnect():
    relay_server = relay.RelayServer(0, bind=HOST)
    await relay_server.start()
    try:
        server = await relay.start_server(echo, HOST, relay_server.port, reconnect=False)
        relay_server.close()
        await relay_server.wait_closed()
        await eventually(lambda: asyncio.sleep(0, not server.is_serving()))
        with pytest.raises(relay.RelayDisconnectedError, match="lost the relay"):
            await asyncio.wait_for(server.wait_endpoint(), 5)
        await server.wait_closed()
    finally:
        relay_server.close()
        await relay_server.wait_closed()


async def test_closed_at_once_after_start_leaves_nothing_behind(relay_server):
    server = await relay.start_server(echo, HOST, relay_server.port)
    server.close()  # before its task ran even once
    await server.wait_closed()
    assert not server.is_serving()
    await eventually(lambda: asyncio.sleep(0, not relay_server.sessions))


def listener_that_never_answers() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: a further connect gets no answer
    (the kernel drops its SYN) until someone accepts."""
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen(0)
    fillers = []
    for _ in range(8):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(server.getsockname())
        fillers.append(sock)
    return server, fillers


async def test_forwarder_connect_timeout_resets_the_stream_and_serves_on(caplog):
    """A local service that does not answer within connect_timeout costs only its stream:
    the public client is reset, the failure counted and logged, and the next connection
    goes through once the service accepts again."""
    caplog.set_level(logging.WARNING, "relay.forwarder")
    service, fillers = listener_that_never_answers()
    endpoints: asyncio.Queue[str] = asyncio.Queue()
    try:
        async with relay.RelayServer(0, bind=HOST) as server:
            forwarder = relay.Forwarder(
                HOST,
                server.port,
                service.getsockname()[1],
                reconnect=False,
                connect_timeout=0.3,
                on_endpoint=endpoints.put_nowait,
            )
            task = asyncio.create_task(forwarder.run())
            try:
                port = int((await asyncio.wait_for(endpoints.get(), 10)).rsplit(":", 1)[1])
                reader, writer = await asyncio.open_connection(HOST, port)
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(reader.read(), 10)
                writer.close()
                assert forwarder.local_failures == {forwarder.services[0]: 1}
                assert "is unreachable (no answer within 0.3 s)" in caplog.text
                for sock in fillers:  # make room in the accept queue
                    sock.close()
                service.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        service.accept()[0].close()
                _, writer = await asyncio.open_connection(HOST, port)
                service.settimeout(10)
                accepted, _ = await asyncio.to_thread(service.accept)
                accepted.close()
                writer.close()
                assert not task.done()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        service.close()
        for sock in fillers:
            sock.close()
