"""The public client's address reaches a real nginx / haproxy as a PROXY protocol header.

Path: public client (from 127.0.0.5) -> relay (v2, client-addr negotiated) ->
forwarder (``proxy_protocol`` 1 or 2) -> nginx (``listen ... proxy_protocol``)
or haproxy (``bind ... accept-proxy``), which answers with the address it took
from the header.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import PUBLIC_CLIENT, ask_proxy_receiver, start_proxy_receiver

from relay.client.forwarder import Forwarder
from relay.server.relay import RelayServer
from relay.wire.proxy_header import (
    ProxyAddresses,
    addresses_of,
    parse_v2_fixed,
    parse_v2_payload,
    v1_header,
    v2_header,
)
from relay_support import Processes

HOST = "127.0.0.1"
SECRET = "proxy protocol secret"
RECEIVERS = {"nginx": "nginx", "haproxy": "haproxy"}

pytestmark = pytest.mark.e2e


async def run_forwarder(
    relay_port: int, local_port: int, version: int
) -> tuple[asyncio.Task[int], int]:
    endpoints: asyncio.Queue[str] = asyncio.Queue()
    forwarder = Forwarder(
        HOST,
        relay_port,
        local_port,
        reconnect=False,
        secret=SECRET,
        proxy_protocol=version,
        on_endpoint=endpoints.put_nowait,
    )
    task = asyncio.create_task(forwarder.run())
    endpoint = await asyncio.wait_for(endpoints.get(), 10)
    return task, int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_proxy_header_carries_the_public_client(
    kind: str, version: int, procs: Processes, tmp_path: Path
) -> None:
    program = require_program(RECEIVERS[kind])
    _, receiver_port = start_proxy_receiver(procs, kind, program, tmp_path)
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        task, public_port = await run_forwarder(server.port, receiver_port, version)
        try:
            for _ in range(2):  # every connection gets its own header
                said, source = await asyncio.to_thread(ask_proxy_receiver, kind, public_port)
                assert said == source
                assert said.startswith(PUBLIC_CLIENT + " ")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_headers_byte_for_byte() -> None:
    addresses = ProxyAddresses(("127.0.0.5", 40000), ("127.0.0.1", 5000))
    assert v1_header(addresses) == b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 5000\r\n"
    assert v1_header(None) == b"PROXY UNKNOWN\r\n"
    header = v2_header(addresses)
    assert header == (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x05\x7f\x00\x00\x01\x9c\x40\x13\x88"
    )
    assert parse_v2_payload(*parse_v2_fixed(header[:16])[:2], header[16:]) == addresses
    six = ProxyAddresses(("2001:db8::5", 1), ("::1", 2))
    assert v1_header(six) == b"PROXY TCP6 2001:db8::5 ::1 1 2\r\n"
    six_header = v2_header(six)
    assert len(six_header) == 16 + 36
    assert parse_v2_payload(*parse_v2_fixed(six_header[:16])[:2], six_header[16:]) == six
    assert v2_header(None) == b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


def test_dual_stack_addresses_become_ipv4() -> None:
    got = addresses_of(("::ffff:127.0.0.5", 40000, 0, 0), ("::ffff:127.0.0.1", 5000, 0, 0))
    assert got == ProxyAddresses(("127.0.0.5", 40000), ("127.0.0.1", 5000))
    assert addresses_of(None, None) is None
