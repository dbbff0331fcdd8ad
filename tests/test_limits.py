"""relay.limits through a real RelayServer: idle timeout and per-source shares.

Other sources are other loopback addresses (127.0.0.2, ...): the whole
127.0.0.0/8 is local, so a client can bind one as its source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess

import pytest

import relay
from relay.server.limits import IdleWatch, SourceSlots, share, source_of
from relay_support import closed_without_data, relay_command

HOST = "127.0.0.1"
OTHER = "127.0.0.2"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def roundtrip(port: int, source: str, payload: bytes = b"hello\n") -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_by_relay(reader: asyncio.StreamReader) -> bool:
    """True once the relay closed or reset the connection."""
    try:
        return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def refused(port: int) -> bool:
    """True if the relay resets or closes a new connection to ``port``."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except ConnectionResetError:
        return True
    try:
        return await closed_by_relay(reader)
    finally:
        writer.transport.abort()


def test_source_of_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_of(("10.1.2.3", 5)) == "10.1.2.3"
    assert source_of(("::ffff:10.1.2.3", 5, 0, 0)) == "10.1.2.3"
    assert source_of(("2001:db8:1:2:aaaa::1", 5, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:2:bbbb::9", 5, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(None) == "unknown"


def test_source_slots_and_defaults() -> None:
    slots = SourceSlots(2)
    first, second = slots.acquire("a"), slots.acquire("a")
    assert first is not None
    assert second is not None
    assert slots.acquire("a") is None
    assert slots.acquire("b") is not None
    first.release()
    first.release()  # a second release gives back nothing more
    assert slots.held("a") == 1
    with second.hand_over():  # the new holder releases it, the old one no longer can
        second.release()
        assert slots.held("a") == 1
    assert slots.held("a") == 0
    assert SourceSlots(0).acquire("a") is not None  # 0: no limit
    assert share(None, 1000) == 900
    assert share(None, relay.RelayOptions().max_connections) >= 5000  # a burst of 5,000
    assert share(None, 2) == 2
    assert share(7, 1000) == 7
    with pytest.raises(ValueError, match=r"^idle_timeout=-1: must be 0 \(off\) or more$"):
        relay.RelayServer(idle_timeout=-1)
    with pytest.raises(ValueError, match=r"^max_connections_per_source=-1: must be at least 0$"):
        relay.RelayServer(max_connections_per_source=-1)


async def test_idle_watch_ticks_only_while_open() -> None:
    """IdleWatch on its own: idle ends are reported once; after close(), never."""

    class End:
        activity = 0

    idle: list[object] = []
    watch = IdleWatch(0.1, idle.append)
    busy, quiet = End(), End()
    watch.watch(busy)  # type: ignore[arg-type]
    watch.watch(quiet)  # type: ignore[arg-type]
    for _ in range(15):  # 0.3 s, a change every 20 ms: never idle for 0.1 s
        busy.activity += 1
        await asyncio.sleep(0.02)
    assert idle == [quiet]
    watch.close()
    watch.watch(quiet)  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert idle == [quiet]


async def test_idle_watch_closes_between_timeout_and_two_ticks_after_the_last_byte() -> None:
    """Counting quiet ticks: a byte just before a tick, or a watch just before one, must
    not shorten the timeout; nor may the close come later than two ticks past it."""

    class End:
        activity = 0

    loop = asyncio.get_running_loop()
    idle_at: dict[str, float] = {}
    ends = {"early": End(), "late": End(), "busy": End()}
    watch = IdleWatch(
        0.2,
        lambda end: idle_at.setdefault(next(k for k, v in ends.items() if v is end), loop.time()),
    )  # tick: 0.05 s
    start = loop.time()
    watch.watch(ends["early"])  # type: ignore[arg-type]
    await asyncio.sleep(0.04)
    watch.watch(ends["late"])  # type: ignore[arg-type]  # just before the first tick
    watch.watch(ends["busy"])  # type: ignore[arg-type]
    ends["busy"].activity += 1
    last_byte = loop.time()
    await asyncio.sleep(0.6)
    watch.close()
    # at most two ticks (0.1 s) late, plus slack for a loaded machine
    assert 0.2 <= idle_at["early"] - start < 0.2 + 0.3
    assert 0.2 <= idle_at["late"] - (start + 0.04) < 0.2 + 0.3
    assert 0.2 <= idle_at["busy"] - last_byte < 0.2 + 0.3


async def test_idle_public_connections_are_reset_active_ones_stay() -> None:
    async with (
        relay.RelayServer(0, bind=HOST, idle_timeout=0.5) as relay_server,
        await relay.start_server(echo, HOST, relay_server.port) as server,
    ):
        idle_reader, idle_writer = await asyncio.open_connection(HOST, server.public_port)
        busy_reader, busy_writer = await asyncio.open_connection(HOST, server.public_port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        idle_closed = loop.create_task(closed_by_relay(idle_reader))
        try:
            elapsed = None
            for _ in range(15):  # 1.5 s of a byte every 0.1 s: never idle
                busy_writer.write(b"x")
                assert await asyncio.wait_for(busy_reader.readexactly(1), 5) == b"x"
                await asyncio.sleep(0.1)
                if elapsed is None and idle_closed.done():
                    assert idle_closed.result()
                    elapsed = loop.time() - start
            assert elapsed is not None, "the idle connection is still open after 1.5 s"
            assert elapsed >= 0.5  # closed at the timeout, not before
            busy_writer.write_eof()
            assert await asyncio.wait_for(busy_reader.read(), 5) == b""
        finally:
            idle_closed.cancel()
            for writer in (idle_writer, busy_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


async def test_idle_timeout_zero_is_off() -> None:
    async with (
        relay.RelayServer(0, bind=HOST, idle_timeout=0) as relay_server,
        await relay.start_server(echo, HOST, relay_server.port) as server,
    ):
        reader, writer = await asyncio.open_connection(HOST, server.public_port)
        try:
            await asyncio.sleep(0.3)
            writer.write(b"still here")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"still here"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_one_source_cannot_take_every_public_connection() -> None:
    async with (
        relay.RelayServer(
            0, bind=HOST, max_connections=5, max_connections_per_source=3
        ) as relay_server,
        await relay.start_server(echo, HOST, relay_server.port) as server,
    ):
        held = [await asyncio.open_connection(HOST, server.public_port) for _ in range(3)]
        try:
            # The 4th is refused: reset before or after our connect() returned.
            assert await asyncio.wait_for(refused(server.public_port), 5)
            for reader, writer in held:  # the first three work
                writer.write(b"a")
                assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
            assert await roundtrip(server.public_port, OTHER) == b"hello\n"
        finally:
            for _, writer in held:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        # Slots come back when connections end.
        await asyncio.sleep(0.1)
        assert await roundtrip(server.public_port, HOST) == b"hello\n"


async def test_a_thousand_connections_from_one_address_pass_the_defaults() -> None:
    """A busy client behind one address holds 1,000 connections at once, all relayed
    (the per-source share once was 900)."""
    async with (
        relay.RelayServer(0, bind=HOST) as relay_server,
        await relay.start_server(echo, HOST, relay_server.port) as server,
    ):
        held = []
        try:
            for _ in range(1000):
                held.append(await asyncio.open_connection(HOST, server.public_port))
            for _, writer in held:
                writer.write(b"a")
            for reader, _ in held:
                assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
        finally:
            for _, writer in held:
                writer.close()
            for _, writer in held:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


async def test_a_file_limit_below_max_connections_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 2048)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with caplog.at_level(logging.WARNING, logger="relay.server"):
            async with relay.RelayServer(0, bind=HOST, max_connections=low - 200):
                pass
            assert "file descriptors" not in caplog.text
            async with relay.RelayServer(0, bind=HOST, max_connections=low):
                pass
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (
        f"file descriptors: at most {low} (ulimit -n), fewer than one service's "
        f"--max-connections {low} needs" in caplog.text
    )


async def test_one_source_holds_at_most_its_share_of_registrations() -> None:
    """Silent registrations (no answer to the handshake ping) from one address: beyond its
    share, a newer one takes the place of the oldest, whose session ends."""
    async with relay.RelayServer(
        0, bind=HOST, max_sessions=10, max_pending_registrations_per_source=2
    ) as relay_server:
        silent = []
        try:
            for _ in range(3):
                sock = socket.create_connection((HOST, relay_server.port))
                silent.append(sock)
            lines = [await asyncio.to_thread(_first_line, sock) for sock in silent]
            assert all(line.isdigit() for line in lines[1:])
            # The oldest gave way: after its port line (its session ends), or while its
            # port was being allocated (told why).
            assert lines[0].isdigit() or "this, its oldest, gave way" in lines[0], lines[0]
            assert await asyncio.to_thread(_closed, silent[0])
            assert relay_server.admission.places.held(HOST) == 2
            assert len(relay_server.sessions) == 2
            session = (await relay.register(HOST, relay_server.port, local_addr=(OTHER, 0))).session
            session.close()
            await session.wait_closed()
        finally:
            for sock in silent:
                sock.close()


async def test_registration_v2_challenges_count_per_source() -> None:
    """With registration v2 a connection is in progress from its challenge on."""
    async with relay.RelayServer(
        0, bind=HOST, protocol="v2", max_pending_registrations_per_source=2
    ) as relay_server:
        silent = []
        try:
            for _ in range(3):
                silent.append(socket.create_connection((HOST, relay_server.port)))
            lines = [await asyncio.to_thread(_first_line, sock) for sock in silent]
            assert all("nonce=" in line for line in lines)  # challenges
            gave_way = await asyncio.to_thread(_first_line, silent[0])
            assert gave_way.startswith("error: 127.0.0.1 started more registrations than")
            assert gave_way.endswith("refusal=retry")
            served = await relay.start_server(echo, HOST, relay_server.port, local_addr=(OTHER, 0))
            async with served:
                assert await roundtrip(served.public_port, HOST) == b"hello\n"
        finally:
            for sock in silent:
                sock.close()


def _closed(sock: socket.socket) -> bool:
    """Whether the relay closes ``sock`` within 5 s (whatever it sends before)."""
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def _first_line(sock: socket.socket) -> str:
    sock.settimeout(5)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


# ------------------------------------------------------------------ the CLI
def test_cli_options_and_env_vars_reach_the_relay(procs, echo_port, monkeypatch) -> None:
    """``--idle-timeout`` on the command line, the per-source limit from RELAY_* env."""
    monkeypatch.setenv("RELAY_MAX_CONNECTIONS_PER_SOURCE", "1")
    relay_proc, relay_port = procs.relay("--idle-timeout", "0.5")
    monkeypatch.delenv("RELAY_MAX_CONNECTIONS_PER_SOURCE")
    _, public_port = procs.forwarder(relay_port, echo_port)
    held = socket.create_connection((HOST, public_port), timeout=5)
    try:
        held.sendall(b"a")
        assert held.recv(1) == b"a"
        assert closed_without_data(public_port)  # refused: one per source
        with socket.create_connection(
            (HOST, public_port), timeout=5, source_address=(OTHER, 0)
        ) as other:
            other.sendall(b"b")
            assert other.recv(1) == b"b"
        with contextlib.suppress(ConnectionResetError):
            assert held.recv(1) == b""  # idle for 0.5 s: reset
        relay_proc.wait_line(r"--max-connections-per-source 1\)")
    finally:
        held.close()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--idle-timeout", "-1"], {}, "'--idle-timeout'"),
        (["--max-connections-per-source", "many"], {}, "'--max-connections-per-source'"),
        (
            [],
            {"RELAY_MAX_PENDING_REGISTRATIONS_PER_SOURCE": "-2"},
            "RELAY_MAX_PENDING_REGISTRATIONS_PER_SOURCE",
        ),
    ],
)
def test_cli_rejects_bad_limits_naming_them(args, env, expected) -> None:
    proc = subprocess.run(
        [*relay_command(), *args, "7000"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        check=False,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
