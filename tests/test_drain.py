"""Graceful drain on SIGTERM, relay and forwarder, with a slow request in flight."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from relay_support import HOST, connection_refused, recv_all

SLOW_SCRIPT = r"""
import asyncio, sys
async def handle(reader, writer):
    request = await reader.readline()
    await asyncio.sleep(float(sys.argv[2]))
    writer.write(b"done: " + request)
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""
"""Answers each request line after a delay (argv[2] seconds): a slow in-flight request."""


def start_request(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.sendall(b"slow request\n")
    return sock


def refused_at_once(port: int) -> bool:
    """A new connection is refused (RST to the SYN), or reset before any answer."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"new request\n")
            return sock.recv(100) == b""
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def setup(procs, delay: float, relay_args=(), forwarder_args=()):
    _, slow_port = procs.script(SLOW_SCRIPT, "0", str(delay), name="slow")
    relay, relay_port = procs.relay(*relay_args)
    forwarder, public_port = procs.forwarder(relay_port, slow_port, *forwarder_args)
    return relay, relay_port, forwarder, public_port


def test_relay_drain_lets_the_slow_request_finish_and_refuses_new_ones(procs):
    relay, relay_port, _, public_port = setup(procs, 2.0, ("--drain-timeout", "20"))
    with start_request(public_port) as client:
        time.sleep(0.3)  # the request is with the slow service now
        started = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        relay.wait_line(r"SIGTERM received: draining")
        assert connection_refused(public_port)  # no new public connection
        assert connection_refused(relay_port)  # no new registration
        assert recv_all(client) == b"done: slow request\n"  # the one in flight completes
    assert relay.wait(15) == 0
    assert time.monotonic() - started >= 1.0
    assert "drained: no connection in flight" in relay.stderr_text
    assert "Traceback" not in relay.stderr_text


def test_relay_drain_timeout_closes_the_rest_and_exits_0(procs):
    relay, _, _, public_port = setup(procs, 60.0, ("--drain-timeout", "1"))
    with start_request(public_port) as client:
        time.sleep(0.3)
        started = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(15) == 0
        elapsed = time.monotonic() - started
        with pytest.raises(ConnectionResetError):  # cut off: RST, not a clean end
            recv_all(client)
    assert 0.9 <= elapsed < 10
    assert "drain timeout (1 s) passed" in relay.stderr_text


def test_second_signal_stops_the_drain_at_once(procs):
    relay, _, _, public_port = setup(procs, 60.0)  # default drain timeout: 30 s
    with start_request(public_port):
        time.sleep(0.3)
        relay.send_signal(signal.SIGTERM)
        relay.wait_line(r"SIGTERM received: draining")
        started = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "SIGTERM during the drain: closing every connection now" in relay.stderr_text


def test_forwarder_drain_refuses_new_connections_and_finishes_in_flight(procs):
    relay, _, forwarder, public_port = setup(procs, 2.0, (), ("--drain-timeout", "20"))
    with start_request(public_port) as client:
        time.sleep(0.3)
        forwarder.send_signal(signal.SIGTERM)
        forwarder.wait_line(r"SIGTERM received: draining")
        assert refused_at_once(public_port)  # reset by the forwarder at once
        assert recv_all(client) == b"done: slow request\n"
    assert forwarder.wait(15) == 0
    relay.wait_line(rf"ended: .*public port {public_port} closed")
    assert "Traceback" not in forwarder.stderr_text


def test_drain_timeout_zero_closes_at_once(procs):
    relay, _, _, public_port = setup(procs, 60.0, ("--drain-timeout", "0"))
    with start_request(public_port):
        time.sleep(0.3)
        started = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "SIGTERM received: shutting down" in relay.stderr_text
