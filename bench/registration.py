"""``python -m bench --registration``: registration latency with each lease store.

One real ``relay server`` process per store, all on loopback: ``memory`` (v2,
no state directory: SQLite in memory), ``sqlite`` (``--state-dir``, the file)
and ``redis`` (``--cluster``, a redis-server started here). A raw client
registers one after another: connect, read the challenge, send the response,
read the port line, close; the latency is from connect to the port line. Two
kinds: a ``new`` name each time (a lease is made) and the ``same`` few names
again (the lease is found). The stores take turns in rounds, so that the noise
of a shared machine falls on all of them alike; the table shows medians and
90th percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from testkit.ports import free_port
from testkit.procs import ProcGroup

STORES = ("memory", "sqlite", "redis")
HOST = "127.0.0.1"


def register(port: int, name: str) -> float:
    """One v2 registration without authentication; seconds from connect to the port line."""
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=10) as sock:
        reader = sock.makefile("rb")
        challenge = reader.readline()
        if b"relay/2" not in challenge:
            raise RuntimeError(f"expected a v2 challenge, got {challenge!r}")
        sock.sendall(f"relay/2 name={name}\n".encode())
        line = reader.readline()
        took = time.perf_counter() - start
        if not line.strip().isdigit():
            raise RuntimeError(f"registration refused: {line!r}")
    return took


def start_relays(group: ProcGroup, directory: Path, python: str) -> dict[str, int]:
    """A relay per store; returns their control ports."""
    redis_port = free_port()
    redis = group.start(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            HOST,
            "--save",
            "",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
        ],
        "redis-server",
    )
    redis.wait_line(r"Ready to accept connections", stream="stdout")
    extra = {
        "memory": ["--protocol", "v2"],
        "sqlite": ["--state-dir", str(directory / "state")],
        "redis": ["--cluster", f"redis://{HOST}:{redis_port}/0"],
    }
    ports = {}
    for store in STORES:
        port = free_port()
        proc = group.start(
            [
                python,
                "-m",
                "relay",
                "server",
                "--bind",
                HOST,
                "--max-name-leases",
                "1000000",
                "--no-connection-log",
                "--log-level",
                "warning",
                *extra[store],
                str(port),
            ],
            f"relay-{store}",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"the {store} relay did not start: {proc.tail()}")
        ports[store] = port
    return ports


def measure(
    ports: dict[str, int], rounds: int, per_round: int
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {s: {"new": [], "same": []} for s in ports}
    for round_ in range(rounds):
        for store, port in ports.items():
            for i in range(per_round):
                results[store]["new"].append(register(port, f"n{round_}-{i}"))
                results[store]["same"].append(register(port, f"s{i % 10}"))
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def render(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| store | new name: median ms | p90 ms | same name: median ms | p90 ms | registrations |",
        "|---|---|---|---|---|---|",
    ]
    for store, kinds in results.items():
        new, same = kinds["new"], kinds["same"]
        lines.append(
            f"| {store} | {statistics.median(new) * 1000:.2f} | {percentile(new, 0.9) * 1000:.2f}"
            f" | {statistics.median(same) * 1000:.2f} | {percentile(same, 0.9) * 1000:.2f}"
            f" | {len(new) + len(same)} |"
        )
    redis, sqlite = results["redis"], results["sqlite"]
    gap = max(statistics.median(redis[k]) - statistics.median(sqlite[k]) for k in ("new", "same"))
    lines.append("")
    lines.append(f"redis - sqlite, worse of the two medians: {gap * 1000:+.2f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench --registration", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--rounds", type=int, default=10, help="rounds of turns (default 10)")
    ap.add_argument("--per-round", type=int, default=50, help="registrations of each kind per turn")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the relays")
    args = ap.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-registration-"))
    group = ProcGroup()
    try:
        ports = start_relays(group, directory, args.python)
        for port in ports.values():  # warm up: imports, the script's first load, the file
            for i in range(20):
                register(port, f"warm{i}")
        print(render(measure(ports, args.rounds, args.per_round)), flush=True)
    finally:
        group.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0
