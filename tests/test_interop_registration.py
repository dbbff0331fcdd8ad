"""Registration v2 against the Go seed peers (hashicorp/yamux, in podman).

* The Go forwarder (seed protocol only) against a relay that requires v2: it
  exits at once with the challenge's readable start, and nothing is allocated.
* Our v2-capable client against the Go relay (seed only): it sees a plain port
  line, registers in seed mode, and says its secret was not used; with
  ``require_v2`` it refuses the relay instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import ask_proxy_receiver, listening_ports, start_proxy_receiver

import relay
from interop import harness
from relay.client.forwarder import Forwarder
from relay.client.relayed_server import RelayedServer
from relay.server.relay import RelayServer
from relay_support import Processes

pytestmark = [pytest.mark.interop, pytest.mark.e2e]

HOST = "127.0.0.1"
SECRET = "an interop secret, strong enough"


@pytest.fixture(scope="module")
def go_programs() -> None:
    reason = harness.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    harness.build_image()


@pytest.mark.parametrize(
    "relay_options", [{"secret": SECRET}, {"protocol": "v2"}], ids=["secret", "protocol-v2"]
)
async def test_go_forwarder_fails_clearly_against_a_v2_relay(
    go_programs: None, relay_options: dict[str, str]
) -> None:
    async with RelayServer(0, bind=HOST, **relay_options) as server:  # type: ignore[arg-type]
        before = listening_ports(os.getpid())
        proc = harness.start(
            "go-forwarder", "-relay", f"{HOST}:{server.port}", "-local", f"{HOST}:9"
        )
        try:
            finished = await proc.await_exit(within=60)
        finally:
            proc.close()
        assert finished.returncode == 1
        assert 'port line too long: "error: v2 needed"' in finished.stderr
        assert finished.stdout == ""  # no endpoint announced
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []


async def test_v2_client_registers_with_the_go_relay_in_seed_mode(
    go_programs: None, caplog: pytest.LogCaptureFixture
) -> None:
    go_relay, control_port = harness.start_relay()
    try:

        async def handler(reader, writer) -> None:  # type: ignore[no-untyped-def]
            writer.write(b"seed mode ok\n")
            await writer.drain()

        async with await relay.start_server(handler, HOST, control_port, secret=SECRET) as served:
            assert served.client_address is False
            reader, writer = await asyncio.open_connection(HOST, served.public_port)
            assert await asyncio.wait_for(reader.readline(), 10) == b"seed mode ok\n"
            writer.close()
            await writer.wait_closed()
    finally:
        go_relay.close()
    assert "the relay speaks the seed protocol" in caplog.text
    assert "a secret not used" in caplog.text


async def test_require_v2_refuses_the_go_relay(go_programs: None) -> None:
    """The opt-in against a downgrade: the Go relay's port line is an error, not seed mode,
    and a permanent one (that relay will send its port line again)."""
    go_relay, control_port = harness.start_relay()
    try:
        with pytest.raises(relay.SeedRelayError, match="did not offer registration v2") as info:
            await relay.start_server(
                lambda r, w: asyncio.sleep(0), HOST, control_port, secret=SECRET, require_v2=True
            )
        assert info.value.permanent
    finally:
        go_relay.close()


async def test_the_go_relay_refusing_is_retried_as_before(
    go_programs: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The Go relay refuses by closing the connection without a line (here: it cannot open
    a public port on an address it does not have). No class, no auth failure: a client
    keeps trying, as it always did."""
    caplog.set_level(logging.DEBUG, "relay.api")
    go_relay, control_port = harness.start_relay("-public-bind", "192.0.2.1")
    try:
        served = RelayedServer(
            lambda r, w: asyncio.sleep(0),
            HOST,
            control_port,
            reconnect_delay=0.05,
            reconnect_max_delay=0.1,
        )
        async with served:
            await served.start(retry=True)
            await asyncio.sleep(1.5)
            assert served.refusal is None
            assert served.registrations == 0
    finally:
        go_relay.close()
    failed = [r.getMessage() for r in caplog.records if "cannot register" in r.getMessage()]
    assert len(failed) >= 5  # each try at DEBUG, 0.05 s, 0.1 s, 0.1 s ... apart
    assert all("closed the connection before sending a port line" in m for m in failed)
    assert "a permanent refusal" not in caplog.text
    assert "stopped" not in caplog.text


@pytest.mark.parametrize("version", [1, 2])
async def test_proxy_protocol_forwarder_behind_the_go_relay(
    go_programs: None,
    version: int,
    procs: Processes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No client address from a seed relay: nginx still gets a valid (UNKNOWN/LOCAL) header."""
    nginx = require_program("nginx")
    _, receiver = start_proxy_receiver(procs, "nginx", nginx, tmp_path)
    go_relay, control_port = harness.start_relay()
    try:
        endpoints: asyncio.Queue[str] = asyncio.Queue()
        forwarder = Forwarder(
            HOST,
            control_port,
            receiver,
            reconnect=False,
            proxy_protocol=version,
            on_endpoint=endpoints.put_nowait,
        )
        task = asyncio.create_task(forwarder.run())
        try:
            public = int((await asyncio.wait_for(endpoints.get(), 20)).rsplit(":", 1)[1])
            said, _ = await asyncio.to_thread(ask_proxy_receiver, "nginx", public)
            assert said == ""  # nginx accepted the header and knows no address
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        go_relay.close()
    assert "the relay does not send client addresses" in caplog.text
