"""Three relays on one real redis-server (``--cluster``), one forwarder registered with all:
the same port on every relay, a relay killed with -9, Redis restarted during registrations.

Real processes throughout: redis-server, three ``relay server`` on 127.0.0.2-4, the
``relay forward`` CLI, an echo service, public clients on plain sockets.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import relay
from cluster_support import RELAY_ADDRESSES, ClusterRelay, RedisServer, cluster_relays
from relay import RelayServer
from relay_support import free_port_block, relay_command, wait_until
from testkit.ports import free_port
from testkit.procs import Proc

pytestmark = pytest.mark.e2e

BACKOFF = ("--reconnect-delay", "0.2", "--reconnect-max-delay", "1")
MAX_DELAY = 1.0
ENDPOINT = re.compile(r"^(?:(\S+) )?(127\.0\.0\.\d+):(\d+)$")


def endpoints(proc: Proc) -> list[tuple[str | None, str, int]]:
    """Every endpoint line the forwarder printed: (service, relay address, port)."""
    found = []
    for line in proc.stdout:
        match = ENDPOINT.match(line.strip())
        if match:
            found.append((match.group(1), match.group(2), int(match.group(3))))
    return found


def forwarder(procs, relays: list[ClusterRelay], *args: str) -> Proc:
    more = [arg for relay in relays for arg in ("--relay", relay.endpoint)]
    return procs.start([*relay_command(), "forward", *more, *BACKOFF, *args], "forwarder")


def transfer(address: str, port: int, size: int, pause: threading.Event | None = None) -> bool:
    """Send ``size`` random bytes through the echo service and compare what comes back;
    with ``pause``, the transfer waits for it half way (so it is in flight then)."""
    data = os.urandom(size)
    received = bytearray()
    with socket.create_connection((address, port), timeout=20) as sock:
        half = size // 2
        sock.sendall(data[:half])
        while len(received) < half:
            received += sock.recv(1 << 16)
        if pause is not None:
            pause.wait(20)
        sock.sendall(data[half:])
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(1 << 16):
            received += chunk
    return bytes(received) == data


def test_kill_9_one_relay_during_100_transfers(procs, tmp_path, echo_port):
    redis = RedisServer(procs, tmp_path).start()
    low, high = free_port_block(10)
    relays = cluster_relays(procs, redis, "--port-range", f"{low}-{high}")
    a, b, c = relays
    fwd = forwarder(procs, relays, "--name", "echo", str(echo_port))
    wait_until(lambda: len(endpoints(fwd)) == 3, timeout=20, message="three endpoints")
    ports = {port for _, _, port in endpoints(fwd)}
    assert len(ports) == 1, endpoints(fwd)  # the same port on every relay
    (port,) = ports
    assert {address for _, address, _ in endpoints(fwd)} == {a.address, b.address, c.address}

    halfway = threading.Event()
    through_a = [a.address] * 10
    survivors = [b.address, c.address] * 50  # 100 transfers through the relays that live
    with ThreadPoolExecutor(max_workers=len(survivors) + len(through_a)) as pool:
        lost = [pool.submit(transfer, address, port, 64 * 1024, halfway) for address in through_a]
        kept = [pool.submit(transfer, address, port, 256 * 1024, halfway) for address in survivors]
        time.sleep(1.0)  # every transfer is half way now, waiting for the other half
        a.kill()
        killed_at = time.monotonic()
        # New connections through the survivors are served at once, while A is dead.
        assert transfer(b.address, port, 4096)
        assert transfer(c.address, port, 4096)
        served_after = time.monotonic() - killed_at
        halfway.set()
        intact = sum(future.result() for future in kept)
        for future in lost:
            assert future.exception() is not None or not future.result()
    assert intact == len(survivors), f"{intact}/{len(survivors)} transfers intact"
    assert served_after < 1.0

    # A comes back: the forwarder registers there again, on the same port, within one
    # backoff step of the relay listening again.
    before = len(endpoints(fwd))
    a.start()
    back_at = time.monotonic()
    wait_until(lambda: len(endpoints(fwd)) > before, timeout=10, message="back on relay A")
    took = time.monotonic() - back_at
    assert endpoints(fwd)[-1] == (None, a.address, port)
    assert took <= MAX_DELAY * 1.2 + 0.5, f"back on A after {took:.2f} s"
    assert transfer(a.address, port, 4096)
    print(
        f"kill -9: {intact}/{len(survivors)} intact, survivors served {served_after:.3f} s "
        f"after the kill, back on A {took:.2f} s after it listened again"
    )


def test_redis_restarts_during_registrations(procs, tmp_path, echo_port):
    redis = RedisServer(procs, tmp_path).start()
    low, high = free_port_block(12)
    relays = cluster_relays(procs, redis, "--port-range", f"{low}-{high}")
    first = forwarder(
        procs, relays, *(arg for n in range(3) for arg in ("--service", f"s{n}={echo_port}"))
    )
    wait_until(lambda: len(endpoints(first)) == 9, timeout=20, message="3 services x 3 relays")
    before = {(name, port) for name, _, port in endpoints(first)}
    assert len(before) == 3  # one port per service, the same on every relay

    redis.stop()
    # Registrations while Redis is away are refused with a reason, "retry later".
    second = forwarder(
        procs, relays, *(arg for n in range(3) for arg in ("--service", f"t{n}={echo_port}"))
    )
    second.wait_line(r"lease store is unavailable .*; retry later; retrying in")
    # Data already flowing never waits for the store.
    for _, address, port in endpoints(first):
        assert transfer(address, port, 16 * 1024)
    for one in relays:
        assert one.proc is not None
        one.proc.wait_line(r"cannot be reached")
    redis.start()
    wait_until(lambda: len(endpoints(second)) == 9, timeout=20, message="second forwarder in")
    after = {(name, port) for name, _, port in endpoints(second)}
    assert len(after) == 3
    ports = [port for _, port in before | after]
    assert len(ports) == len(set(ports)) == 6, (before, after)  # no port for two services
    assert {(name, port) for name, _, port in endpoints(first)} == before  # no lease lost
    for one in relays:
        assert one.proc is not None
        one.proc.wait_line(r"is back after")
        stderr = one.proc.stderr_text
        assert stderr.count("cannot be reached") == 1, stderr  # said once, not per attempt
        assert stderr.count("is back after") == 1, stderr
    for _, address, port in endpoints(second):
        assert transfer(address, port, 16 * 1024)


def first_line(address: str, port: int, answer: bytes | None = None) -> bytes:
    """The relay's first line (and, with ``answer`` sent, its second)."""
    with socket.create_connection((address, port), timeout=10) as sock:
        reader = sock.makefile("rb")
        line = reader.readline()
        if answer is not None and b"relay/2" in line:
            sock.sendall(answer)
            line = reader.readline()
        return line


