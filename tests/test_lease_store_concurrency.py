"""Several processes hammer one lease store (SQLite file, real Redis) at once: no port ever
serves two identities, no identity ever holds two ports.

Each worker process is one holder (a relay, or a worker of one): it claims,
holds for a moment and releases, with a few shared names, anonymous
registrations and requested ports over a small range, so that almost every
step races another. Each records when it held what on the shared monotonic
clock: from after ``allocate`` returned to before ``release`` was called, so
a recorded interval lies within the claim. Any two intervals that overlap must
then agree: one port, one identity (never anonymous); one identity, one port.

Run as a script, this file is one worker: ``python FILE BACKEND TARGET SEED COUNT``.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.store import Ask, Claimed, LeaseStore
from relay.store.redis_store import RedisLeaseStore
from relay.store.sqlite_store import SqliteLeaseStore

RANGE = ((7000, 7007),)
KEYS = [None, None, "name:a", "name:b", "name:c", "name:d", "client:e/web"]
WORKERS = 4
STEPS = 150


async def work(backend: str, target: str, seed: int, count: int) -> list[list[object]]:
    rng = random.Random(seed)
    store: LeaseStore
    if backend == "redis":
        store = await RedisLeaseStore.open(target, 3600)
    else:
        store = await SqliteLeaseStore.open(Path(target), 3600)
    held = []
    try:
        for step in range(count):
            key = rng.choice(KEYS)
            port = rng.choice([None, None, rng.randint(7000, 7007)])
            ask = Ask(
                key, f"{seed}-{step}", port=port, candidates=RANGE, after=rng.randint(0, 7007)
            )
            outcome = await store.allocate(ask)
            if not isinstance(outcome, Claimed):
                continue
            start = time.monotonic()
            await asyncio.sleep(rng.random() * 0.003)
            held.append([start, time.monotonic(), outcome.port, key])
            await store.release(outcome.port, ask.token)
    finally:
        await store.close()
    return held


def violations(intervals: list[list[object]]) -> list[str]:
    """Pairs of overlapping holds that break "one port, one identity; one identity, one port"."""
    found = []
    ordered = sorted(intervals)
    for i, (_start, end, port, key) in enumerate(ordered):
        for other_start, _, other_port, other_key in ordered[i + 1 :]:
            if other_start >= end:  # type: ignore[operator]
                break
            if port == other_port and (key is None or key != other_key):
                found.append(f"port {port} held by {key} and {other_key} at once")
            if key is not None and key == other_key and port != other_port:
                found.append(f"{key} held ports {port} and {other_port} at once")
    return found


def hammer(backend: str, target: str) -> list[list[object]]:
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, backend, target, str(seed), str(STEPS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(WORKERS)
    ]
    intervals: list[list[object]] = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        intervals += json.loads(out)
    return intervals


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_concurrent_holders_never_share_a_port_or_split_an_identity(
    backend, tmp_path, procs
) -> None:
    if backend == "redis":
        from cluster_support import RedisServer  # not in a worker: it needs the test's paths

        target = RedisServer(procs, tmp_path).start().url
    else:
        target = str(tmp_path / "leases.sqlite3")
    intervals = hammer(backend, target)
    assert violations(intervals) == []
    # The race was real: identities were shared across holders, ports were reused.
    keys_on_two_holders = {
        a[3]
        for i, a in enumerate(intervals)
        for b in intervals[i + 1 :]
        if a[3] is not None and a[3] == b[3] and a[0] < b[1] and b[0] < a[1]
    }
    assert keys_on_two_holders, "no identity was ever held twice at once: the test raced nothing"
    assert len(intervals) > WORKERS * STEPS // 4


def test_the_checker_sees_a_shared_port_and_a_split_identity() -> None:
    assert violations([[0, 2, 7000, "name:a"], [1, 3, 7000, None]]) == [
        "port 7000 held by name:a and None at once"
    ]
    assert violations([[0, 2, 7000, "name:a"], [1, 3, 7001, "name:a"]]) == [
        "name:a held ports 7000 and 7001 at once"
    ]
    assert violations([[0, 1, 7000, None], [1, 2, 7000, None]]) == []


if __name__ == "__main__":
    backend, target, seed, count = sys.argv[1:]
    print(json.dumps(asyncio.run(work(backend, target, int(seed), int(count)))))


OPENER = """
import sys, time
from pathlib import Path
from relay.store.failures import SqliteFailureCounts
from relay.store.schema import open_database
start = float(sys.argv[2])
while time.time() < start:
    pass
directory = Path(sys.argv[1])
SqliteFailureCounts.open(directory / "failures.db")
print("lease store", "ok" if open_database(directory / "leases.db") is not None else "lost")
"""


def test_processes_that_open_the_files_at_once_all_start(tmp_path: Path) -> None:
    """A relay's workers open the state dir's files together: each gets them (switching a
    new file to WAL takes a lock the busy timeout does not wait for), and no lease store
    is taken for unreadable and moved aside."""
    start = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [proc.communicate(timeout=30) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8, [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["lease store ok"] * 8
    assert sorted(p.name for p in tmp_path.iterdir() if ".db" in p.name and "-" not in p.name) == [
        "failures.db",
        "leases.db",
    ]
