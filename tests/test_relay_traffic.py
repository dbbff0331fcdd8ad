"""Bytes through relay + forwarder (both the real CLI): volume, parallelism, half-close, resets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys
import time

import pytest

from relay_support import (
    ECHO_SCRIPT,
    ENDPOINT,
    HOST,
    SINK_SCRIPT,
    echo_roundtrip,
    free_port,
    recv_all,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo_behind_relay(procs):
    """(public port, processes): echo service <- forwarder <- relay."""
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    _, relay_port = procs.relay()
    _, public_port = procs.forwarder(relay_port, echo_port)
    return public_port, procs


async def test_200_parallel_clients_random_payloads(echo_behind_relay):
    public_port, procs = echo_behind_relay
    clients = 200
    rng = random.Random(20261121)
    sizes = [
        rng.choice([1, 100, 4096, 65536, 300_000, 700_000]) + rng.randrange(1000)
        for _ in range(clients)
    ]
    all_connected = asyncio.Event()
    connected = 0

    async def client(size: int) -> tuple[str, str, int]:
        nonlocal connected
        payload = os.urandom(size)
        reader, writer = await asyncio.open_connection(HOST, public_port)
        try:
            connected += 1
            if connected == clients:
                all_connected.set()
            await all_connected.wait()  # every client is connected before anyone sends

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            _, echoed = await asyncio.gather(send(), reader.read())
        finally:
            writer.close()
            await writer.wait_closed()
        return hashlib.sha256(payload).hexdigest(), hashlib.sha256(echoed).hexdigest(), len(echoed)

    async with asyncio.timeout(90):
        results = await asyncio.gather(*(client(size) for size in sizes))
    for size, (sent_digest, echoed_digest, echoed_size) in zip(sizes, results, strict=True):
        assert echoed_size == size
        assert echoed_digest == sent_digest
    assert "Traceback" not in procs.describe()


def test_half_close_client_side(procs):
    """A client that shuts its write side still gets the whole answer."""
    _, sink_port = procs.script(SINK_SCRIPT, "0", name="sink")
    _, relay_port = procs.relay()
    _, public_port = procs.forwarder(relay_port, sink_port)
    payload = os.urandom(5 * 1024 * 1024)
    with socket.create_connection((HOST, public_port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the sink answers only after this EOF
        answer = recv_all(sock)
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


BANNER_FIRST_SCRIPT = r"""
import asyncio, hashlib, sys
async def handle(reader, writer):
    writer.write(b"banner, then EOF from the service\n")
    writer.write_eof()                      # the service half-closes first
    digest, size = hashlib.sha256(), 0
    while data := await reader.read(1 << 20):
        digest.update(data)
        size += len(data)
    print(f"received {size} {digest.hexdigest()}", flush=True)
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def test_half_close_service_side(procs):
    """The service sends FIN first; the public client sees EOF and can still send."""
    service, service_port = procs.script(BANNER_FIRST_SCRIPT, name="banner-service")
    _, relay_port = procs.relay()
    _, public_port = procs.forwarder(relay_port, service_port)
    payload = os.urandom(3 * 1024 * 1024)
    with socket.create_connection((HOST, public_port), timeout=30) as sock:
        assert recv_all(sock) == b"banner, then EOF from the service\n"  # EOF while we write on
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the connection ends once both sides are done
    service.wait_line(
        f"received {len(payload)} {hashlib.sha256(payload).hexdigest()}", stream="stdout"
    )


def ask(port: int, question: bytes) -> bytes:
    """Connect, send ``question``, return the first bytes of the answer."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(question)
        return sock.recv(100)


def test_local_service_down_resets_stream_session_stays_up(procs):
    local_port = free_port()  # nothing listens here yet
    relay, relay_port = procs.relay()
    forwarder, public_port = procs.forwarder(relay_port, local_port)
    # Reset, not a clean (empty) answer; the reset may even beat the client's own connect():
    # the relay opens the stream at accept, and the forwarder's dial fails at once.
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        ask(public_port, b"anyone there?\n")
    forwarder.wait_line(rf"local service 127\.0\.0\.1:{local_port} is unreachable .*resetting")
    # The session stayed up: once the service runs, the same endpoint works.
    procs.start([sys.executable, "-c", ECHO_SCRIPT, str(local_port)], "echo").wait_line(
        r"^\d+$", stream="stdout"
    )
    assert echo_roundtrip(public_port, b"now it works\n") == b"now it works\n"
    assert [line for line in forwarder.stdout if ENDPOINT.match(line)] == [
        f"127.0.0.1:{public_port}"
    ]  # never re-registered
    assert "ended" not in relay.stderr_text


@pytest.mark.slow
def test_one_gib_through_one_connection(procs, record_property):
    _, sink_port = procs.script(SINK_SCRIPT, "0", name="sink")
    _, relay_port = procs.relay()
    _, public_port = procs.forwarder(relay_port, sink_port)
    block = os.urandom(64 * 1024 * 1024)
    chunks = 16  # 16 x 64 MiB = 1 GiB, each chunk a different rotation of the block

    def chunk(i: int) -> bytes:
        offset = i * 4099
        return block[offset:] + block[:offset]

    digest = hashlib.sha256()
    for i in range(chunks):  # hash first, so the timed part below is the transfer
        digest.update(chunk(i))
    start = time.monotonic()
    with socket.create_connection((HOST, public_port), timeout=60) as sock:
        for i in range(chunks):
            sock.sendall(chunk(i))
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
    elapsed = time.monotonic() - start
    total = chunks * len(block)
    assert answer == f"{total} {digest.hexdigest()}\n".encode()
    rate = total / elapsed / 1e6
    record_property("throughput_MBps", round(rate))
    print(f"\n1 GiB through relay + forwarder in {elapsed:.2f} s: {rate:.0f} MB/s")
