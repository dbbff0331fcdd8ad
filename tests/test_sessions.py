"""A service over several sessions (``sessions=K``): one public port, K registrations.

In-process RelayServer and ``relay.start_server`` on real sockets: the
sessions join the first one's port (SO_REUSEPORT), the kernel spreads public
connections over them, losing one leaves the port served by the others, and
only the identity that holds the port may join it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import relay
from relay.errors import RelayRefusedError
from relay.wire.v2 import Challenge, HandshakeError, parse_response, response_line

HOST = "127.0.0.1"


@pytest.fixture
async def relay_v2() -> AsyncIterator[relay.RelayServer]:
    async with relay.RelayServer(0, bind=HOST, protocol="v2") as server:
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


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.01)


def test_the_response_carries_sessions_only_when_offered_and_with_a_name() -> None:
    offered = Challenge.fresh(auth_required=False)
    line = response_line(offered, secret=None, name="web", sessions=3)
    assert line == b"relay/2 name=web sessions=3\n"
    assert parse_response(line.rstrip(b"\n"), offered).sessions == 3
    assert parse_response(b"relay/2 name=web", offered).sessions == 1
    older = Challenge(offered.nonce, False, frozenset({"client-addr", "service"}))
    with pytest.raises(HandshakeError, match="sessions was not offered"):
        parse_response(b"relay/2 name=web sessions=2", older)
    for bad in (b"sessions=0", b"sessions=17", b"sessions=x"):
        with pytest.raises(HandshakeError, match="must be 1-16"):
            parse_response(b"relay/2 name=web " + bad, offered)
    with pytest.raises(HandshakeError, match="needs name="):
        parse_response(b"relay/2 sessions=2", offered)
    with pytest.raises(relay.OptionError, match="sessions=2: several sessions"):
        relay.RegistrationOptions(sessions=2)


async def test_k_sessions_share_one_port_and_the_kernel_spreads_connections(relay_v2) -> None:
    server = await relay.start_server(echo, HOST, relay_v2.port, name="web", sessions=3)
    async with server:
        await until(lambda: len(relay_v2.sessions) == 3)
        assert {s.public_port for s in relay_v2.sessions} == {server.public_port}
        assert len(server.sessions) == 3
        payloads = [bytes([i]) * 10_000 for i in range(60)]
        replies = await asyncio.gather(*(roundtrip(server.public_port, p) for p in payloads))
        assert replies == payloads
        served = [s.connections for s in relay_v2.sessions]  # all closed by now
        assert served == [0, 0, 0]
        totals = [s.bytes_in for s in relay_v2.sessions]
        assert sum(totals) == sum(map(len, payloads))
        assert all(totals), f"a session got no connection out of 60: {totals}"


async def test_losing_one_session_leaves_the_port_served_and_it_joins_again(relay_v2) -> None:
    server = await relay.start_server(
        echo, HOST, relay_v2.port, name="web", sessions=2, reconnect_delay=0.1
    )
    async with server:
        await until(lambda: len(relay_v2.sessions) == 2)
        port = server.public_port
        first = relay_v2._sessions[min(relay_v2._sessions)]
        first.end("cut for the test")
        await until(lambda: len(server.sessions) == 1)
        for _ in range(20):  # the other session serves every connection meanwhile
            assert await roundtrip(port, b"still here") == b"still here"
        await until(lambda: len(relay_v2.sessions) == 2 and len(server.sessions) == 2)
        assert {s.public_port for s in relay_v2.sessions} == {port}
        assert server.public_port == port
        assert server.registrations == 3


async def test_only_the_identity_joins_and_an_unoffered_relay_gets_one_session() -> None:
    async with relay.RelayServer(0, bind=HOST, protocol="v2") as relay_server:
        server = await relay.start_server(echo, HOST, relay_server.port, name="web", sessions=2)
        async with server:
            await until(lambda: len(relay_server.sessions) == 2)
            with pytest.raises(RelayRefusedError, match=r"port \d+ is in use by another client"):
                await relay.register(
                    HOST, relay_server.port, name="other", remote_port=server.public_port
                )
            # the same name without sessions= cannot join a port of several sessions, nor
            # replace its live sessions
            with pytest.raises(RelayRefusedError, match="is already registered"):
                await relay.register(HOST, relay_server.port, name="web")
            assert len(relay_server.sessions) == 2
    async with relay.RelayServer(0, bind=HOST) as seed_relay:  # seed: no sessions feature
        server = await relay.start_server(echo, HOST, seed_relay.port, name="web", sessions=2)
        async with server:
            await asyncio.sleep(0.2)
            assert len(seed_relay.sessions) == 1
            assert len(server.sessions) == 1


async def test_the_sessions_of_one_service_are_one_series_in_the_metrics(relay_v2) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from relay.ops.metrics import RelayCollector

    server = await relay.start_server(echo, HOST, relay_v2.port, name="web", sessions=2)
    async with server:
        await until(lambda: len(relay_v2.sessions) == 2)
        for n in range(10):
            assert await roundtrip(server.public_port, b"x" * (n + 1)) == b"x" * (n + 1)
        registry = CollectorRegistry()
        registry.register(RelayCollector(relay_v2))
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
    # Unauthenticated: the name is no label value; the public port names the service.
    labels = {"client": "anonymous", "service": str(server.public_port)}
    series = [(s.labels, s.value) for s in families["relay_service_bytes"].samples]
    assert series == [({**labels, "direction": "in"}, 55), ({**labels, "direction": "out"}, 55)]
    assert [(s.labels, s.value) for s in families["relay_service_sessions"].samples] == [
        (labels, 2)
    ]
    assert len(families["relay_keepalive_rtt_seconds"].samples) == 1


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_joining_session_is_handed_on_unless_it_came_over_tls(tls: bool, tmp_path) -> None:
    """With several workers the identity table asks to move the second session of a service
    to a worker without one; only a plaintext connection can be handed on (a TLS one keeps
    its state in this process), so a TLS one joins here."""
    from conftest import require_program
    from registration_support import make_certificates

    from relay.server.identities import IdentityTable
    from relay.wire.tls import client_context, server_context

    ssl_server = ssl_client = None
    if tls:
        require_program("openssl")
        certs = make_certificates(tmp_path)
        ssl_server = server_context(certs.server_cert, certs.server_key)
        ssl_client = client_context(certs.ca)
    handed: list[int] = []

    def hand_off(transport, early, request, worker) -> None:
        handed.append(worker)
        transport.abort()

    async with relay.RelayServer(0, bind=HOST, protocol="v2", ssl=ssl_server) as relay_server:
        relay_server.registrar.identities = IdentityTable(
            relay_server._settle_here, workers=lambda: [0, 1]
        )
        relay_server.hand_off = hand_off
        server = await relay.start_server(
            echo, HOST, relay_server.port, name="web", sessions=2, ssl=ssl_client
        )
        async with server:
            if tls:
                await until(lambda: len(relay_server.sessions) == 2)
                assert handed == []
                assert await roundtrip(server.public_port, b"joined") == b"joined"
            else:
                await until(lambda: len(handed) >= 1)
                assert handed[0] == 1  # the worker that holds none of "web"
                assert len(relay_server.sessions) == 1
