"""The workloads: what the load generator (or redis-benchmark) does, and what each reports.

Every workload runs against one address (the service itself, or a pair's
public endpoint) and returns one dict of numbers; ``Metric`` says which of
them become table rows and which way is better. The load comes from
interop/go/loadgen (one JSON line per run), see bench/README.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.processes import BenchError, run_to_end, start, stop, wait_for
from bench.services import Env, Pair
from testkit.procs import Proc


@dataclass
class Metric:
    key: str  # key in a run's result
    label: str  # row label in the table
    unit: str
    better: str  # "higher" or "lower"
    fmt: str = "{:.0f}"


@dataclass
class Workload:
    name: str
    title: str
    metrics: list[Metric]
    run: Callable[[Env, str, Pair | None], dict[str, Any]]
    cpu_per: str  # "GB" (per GB moved, both directions) or "op"
    timeout: float
    defaults: bool = False
    """Run the relays with their default settings and the file limit of a default shell
    (services.start_pair), not with the limits lifted for the idle workload."""
    detail: Callable[[dict[str, Any]], str] | None = None
    """Describes one run's result in words, for the notes under the table (burst errors)."""


CPU_PER_CONN = "cpu_us_per_op"
"""Key of CPU microseconds (relay + forwarder) per operation, added by run.measure."""


def loadgen(env: Env, args: list[str], timeout: float) -> dict[str, Any]:
    proc = start("loadgen", env.client.argv(env.go("loadgen"), *args), env.logdir)
    try:
        code = run_to_end(proc, timeout)
        return parse_loadgen(proc, code)
    finally:
        stop(proc)


def parse_loadgen(proc: Proc, code: int) -> dict[str, Any]:
    lines = [ln for ln in proc.stdout_text.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"loadgen exited {code} without a result: {proc.tail()}")
    res: dict[str, Any] = json.loads(lines[-1])
    if not res.get("ok"):
        raise BenchError(f"loadgen: {res.get('error', 'failed')} (exit {code})")
    return res


def echo_workload(name: str, title: str, conns: int, size: int, timeout: float) -> Workload:
    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        return loadgen(
            env,
            [
                "echo",
                "-addr",
                addr,
                "-conns",
                str(conns),
                "-bytes",
                str(size),
                "-timeout",
                f"{timeout:g}s",
            ],
            timeout + 10,
        )

    metrics = [Metric("mb_per_s", title, "MB/s", "higher")]
    if conns >= 1000:  # opening many at once is a result of its own (not in the MB/s)
        metrics.append(
            Metric("connect_s", f"{conns} conns: time to connect all", "s", "lower", "{:.2f}")
        )
    return Workload(name, title, metrics, run, "GB", timeout)


def latency_workload(n: int, duration: float, warmup: int = 500) -> Workload:
    timeout = duration + 30

    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        res = loadgen(
            env,
            [
                "latency",
                "-addr",
                addr,
                "-size",
                "64",
                "-n",
                str(n),
                "-warmup",
                str(warmup),
                "-duration",
                f"{duration:g}s",
                "-timeout",
                f"{timeout:g}s",
            ],
            timeout + 10,
        )
        res["ops"] = res["round_trips"]
        return res

    return Workload(
        "latency",
        "64-byte request/response, 1 connection",
        [
            Metric("p50_us", "64 B round trip p50", "us", "lower", "{:.1f}"),
            Metric("p99_us", "64 B round trip p99", "us", "lower", "{:.1f}"),
        ],
        run,
        "op",
        timeout,
    )


def connrate_workload(name: str, concurrency: int, duration: float) -> Workload:
    """Connect, 64-byte exchange, close, in a loop: ``concurrency`` at once (1: sequential)."""

    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        res = loadgen(
            env,
            [
                "connrate",
                "-addr",
                addr,
                "-size",
                "64",
                "-concurrency",
                str(concurrency),
                "-duration",
                f"{duration:g}s",
                "-timeout",
                "10s",
            ],
            duration + 30,
        )
        res["ops"] = res["connections"]
        return res

    how = "sequential" if concurrency == 1 else f"{concurrency} at once"
    return Workload(
        name,
        f"new connections (connect, 64 B exchange, close), {how}",
        [
            Metric("conns_per_s", f"new connections, {how}", "conn/s", "higher"),
            Metric(
                CPU_PER_CONN,
                f"new connections, {how}: CPU per conn, relay + forwarder",
                "us",
                "lower",
            ),
        ],
        run,
        "op",
        duration + 30,
    )


def burst_errors(res: dict[str, Any]) -> str:
    """``12 failed: 10 reset, 2 timeout (first reset: ...)``, or ``no errors``."""
    if not res.get("errors"):
        return "no errors"
    kinds = [f"{res[f'{k}_errors']} {k}" for k in BURST_KINDS if res.get(f"{k}_errors")]
    first = res.get("first_errors") or {}
    example = next((f"first {k}: {first[k]}" for k in BURST_KINDS if k in first), "")
    return f"{res['errors']} of {res['conns']} failed: {', '.join(kinds)} ({example})"


BURST_KINDS = ("refused", "reset", "timeout", "closed", "other")
"""How loadgen burst sorts failed connections (``<kind>_errors``)."""