def test_failed_registrations_on_one_relay_block_the_source_on_all(procs, tmp_path):
    redis = RedisServer(procs, tmp_path).start()
    secret = tmp_path / "secret"
    secret.write_text("a long enough secret\n")
    relays = cluster_relays(procs, redis, "--secret-file", str(secret))
    a, b, _ = relays
    wrong = b"relay/2 proof=" + b"0" * 64 + b"\n"
    for _ in range(5):  # the default limit: 5 failures within 60 s
        assert first_line(a.address, a.port, wrong).startswith(b"error: auth failed")
    wait_until(
        lambda: first_line(b.address, b.port).startswith(
            b"error: too many failed registrations from 127.0.0.1"
        ),
        timeout=5,
        interval=0.2,
        message="relay B never refused the source that failed on relay A",
    )


async def echo_handler(reader, writer) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def roundtrip(address: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(address, port)
    writer.write(data)
    writer.write_eof()
    received = await reader.read()
    writer.close()
    await writer.wait_closed()
    return received


async def test_start_server_on_two_relays_and_readiness_without_redis(procs, tmp_path):
    redis = RedisServer(procs, tmp_path).start()
    port = free_port()
    first, second = (
        RelayServer(port, bind=address, cluster=redis.url) for address in RELAY_ADDRESSES[:2]
    )
    await first.start()
    await second.start()
    server = await relay.start_server(
        echo_handler,
        RELAY_ADDRESSES[0],
        port,
        name="api",
        relays=[(RELAY_ADDRESSES[1], port), (RELAY_ADDRESSES[0], port)],  # one twice: once
        reconnect_delay=0.1,
        reconnect_max_delay=0.5,
    )
    try:
        assert isinstance(server, relay.RelayedServers)
        await asyncio.wait_for(asyncio.gather(*(s.wait_endpoint() for s in server.servers)), 10)
        public = server.public_port
        assert public is not None
        assert sorted(server.public_endpoints) == [f"{a}:{public}" for a in RELAY_ADDRESSES[:2]]
        for address in RELAY_ADDRESSES[:2]:
            assert await roundtrip(address, public, b"hello\n") == b"hello\n"
        assert first.readiness().ready
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(
            wait_until, lambda: not first.readiness().ready, 10, 0.05, "still ready without Redis"
        )
        assert "cannot be reached" in first.readiness().reason
        assert await roundtrip(RELAY_ADDRESSES[1], public, b"still\n") == b"still\n"
        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(wait_until, lambda: first.readiness().ready, 10, 0.05)
    finally:
        server.close()
        await server.wait_closed()
        for relay_server in (first, second):
            relay_server.close()
            await relay_server.wait_closed()
