"""The registering side and the class of a refusal (docs/protocol.md 1.1).

A permanent refusal stops the forwarder (exit 78, one ERROR line that says
what to fix) and ``RelayedServer`` (``wait_endpoint``/``serve_forever`` raise
PermanentRefusalError), unless told to keep trying: then the delays grow from
``reconnect_max_delay`` towards minutes. A retry refusal keeps the usual
backoff, waiting at least its ``retry-after``; a line without a class (an
older relay) is a retry unless it is an auth failure, as before.

The relay processes here are real; the relays that answer with one scripted
line stand for a relay of another version (this one's lines, classes
included, are specified in docs/protocol.md and tested in test_refusal.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

import relay
from relay.client.forwarder import EXIT_REFUSED
from relay.client.relayed_server import RelayedServer
from relay.server.relay import RelayServer
from relay.wire.v2 import AuthenticationError, SeedRelayError
from relay_support import Processes, echo_roundtrip, wait_until

HOST = "127.0.0.1"
SECRET = "3c5e8a1f0b7d924e6a1c3f5b8d0e2a47"
OTHER_SECRET = "d41f7a2c9e0b8356c1a4f7e2b9d05c83"
FAST = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.1}
RETRYING = re.compile(r"a permanent refusal, retrying in ([0-9.]+) s")


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


# ------------------------------------------------------------ the forwarder
def test_forwarder_with_another_secret_exits_at_once_saying_what_to_fix(
    procs: Processes,
) -> None:
    relay_proc, control = procs.relay("--secret", SECRET)
    forwarder = procs.start_forwarder(control, 9, "--secret", OTHER_SECRET)
    assert forwarder.wait(15) == EXIT_REFUSED
    errors = [line for line in forwarder.stderr_text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, forwarder.stderr_text
    assert "auth failed: wrong secret" in errors[0]
    assert "stopped, as trying again cannot succeed: use the relay's secret" in errors[0]
    assert "--retry-permanent" in errors[0]
    assert forwarder.stdout_text == ""
    relay_proc.wait_line(r"refusing registration from .*: auth failed: wrong secret")
    assert relay_proc.stderr_text.count("auth failed: wrong secret") == 1  # one try only


def test_retry_permanent_keeps_trying_ever_slower_until_the_relay_accepts(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    """A client the auth file does not know yet: refused for good, retried as asked with
    doubling delays, and registered once the operator adds it."""
    auth = tmp_path / "clients.toml"
    alice = f'[clients.alice]\nsecret = "{SECRET}"\n'
    auth.write_text(alice)
    _, control = procs.relay("--auth-file", str(auth))
    forwarder = procs.start_forwarder(
        control,
        echo_port,
        "--client-name",
        "carol",
        "--secret",
        OTHER_SECRET,
        "--retry-permanent",
        "--reconnect-delay",
        "0.05",
        "--reconnect-max-delay",
        "0.5",
    )

    def delays() -> list[float]:
        return [float(d) for d in RETRYING.findall(forwarder.stderr_text)]

    wait_until(lambda: len(delays()) >= 3, 15)
    first, second, third = delays()[:3]  # 0.5, 1, 2 s +-20 %: the 4th try comes 2 s later
    assert first == pytest.approx(0.5, rel=0.21)  # from --reconnect-max-delay
    assert first < second < third
    assert third > 1.5 * first * 2
    assert "unknown client or wrong secret" in forwarder.stderr_text
    assert forwarder.alive
    auth.write_text(alice + f'[clients.carol]\nsecret = "{OTHER_SECRET}"\n')
    _, match = forwarder.wait_line(r"^127\.0\.0\.1:(\d+)$", stream="stdout")
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"
    forwarder.wait_line(r"succeeded after \d+ failed attempt")


# ------------------------------------------------------------ the Python API
async def test_the_python_api_raises_a_permanent_refusal() -> None:
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        with pytest.raises(AuthenticationError) as first:
            await relay.start_server(echo_handler, HOST, server.port, secret=OTHER_SECRET)
        assert first.value.permanent
        served = RelayedServer(echo_handler, HOST, server.port, secret=OTHER_SECRET)
        await served.start(retry=True)  # the forwarder's way: no first failure raised
        with pytest.raises(relay.PermanentRefusalError, match="auth failed: wrong secret") as got:
            await asyncio.wait_for(served.wait_endpoint(), 10)
        assert got.value.permanent
        assert got.value.reason == "auth failed: wrong secret"
        assert isinstance(got.value.__cause__, AuthenticationError)
        assert isinstance(got.value, relay.RelayRefusedError)
        with pytest.raises(relay.PermanentRefusalError):
            await served.serve_forever()
        assert served.refusal is got.value.__cause__
        assert served.registrations == 0


@pytest.mark.parametrize(
    ("relay_options", "client_options", "error", "fix"),
    [
        ({"secret": SECRET}, {}, AuthenticationError, "give the relay's secret"),
        ({}, {"require_v2": True}, SeedRelayError, "a relay that speaks registration v2"),
    ],
    ids=["no-secret-for-a-relay-that-requires-one", "require-v2-against-a-seed-relay"],
)
async def test_refusals_of_our_own_are_permanent_too(
    relay_options: dict[str, str],
    client_options: dict[str, bool],
    error: type[Exception],
    fix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with RelayServer(0, bind=HOST, **relay_options) as server:  # type: ignore[arg-type]
        served = RelayedServer(echo_handler, HOST, server.port, **client_options, **FAST)
        async with served:
            await served.start(retry=True)
            with pytest.raises(relay.PermanentRefusalError) as got:
                await asyncio.wait_for(served.wait_endpoint(), 10)
        assert isinstance(got.value.__cause__, error)
        async with asyncio.timeout(5):  # a seed relay frees the port it opened once it sees EOF
            while server.sessions:  # noqa: ASYNC110 - the relay has no event for it
                await asyncio.sleep(0.01)
    stopped = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(stopped) == 1
    assert fix in stopped[0].getMessage()


async def test_a_revoked_client_stops_instead_of_knocking_forever(tmp_path: Path) -> None:
    """Registered, then removed from the auth file: the session is cut, the next try is
    refused for good, and serve_forever() says so."""
    auth = tmp_path / "clients.toml"
    auth.write_text(f'[clients.alice]\nsecret = "{SECRET}"\n')
    async with RelayServer(0, bind=HOST, auth_file=auth) as server:
        served = await relay.start_server(
            echo_handler, HOST, server.port, client_name="alice", secret=SECRET, **FAST
        )
        async with served:
            auth.write_text(f'[clients.bob]\nsecret = "{OTHER_SECRET}"\n')
            with pytest.raises(relay.PermanentRefusalError, match="unknown client"):
                await asyncio.wait_for(served.serve_forever(), 15)
            assert served.registrations == 1


# ------------------------------------------ a relay of another version: one line
async def run_against(line: bytes, seconds: float, **options: object) -> tuple[int, RelayedServer]:
    """How many times a RelayedServer (started as the forwarder does) tried a relay that
    answers ``line``, within ``seconds``, and the server (closed)."""
    count = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        writer.write(line)
        writer.close()
        await writer.wait_closed()

    listener = await asyncio.start_server(answer, HOST, 0)
    port = listener.sockets[0].getsockname()[1]
    served = RelayedServer(echo_handler, HOST, port, **{**FAST, **options})  # type: ignore[arg-type]
    try:
        await served.start(retry=True)
        await asyncio.sleep(seconds)
    finally:
        served.close()
        await served.wait_closed()
        listener.close()
        await listener.wait_closed()
    return count, served


@pytest.mark.parametrize(
    ("line", "permanent"),
    [
        (b"error: auth failed: wrong secret; refusal=permanent\n", True),
        (b"error: port 80 is outside the relay's port range 5000-5099; refusal=permanent\n", True),
        (b"error: relay is full: 2 sessions, the maximum; refusal=retry\n", False),
        (b"error: auth failed: wrong secret\n", True),  # an older relay: no class
        (b"error: relay is full: 2 sessions, the maximum (--max-sessions 2)\n", False),
        (b"error: bad; refusal=sometimes\n", False),  # an unknown class counts as none
    ],
)
async def test_the_class_decides_whether_to_go_on(line: bytes, permanent: bool) -> None:
    tries, served = await run_against(line, 1.0)
    if permanent:
        assert tries == 1
        assert served.refusal is not None
        assert served.refusal.permanent
    else:
        assert tries >= 4  # 0.05, 0.1, 0.1, ... s apart
        assert served.refusal is None


async def test_retry_after_is_the_least_wait(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "relay.api")
    line = b"error: too many failed registrations from 127.0.0.1; refusal=retry retry-after=1\n"
    tries, served = await run_against(line, 1.5)
    assert tries == 2
    waits = [float(w) for w in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]
    assert waits
    assert all(1.0 <= wait <= 1.2 for wait in waits)
    assert served.refusal is None
