"""The control port: exact wire format, and strangers that must end only themselves."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from relay_support import (
    ENDPOINT,
    HOST,
    connection_refused,
    echo_roundtrip,
    free_port,
    recv_all,
    wait_until,
)
from yamux.const import HEADER_SIZE, Flag, FrameType
from yamux.frame import encode_header, parse_header

pytestmark = pytest.mark.e2e

WINDOW_UPDATE, PING, GO_AWAY = FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY
SYN, ACK = Flag.SYN, Flag.ACK
FAST_RECONNECT = ("--reconnect-delay", "0.1", "--reconnect-max-delay", "0.3")


def read_line(sock: socket.socket, limit: int = 1024) -> bytes:
    """Bytes up to and including the first newline, one byte at a time (nothing more)."""
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


def control_frames(data: bytes) -> list[tuple[FrameType, int, int, int]]:
    """(type, flags, stream id, length) of bodiless yamux frames; fails on anything else."""
    assert len(data) % HEADER_SIZE == 0, data
    frames = [parse_header(data, i) for i in range(0, len(data), HEADER_SIZE)]
    assert all(type_ is not FrameType.DATA for type_, *_ in frames), frames
    return frames


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def test_port_line_then_yamux_and_nothing_else(procs):
    """The relay sends exactly digits + newline, then speaks yamux as the client."""
    relay, relay_port = procs.relay()
    with socket.create_connection((HOST, relay_port), timeout=10) as sock:
        line = read_line(sock)
        assert line.endswith(b"\n"), line
        assert line[:-1].isdigit(), line
        public_port = int(line)
        assert 1 <= public_port <= 65535
        # Next comes the relay's handshake ping: a bare 12-byte yamux header.
        type_, flags, stream_id, opaque = parse_header(recv_exactly(sock, HEADER_SIZE))
        assert (type_, flags, stream_id) == (PING, SYN, 0)
        sock.sendall(encode_header(PING, ACK, 0, opaque))  # answer like a yamux server
        # A public connection now arrives as a stream the relay (client role) opens: odd id.
        with socket.create_connection((HOST, public_port), timeout=10):
            type_, flags, stream_id, _ = parse_header(recv_exactly(sock, HEADER_SIZE))
            assert (type_, flags) == (WINDOW_UPDATE, SYN)
            assert stream_id % 2 == 1
    relay.wait_line(r"session 1 from 127\.0\.0\.1:\d+ ended: peer closed the connection")


def test_garbage_stalled_and_slow_registrations_end_only_themselves(procs, echo_port):
    relay, relay_port = procs.relay("--handshake-timeout", "1")
    _, good_port = procs.forwarder(relay_port, echo_port)

    garbage, stalled, slow = [], [], []
    try:
        for _ in range(10):
            sock = socket.create_connection((HOST, relay_port), timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
            garbage.append(sock)
        for _ in range(10):
            stalled.append(socket.create_connection((HOST, relay_port), timeout=10))
        for _ in range(5):
            sock = socket.create_connection((HOST, relay_port), timeout=10)
            slow.append(sock)
        junk_ports = [int(read_line(sock)) for sock in garbage + stalled + slow]

        # Garbage: the relay answers Go Away "protocol error" (code 1) and closes at once.
        for sock in garbage:
            sock.settimeout(5)
            frames = control_frames(recv_all(sock))
            # The handshake ping goes out first unless the garbage (sent before the port
            # line) was already read by then, as uvloop may do; either way Go Away 1 ends it.
            assert frames in ([(PING, SYN, 0, 1), (GO_AWAY, 0, 0, 1)], [(GO_AWAY, 0, 0, 1)])
        relay.wait_line(r"ended: yamux protocol error: invalid frame header: version=71")
        # Meanwhile the real session works.
        assert echo_roundtrip(good_port, b"still here\n") == b"still here\n"
        # Slow: the start of a valid pong, trickled a byte at a time, never finished in time.
        for sock in slow:
            assert control_frames(recv_exactly(sock, 12)) == [(PING, SYN, 0, 1)]
        pong = encode_header(PING, ACK, 0, 1)
        for byte in pong[:4]:
            for sock in slow:
                sock.sendall(bytes([byte]))
            time.sleep(0.05)
        relay.wait_line(r"ended: no answer to the yamux ping within 1 s")
        # Stalled and slow ones: Go Away (normal) and closed after the handshake timeout.
        for sock in stalled:
            sock.settimeout(5)
            assert control_frames(recv_all(sock)) == [(PING, SYN, 0, 1), (GO_AWAY, 0, 0, 0)]
        for sock in slow:
            sock.settimeout(5)
            assert control_frames(recv_all(sock)) == [(GO_AWAY, 0, 0, 0)]
        for port in junk_ports:
            wait_until(
                lambda port=port: connection_refused(port),
                timeout=2,
                message=f"junk registration's public port {port} still open",
            )
        assert echo_roundtrip(good_port, b"after the junk\n") == b"after the junk\n"
    finally:
        for sock in garbage + stalled + slow:
            sock.close()
    assert relay.popen.poll() is None


def test_no_free_port_in_range_gets_error_line(procs, echo_port):
    holder = socket.socket()
    try:
        holder.bind((HOST, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        relay, relay_port = procs.relay("--port-range", f"{taken}-{taken}")
        with socket.create_connection((HOST, relay_port), timeout=10) as sock:
            assert (
                recv_all(sock)
                == f"error: no free port in range {taken}-{taken}; refusal=retry\n".encode()
            )
        relay.wait_line(r"refusing registration from 127\.0\.0\.1:\d+: no free port in range")
        forwarder = procs.start_forwarder(relay_port, echo_port, "--no-reconnect")
        assert forwarder.wait(10) == 1
        assert (
            f"relay refused the registration: no free port in range {taken}-{taken}"
            in forwarder.stderr_text
        )
    finally:
        holder.close()
    # The relay went on; with the port released the next registration gets it.
    _, public_port = procs.forwarder(relay_port, echo_port)
    assert public_port == taken
    assert echo_roundtrip(public_port) == b"ping through the relay\n"


def test_port_is_free_again_when_the_session_ends(procs, echo_port):
    port = free_port()
    _, relay_port = procs.relay("--port-range", f"{port}-{port}")
    first, first_port = procs.forwarder(relay_port, echo_port)
    assert first_port == port
    first.kill()
    _, second_port = procs.forwarder(relay_port, echo_port, *FAST_RECONNECT)
    assert second_port == port  # the only port of the range was handed out again
    assert echo_roundtrip(second_port) == b"ping through the relay\n"


def test_max_sessions_refuses_with_clear_error(procs, echo_port):
    relay, relay_port = procs.relay("--max-sessions", "1")
    first, first_port = procs.forwarder(relay_port, echo_port)
    refused = procs.start_forwarder(relay_port, echo_port, "--no-reconnect")
    assert refused.wait(10) == 1
    assert (
        "relay refused the registration: relay is full: 1 sessions, the maximum (--max-sessions 1)"
    ) in refused.stderr_text
    assert echo_roundtrip(first_port) == b"ping through the relay\n"  # unaffected
    first.kill()
    relay.wait_line(r"session 1 from .* ended")
    third, third_port = procs.forwarder(relay_port, echo_port)
    assert echo_roundtrip(third_port) == b"ping through the relay\n"
    assert [line for line in third.stdout if ENDPOINT.match(line)] == [f"{HOST}:{third_port}"]


async def test_forwarder_rejects_a_server_that_is_not_a_relay(procs):
    """Anything but a port line is a clear error on the registering side."""
    replies = {
        "ssh": (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", r"expected a port line .*is this a relay\?"),
        "error": (
            b"error: maintenance, come back later\n",
            r"relay refused the registration: maintenance, come back later",
        ),
        "silent": (b"", r"could not get a port line from the relay at .* within 0\.5 s"),
        "huge": (b"9" * 5000, r"expected a port line .*is this a relay\?"),
        "zero": (b"0\n", r"expected a port line .*b'0\\n'"),
    }
    connections = []

    async def fake_relay(reader, writer):
        connections.append(writer)
        writer.write(replies[kind][0])
        await writer.drain()

    for kind in replies:
        server = await asyncio.start_server(fake_relay, HOST, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            forwarder = procs.start_forwarder(port, 1, "--no-reconnect", "--connect-timeout", "0.5")
            await forwarder.await_line(replies[kind][1])
            assert await forwarder.await_exit() == 1, kind
            assert "Traceback" not in forwarder.stderr_text
        finally:
            for writer in connections:
                writer.close()
            connections.clear()
            server.close()
            await server.wait_closed()