def burst_workload(conns: int, size: int, timeout: float) -> Workload:
    """``conns`` connections dialed at the same moment, each exchanging ``size`` bytes, against
    relays with their default settings. Failed connections are counted, not a failed run."""

    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        res = loadgen(
            env,
            [
                "burst",
                "-addr",
                addr,
                "-conns",
                str(conns),
                "-size",
                str(size),
                "-timeout",
                f"{timeout:g}s",
            ],
            timeout + 30,
        )
        res["ops"] = conns
        return res

    k = f"{conns // 1000}k" if conns % 1000 == 0 else str(conns)
    return Workload(
        f"burst{k}",
        f"{conns} connections at once, {size} B each, default settings",
        [
            Metric(
                "seconds", f"{k} conns at once, defaults: time to finish", "s", "lower", "{:.2f}"
            ),
            Metric("errors", f"{k} conns at once, defaults: failed conns", "", "lower"),
        ],
        run,
        "op",
        timeout + 30,
        defaults=True,
        detail=burst_errors,
    )


def idle_workload(conns: int, timeout: float) -> Workload:
    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        before = {p.name: p.rss_bytes() for p in pair.procs()} if pair else {}
        proc = start(
            "loadgen",
            env.client.argv(
                env.go("loadgen"),
                "idle",
                "-addr",
                addr,
                "-conns",
                str(conns),
                "-size",
                "64",
                "-timeout",
                f"{timeout:g}s",
            ),
            env.logdir,
            stdin=True,
        )
        try:
            wait_for(proc, r"^READY ", timeout + 5)
            res: dict[str, Any] = {}
            if pair:
                time.sleep(0.3)  # let the relay side settle after the last exchange
                for p, role in ((pair.relay, "relay"), (pair.forwarder, "forwarder")):
                    after = p.rss_bytes()
                    res[f"{role}_rss_before"] = before[p.name]
                    res[f"{role}_rss_after"] = after
                    res[f"{role}_rss_per_conn"] = (after - before[p.name]) / conns
            proc.write_stdin("close\n")
            code = run_to_end(proc, 30)
            res.update(parse_loadgen(proc, code))
        finally:
            stop(proc)
        res["all_work"] = 1.0 if res.get("exchanged") == conns else 0.0
        res["ops"] = conns
        return res

    k = f"{conns // 1000}k" if conns % 1000 == 0 else str(conns)
    return Workload(
        "idle",
        f"{conns} concurrent idle connections",
        [
            Metric("all_work", f"{k} idle conns: all work (1 = yes)", "", "higher", "{:.0f}"),
            Metric("open_s", f"{k} idle conns: time to open all", "s", "lower", "{:.2f}"),
            Metric("relay_rss_per_conn", f"{k} idle conns: relay RSS/conn", "bytes", "lower"),
            Metric(
                "forwarder_rss_per_conn", f"{k} idle conns: forwarder RSS/conn", "bytes", "lower"
            ),
        ],
        run,
        "op",
        timeout,
    )


REDIS_LINE = re.compile(r"\b(SET|GET): ([\d.]+) requests per second")


def redis_workload(requests: int, timeout: float) -> Workload:
    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        host, port = addr.rsplit(":", 1)
        proc = start(
            "redis-benchmark",
            env.client.argv(
                "redis-benchmark",
                "-h",
                host,
                "-p",
                port,
                "-t",
                "set,get",
                "-c",
                "50",
                "-n",
                str(requests),
                "-q",
            ),
            env.logdir,
        )
        try:
            code = run_to_end(proc, timeout)
            found = dict(REDIS_LINE.findall(proc.stdout_text.replace("\r", "\n")))
            if code != 0 or set(found) != {"SET", "GET"}:
                raise BenchError(f"redis-benchmark exited {code}: {proc.tail()}")
        finally:
            stop(proc)
        return {
            "set_ops_per_s": float(found["SET"]),
            "get_ops_per_s": float(found["GET"]),
            "ops": 2 * requests,
        }

    return Workload(
        "redis",
        "redis-benchmark SET/GET, 50 clients",
        [
            Metric("set_ops_per_s", "redis-benchmark SET", "ops/s", "higher"),
            Metric("get_ops_per_s", "redis-benchmark GET", "ops/s", "higher"),
        ],
        run,
        "op",
        timeout,
    )


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            echo_workload("1x200MB", "1 conn x 200 MB echoed", 1, 200_000_000, 60),
            echo_workload("100x2MB", "100 conns x 2 MB echoed", 100, 2_000_000, 60),
            echo_workload("1000x100KB", "1000 conns x 20 KB echoed", 1000, 20_000, 60),
            latency_workload(2000, 1.0),
            connrate_workload("connrate", 16, 1.0),
            connrate_workload("connseq", 1, 1.0),
            burst_workload(1000, 100, 10),
            burst_workload(5000, 100, 10),
            idle_workload(2000, 60),
            redis_workload(10_000, 60),
        ]
    return [
        echo_workload("1x200MB", "1 conn x 200 MB echoed", 1, 200_000_000, 60),
        echo_workload("100x2MB", "100 conns x 2 MB echoed", 100, 2_000_000, 60),
        echo_workload("1000x100KB", "1000 conns x 100 KB echoed", 1000, 100_000, 60),
        latency_workload(10_000, 3.0),
        connrate_workload("connrate", 16, 2.0),
        connrate_workload("connseq", 1, 2.0),
        burst_workload(1000, 100, 30),
        burst_workload(5000, 100, 30),
        idle_workload(10_000, 90),
        redis_workload(50_000, 90),
    ]
