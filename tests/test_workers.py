"""``relay server --workers N``: a supervisor and N real relay processes on one control port.

Registrations here come from this test process (``relay.start_server``, cheap)
or from real forwarders; the relay is the real command. Which worker the
kernel gives a registration is chance, so the tests register until both
workers hold some and assert only what holds whatever the spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from prometheus_client.parser import text_string_to_metric_families

import relay
from relay_support import HOST, Processes, free_port, relay_command, wait_until
from testkit.procs import Proc

pytestmark = pytest.mark.e2e

METRICS = r"metrics on http://([\d.]+:\d+)/metrics"
ALICE_SECRET = "9f1c2e7a5b3d8046c1e9a7f2b5d3c810"
BOB_SECRET = "4b7e0d2a9c6f1358e2a0c7d9f4b6e135"


async def get(endpoint: str, path: str) -> str:
    """The body of GET ``path`` from the metrics endpoint (no thread: one event loop)."""
    host, port = endpoint.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {endpoint}\r\n\r\n".encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body.decode()


async def status(endpoint: str) -> dict:
    return json.loads(await get(endpoint, "/status"))


def start_workers(
    procs: Processes, *args: str, env: dict[str, str] | None = None
) -> tuple[Proc, int, str]:
    """``relay server --workers 2`` with metrics; (process, control port, metrics endpoint)."""
    port = free_port()
    proc = procs.start(
        [
            *relay_command(),
            "server",
            "--bind",
            HOST,
            "--workers",
            "2",
            "--metrics",
            f"{HOST}:0",
            *args,
            str(port),
        ],
        "relay",
        env=env,
    )
    _, match = proc.wait_line(METRICS)
    proc.wait_line(rf"Serving relay requests on port {port} with 2 workers")
    return proc, port, match.group(1)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(payload)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def until(probe, condition, tries: int = 300) -> None:
    """Until ``condition(await probe())`` holds, polling every 50 ms; fails after ``tries``."""
    for _ in range(tries):
        last = await probe()
        if condition(last):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true after {tries} tries; last {last!r}")


class Spread(dict[int, list[relay.RelayedServer]]):
    """Echo servers by the worker that holds each; ``registered[server]`` is set whenever it
    registers."""

    registered: dict[relay.RelayedServer, asyncio.Event]


async def spread(
    stack: AsyncExitStack, control: int, metrics: str, handler=None, **options: object
) -> Spread:
    """Register servers (of ``handler``, by default an echo) until both workers hold one."""
    servers: dict[int, relay.RelayedServer] = {}
    events: dict[relay.RelayedServer, asyncio.Event] = {}
    for _ in range(24):
        registered = asyncio.Event()
        server = await relay.start_server(
            handler or echo,
            HOST,
            control,
            reconnect_delay=0.2,
            on_endpoint=lambda _, registered=registered: registered.set(),
            **options,
        )
        await stack.enter_async_context(server)
        servers[server.public_port] = server
        events[server] = registered
        workers = {entry["worker"] for entry in (await status(metrics))["registrations"]}
        if workers == {1, 2}:
            break
    by_worker = Spread({1: [], 2: []})
    by_worker.registered = events
    for entry in (await status(metrics))["registrations"]:
        by_worker[entry["worker"]].append(servers[entry["public_port"]])
    assert by_worker[1], "24 registrations all went to worker 2"
    assert by_worker[2], "24 registrations all went to worker 1"
    return by_worker


@pytest.fixture
def notify_socket(tmp_path) -> AsyncIterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield sock, str(path)


def notified(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


async def test_two_workers_show_one_face(procs: Processes, notify_socket) -> None:
    """One READY once both listen, one /metrics and /status with every worker's sessions,
    one log stream with a worker field on every line, one STOPPING and exit 0."""
    sock, address = notify_socket
    supervisor, control, metrics = start_workers(
        procs, "--log-format", "json", env={"NOTIFY_SOCKET": address}
    )
    ready = notified(sock)
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(supervisor.pid)
    first = await status(metrics)
    assert [(w["worker"], w["up"]) for w in first["workers"]] == [(1, True), (2, True)]
    pids = {w["pid"] for w in first["workers"]}
    assert len(pids) == 2
    assert supervisor.pid not in pids

    async with AsyncExitStack() as stack:
        by_worker = await spread(stack, control, metrics)
        servers = [s for held in by_worker.values() for s in held]
        for server in servers:
            payload = f"through {server.public_port}\n".encode() * 1000
            assert await roundtrip(server.public_port, payload) == payload
        seen = await status(metrics)
        assert sorted(r["public_port"] for r in seen["registrations"]) == sorted(
            s.public_port for s in servers
        )
        assert seen["control_port"] == control
        assert seen["role"] == "relay"
        families = {
            f.name: f for f in text_string_to_metric_families(await get(metrics, "/metrics"))
        }
        open_now = {s.labels["worker"]: s.value for s in families["relay_sessions_open"].samples}
        assert open_now == {"1": len(by_worker[1]), "2": len(by_worker[2])}
        connections = families["relay_public_connections"].samples
        assert sum(s.value for s in connections) == len(servers)
        assert {s.labels["worker"]: s.value for s in families["relay_worker_up"].samples} == {
            "1": 1,
            "2": 1,
        }

    supervisor.send_signal(signal.SIGTERM)
    assert notified(sock)["STOPPING"] == "1"
    assert supervisor.wait(20) == 0
    for pid in pids:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), 5)
    lines = [json.loads(line) for line in supervisor.stderr]
    assert {line["worker"] for line in lines} == {0, 1, 2}
    assert all("event" in line and "time" in line for line in lines)
    assert sum("Serving relay requests" in line["event"] for line in lines) == 1


async def test_a_killed_worker_comes_back_and_only_its_sessions_end(procs: Processes) -> None:
    supervisor, control, metrics = start_workers(procs)
    async with AsyncExitStack() as stack:
        by_worker = await spread(stack, control, metrics)
        victim = (await status(metrics))["workers"][0]
        for server in by_worker[1]:
            by_worker.registered[server].clear()
        survivor_server = by_worker[2][0]
        # A transfer in flight on the other worker goes on while worker 1 is killed.
        reader, writer = await asyncio.open_connection(HOST, survivor_server.public_port)
        writer.write(b"before ")
        await writer.drain()
        os.kill(victim["pid"], signal.SIGKILL)
        supervisor.wait_line(r"worker 1 \(pid \d+\) was killed by SIGKILL; its registrations ended")
        supervisor.wait_line(r"worker 1 \(pid \d+\) is back")
        now = await status(metrics)
        assert now["workers"][0]["pid"] != victim["pid"]
        assert now["workers"][0]["up"]
        assert now["workers"][0]["restarts"] == 1
        writer.write(b"and after")
        writer.write_eof()
        assert await reader.read() == b"before and after"
        writer.close()
        await writer.wait_closed()
        for server in by_worker[2]:
            assert server.registrations == 1  # the other worker's sessions never ended
        for server in by_worker[1]:  # the killed worker's registered again (on any worker)
            await asyncio.wait_for(by_worker.registered[server].wait(), 15)
            assert await roundtrip(server.public_port, b"again") == b"again"
    assert "Traceback" not in supervisor.stderr_text


def test_a_worker_that_cannot_start_stops_the_relay(procs: Processes, tmp_path) -> None:
    """A problem every worker would have (here the control port) is an exit 1 with the
    reason, not a restart loop."""
    taken = socket.socket()
    taken.bind((HOST, 0))
    taken.listen()
    with taken:
        port = taken.getsockname()[1]
        proc = procs.start(
            [*relay_command(), "server", "--bind", HOST, "--workers", "2", str(port)], "relay"
        )
        assert proc.wait(30) == 1
    assert re.search(rf"cannot listen on port {port}: .*in use", proc.stderr_text)
    assert "Traceback" not in proc.stderr_text


async def named_spread(
    stack: AsyncExitStack, control: int, metrics: str, count: int
) -> dict[int, list[relay.RelayedServer]]:
    """``count`` named echo services (leases: stable ports), at least one on each worker."""
    servers: dict[int, relay.RelayedServer] = {}
    for index in range(1, 4 * count):
        server = await relay.start_server(echo, HOST, control, name=f"svc{index}")
        await stack.enter_async_context(server)
        servers[server.public_port] = server
        holders = {
            entry["public_port"]: entry["worker"]
            for entry in (await status(metrics))["registrations"]
        }
        by_worker: dict[int, list[relay.RelayedServer]] = {1: [], 2: []}
        for port, worker in holders.items():
            by_worker[worker].append(servers[port])
        if len(servers) >= count and by_worker[1] and by_worker[2]:
            first = by_worker[1][: count - 1]
            return {1: first, 2: by_worker[2][: count - len(first)]}
    raise AssertionError(f"{4 * count} registrations all went to one worker")


async def transfer(port: int, seed: int, chunks: int = 48, size: int = 16384) -> bool:
    """Send ``chunks`` chunks with pauses between them and read the echo; True if every byte
    came back in order."""
    payload = bytes((seed + i) % 251 for i in range(size))
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    try:

        async def send() -> None:
            for _ in range(chunks):
                writer.write(payload)
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write_eof()

        sending = asyncio.create_task(send())
        try:
            received = await reader.read()
        finally:
            # Never leave its error unretrieved: logged when the task is collected, maybe in
            # another thread, its traceback is parsed there (CPython 3.11's AST state is not
            # thread-safe, and every later ast.parse of the session fails).
            sending.cancel()
            await asyncio.wait([sending])
        sent = not sending.cancelled() and sending.exception() is None
        return sent and received == payload * chunks
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_chaos_kill_one_worker_during_100_transfers(procs: Processes) -> None:
    """kill -9 one worker during 100 concurrent transfers over 4 services: every transfer
    through the other worker is intact, and the killed worker's services answer on the same
    ports again within 6 s."""
    supervisor, control, metrics = start_workers(procs, "--protocol", "v2")
    async with AsyncExitStack() as stack:
        by_worker = await named_spread(stack, control, metrics, 4)
        victim = next(w for w in (await status(metrics))["workers"] if w["worker"] == 1)
        services = [(worker, s.public_port) for worker, held in by_worker.items() for s in held]
        transfers = [
            (worker, asyncio.create_task(transfer(port, n)))
            for n in range(100)
            for worker, port in [services[n % len(services)]]
        ]
        await asyncio.sleep(0.4)  # every transfer is under way
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        back = await asyncio.gather(
            *(answers_again(server.public_port, killed) for server in by_worker[1])
        )
        outcome = [(worker, await task) for worker, task in transfers]
        survivors = [ok for worker, ok in outcome if worker == 2]
        assert len(survivors) >= 25
        assert all(survivors), f"{survivors.count(False)} transfers through worker 2 broke"
        assert max(back) <= 6.0, f"the killed worker's services answered after {back} s"
    assert "Traceback" not in supervisor.stderr_text


async def answers_again(port: int, since: float) -> float:
    """Seconds from ``since`` until an echo on ``port`` works again."""
    while True:
        with contextlib.suppress(OSError):
            if await asyncio.wait_for(roundtrip(port, b"back?"), 2) == b"back?":
                return time.monotonic() - since
        await asyncio.sleep(0.05)


async def test_a_service_of_two_sessions_has_one_on_each_worker_and_outlives_one(
    procs: Processes, echo_port: int
) -> None:
    """``relay forward --sessions 2``: the second session is handed to the worker without one,
    both serve one port; with a worker killed the other serves it, and the lost session
    joins again; the forwarder prints its endpoint once."""
    supervisor, control, metrics = start_workers(procs, "--protocol", "v2")
    forwarder = procs.start(
        [
            *relay_command(),
            "forward",
            "--name",
            "web",
            "--sessions",
            "2",
            "--reconnect-delay",
            "0.2",
            str(echo_port),
            f"{HOST}:{control}",
        ],
        "forwarder",
    )
    _, match = forwarder.wait_line(r"^127\.0\.0\.1:(\d+)$", stream="stdout")
    port = int(match.group(1))

    async def placed() -> list[tuple[str, int, int]]:
        registrations = (await status(metrics))["registrations"]
        return sorted((r["client"], r["public_port"], r["worker"]) for r in registrations)

    both = [("web", port, 1), ("web", port, 2)]
    await until(lambda: placed(), lambda now: len(now) == 2)
    assert await placed() == both
    victim = (await status(metrics))["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_line(r"worker 1 \(pid \d+\) was killed by SIGKILL")
    for n in range(30):  # the kernel gives every new connection to the live session
        payload = f"while worker 1 is down {n}".encode()
        assert await roundtrip(port, payload) == payload
    await until(lambda: placed(), lambda now: now == both)  # moved back to worker 1
    assert forwarder.stdout == [f"{HOST}:{port}"]
    assert "Traceback" not in supervisor.stderr_text + forwarder.stderr_text


async def test_sighup_and_the_auth_file_reach_every_worker(procs: Processes, tmp_path) -> None:
    auth = tmp_path / "clients.toml"
    bob = f'[clients.bob]\nsecret = "{BOB_SECRET}"\n'
    auth.write_text(f'[clients.alice]\nsecret = "{ALICE_SECRET}"\n\n' + bob)
    supervisor, control, metrics = start_workers(procs, "--auth-file", str(auth))
    async with AsyncExitStack() as stack:
        by_worker = await spread(
            stack, control, metrics, client_name="alice", secret=ALICE_SECRET, reconnect=False
        )
        auth.write_text(bob)  # alice's access ends
        supervisor.send_signal(signal.SIGHUP)
        supervisor.wait_line("SIGHUP received: every worker re-reads the auth file")
        servers = [s for held in by_worker.values() for s in held]
        for server in servers:
            await asyncio.wait_for(server.wait_closed(), 10)
        assert (await status(metrics))["registrations"] == []
    ended = [
        line
        for line in supervisor.stderr
        if "ended: client alice was removed from the auth file" in line
    ]
    assert len(ended) == len(servers)
    assert {line.rsplit("worker=", 1)[1] for line in ended} == {"1", "2"}
    assert supervisor.alive()  # SIGHUP is no end for the supervisor


def test_workers_option_takes_a_count_or_auto() -> None:
    from click.testing import CliRunner

    from relay.cli import cli
    from relay.options import OptionError, RelayOptions

    assert RelayOptions(workers="auto").workers == len(os.sched_getaffinity(0))
    assert RelayOptions(workers=3).workers == 3
    with pytest.raises(OptionError, match="workers=0: must be 1-256"):
        RelayOptions(workers=0)
    with pytest.raises(OptionError, match="notify protocol runs in one process"):
        RelayOptions(workers=2, protocol="notify")
    with pytest.raises(OptionError, match="a RelayServer is one process"):
        relay.RelayServer(0, workers=2)
    bad = CliRunner().invoke(cli, ["server", "--workers", "many", "7000"])
    assert bad.exit_code == 2
    assert "'many' is not an integer" in bad.output


async def test_workers_end_with_their_supervisor(procs: Processes) -> None:
    """A supervisor killed with -9 leaves no worker behind holding ports."""
    supervisor, _, metrics = start_workers(procs)
    pids = [w["pid"] for w in (await status(metrics))["workers"]]
    os.kill(supervisor.pid, signal.SIGKILL)  # the supervisor alone, not its process group
    supervisor.wait()
    for pid in pids:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}/status") or zombie(pid), 10)


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status_file:
            return any(line.startswith("State:\tZ") for line in status_file)
    except OSError:
        return True


async def test_failed_proofs_count_on_every_worker(procs: Processes, tmp_path) -> None:
    """A stranger does not get a fresh allowance of wrong secrets per worker: after 5 in
    all, every worker refuses that source (within the one-second read back)."""
    from relay.errors import RegistrationError

    secret = tmp_path / "secret"
    secret.write_text(f"{ALICE_SECRET}\n")
    _, control, _ = start_workers(procs, "--secret-file", str(secret))
    for _ in range(5):
        with pytest.raises(RegistrationError, match="auth failed"):
            await relay.register(HOST, control, secret=BOB_SECRET, reconnect=False)
    await asyncio.sleep(1.5)
    for _ in range(6):  # the kernel spreads these over both workers
        with pytest.raises(RegistrationError, match="too many failed registrations"):
            await relay.register(HOST, control, secret=ALICE_SECRET)


async def test_tls_workers_each_make_their_context_from_the_files(
    procs: Processes, tmp_path
) -> None:
    """A TLS context cannot travel to a worker: each makes its own from --tls-cert/--tls-key,
    and registrations over TLS in either worker carry traffic."""
    from conftest import require_program
    from registration_support import make_certificates

    from relay.wire.tls import client_context

    require_program("openssl")
    certs = make_certificates(tmp_path)
    _, control, metrics = start_workers(
        procs, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)
    )
    async with AsyncExitStack() as stack:
        by_worker = await spread(stack, control, metrics, ssl=client_context(certs.ca))
        for server in [s for held in by_worker.values() for s in held]:
            assert server.session.get_extra_info("ssl_object") is not None
            assert await roundtrip(server.public_port, b"over TLS") == b"over TLS"


async def test_sigterm_drains_every_worker(procs: Processes) -> None:
    """SIGTERM to the supervisor: every worker stops taking connections, the ones in flight
    (here one in each worker) finish, and the relay exits 0."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        await asyncio.sleep(1.5)
        writer.write(b"done: " + request)
        await writer.drain()
        writer.close()

    supervisor, control, metrics = start_workers(procs, "--drain-timeout", "20")
    async with AsyncExitStack() as stack:
        by_worker = await spread(stack, control, metrics, slow)
        inflight = []
        for held in by_worker.values():
            reader, writer = await asyncio.open_connection(HOST, held[0].public_port)
            writer.write(b"slow request\n")
            inflight.append((reader, writer))
        await asyncio.sleep(0.3)  # both requests are with their services
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait_line(r"SIGTERM received: draining")
        for reader, writer in inflight:
            assert await asyncio.wait_for(reader.read(), 10) == b"done: slow request\n"
            writer.close()
    assert await asyncio.to_thread(supervisor.wait, 20) == 0
    drained = [line for line in supervisor.stderr if "drained: no connection in flight" in line]
    assert {line.rsplit("worker=", 1)[1] for line in drained} == {"0", "1", "2"}
