"""Real redis-server behind the real forwarder CLI, through the real relay CLI."""

from __future__ import annotations

import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import require_program

from relay_support import HOST, RespReader, resp_command

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["asyncio", "uvloop"])
def redis_behind_relay(procs, request):
    """(public port, redis port, processes): redis-server <- forwarder <- relay.

    Once on asyncio's own event loop and once on uvloop (the ``fast`` extra).
    """
    redis_server = require_program("redis-server")
    if request.param == "uvloop" and os.environ.get("CI") != "true":
        pytest.importorskip("uvloop")  # installed by the test extra; under CI its absence fails
    loop = ("--event-loop", request.param)
    _, redis_port = procs.redis(redis_server)
    _, relay_port = procs.relay(*loop)
    _, public_port = procs.forwarder(relay_port, redis_port, *loop)
    return public_port, redis_port, procs


def redis_cli(port: int, *args: str, stdin: bytes | None = None) -> str:
    cli = require_program("redis-cli")
    done = subprocess.run(
        [cli, "-h", HOST, "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout.decode().strip()


def test_redis_cli_commands_through_the_relay(redis_behind_relay):
    public_port, redis_port, _ = redis_behind_relay
    assert redis_cli(public_port, "PING") == "PONG"
    assert redis_cli(public_port, "SET", "greeting", "hello relay") == "OK"
    assert redis_cli(public_port, "GET", "greeting") == "hello relay"
    # The value is really in the redis behind the forwarder.
    assert redis_cli(redis_port, "GET", "greeting") == "hello relay"
    value = os.urandom(3 * 1024 * 1024).hex()  # 6 MiB through redis-cli -x, both ways
    assert redis_cli(public_port, "-x", "SET", "big", stdin=value.encode()) == "OK"
    assert redis_cli(public_port, "STRLEN", "big") == str(len(value))
    assert redis_cli(public_port, "GET", "big") == value


def test_raw_resp_pipelining_and_parallel_connections(redis_behind_relay):
    public_port, _, _ = redis_behind_relay
    commands = 5000

    def client(index: int) -> None:
        key = f"counter:{index}"
        blob = os.urandom(2000 + index)
        with socket.create_connection((HOST, public_port), timeout=30) as sock:
            batch = [resp_command("INCR", key) for _ in range(commands)]
            batch.append(resp_command("SET", f"blob:{index}", blob))
            batch.append(resp_command("GET", f"blob:{index}"))
            sock.sendall(b"".join(batch))  # pipelined: one write, then all replies
            reader = RespReader(sock)
            replies = [reader.reply() for _ in range(commands + 2)]
        assert replies[:commands] == list(range(1, commands + 1))
        assert replies[commands:] == ["OK", blob]

    with ThreadPoolExecutor(max_workers=20) as pool:
        for future in [pool.submit(client, i) for i in range(20)]:
            future.result()


def test_redis_benchmark_through_the_relay(redis_behind_relay):
    benchmark = require_program("redis-benchmark")
    public_port, _, procs = redis_behind_relay
    done = subprocess.run(
        [
            benchmark,
            "-h",
            HOST,
            "-p",
            str(public_port),
            "-n",
            "4000",
            "-c",
            "50",
            "-t",
            "set,get,lpush",
            "-q",
        ],
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert done.returncode == 0, done.stderr + procs.describe()
    lines = [
        line
        for line in done.stdout.replace("\r", "\n").splitlines()
        if "requests per second" in line
    ]
    assert {line.split(":")[0] for line in lines} >= {"SET", "GET", "LPUSH"}, done.stdout
