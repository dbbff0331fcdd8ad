"""``python -m bench --workers 1,2``: the relay with one worker process and with several.

Every run starts a fresh relay (``relay server --workers N --protocol v2``)
and in front of it interop's echo-peer for each service (a Go registering
side that answers every stream with its own bytes, speaking a minimal yamux of
its own: no local service to dial, and cheaper per byte than hashicorp/yamux),
and loads it with interop's Go load generator, so that the Python relay is the
part that costs. The
worker counts alternate within each repetition (in a rotated order), so the
machine's drifts hit them alike.

Workloads:

- ``bulk``: 4 services (4 echo peers, each its own name), loaded at once:
  one loadgen spreads its connections over the 4 public endpoints, each echoes
  its bytes; MB/s counts both directions.
- ``connrate``: the same 4 services, loadgen's connect + 64-byte exchange +
  close, its workers spread over the 4 endpoints.
- ``sessions``: one service loaded alone, registered as 1 session and as 2
  (``echo-peer -sessions 2``), on the largest worker count.

For every run the CPU time of every relay process (the supervisor and its
workers) is read from /proc before and after the load: relay CPU per GB (or
per connection), the cores the relay used (CPU time / load time), and each
worker's share of it (the per-worker figures).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import (
    HOST,
    REPO,
    BenchError,
    build_go,
    log,
    start,
    stop,
    stop_all,
    wait_for,
)
from bench.report import machine_info
from bench.services import SERVING, Env
from bench.workloads import loadgen
from testkit.ports import free_port
from testkit.procs import CLK_TCK, Proc, ProcessError, raise_nofile

SERVICES = 4
"""Services loaded at once (bulk, connrate)."""
PEER_WINDOW = 4 * 1024 * 1024
"""The receive window each echo-peer grants per stream."""


@dataclass
class Relay:
    """A running relay and its forwarders."""

    proc: Proc
    port: int
    forwarders: list[Proc]
    endpoints: list[str]

    def pids(self) -> list[int]:
        """The relay's processes: the supervisor (or the one relay) and its workers."""
        return [self.proc.pid, *children(self.proc.pid)]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_relay(setup: Env, workers: int) -> Proc:
    for _ in range(5):
        port = free_port()
        proc = start(
            f"relay-w{workers}",
            [
                setup.python,
                "-m",
                "relay",
                "server",
                "--bind",
                HOST,
                "--protocol",
                "v2",
                "--max-connections",
                "1000000",
                "--event-loop",
                setup.py_loop,
                "--workers",
                str(workers),
                str(port),
            ],
            setup.logdir,
            cwd=REPO,
        )
        try:
            wait_for(proc, SERVING, 60, "both")
            return proc
        except BenchError as exc:
            stop(proc)
            if "in use" not in str(exc):
                raise
    raise BenchError("no free control port for the relay")


def start_services(setup: Env, workers: int, names: list[str], sessions: int = 1) -> Relay:
    """A relay of ``workers`` and one go-forwarder per name, each with ``sessions``."""
    proc = start_relay(setup, workers)
    port = int(wait_for(proc, SERVING, 1, "both").group(1))
    relay = Relay(proc, port, [], [])
    try:
        for name in names:
            forwarder = start(
                f"echo-peer-{name}",
                [
                    setup.go("echo-peer"),
                    "-relay",
                    f"{HOST}:{port}",
                    "-window",
                    str(PEER_WINDOW),
                    "-name",
                    name,
                    "-sessions",
                    str(sessions),
                ],
                setup.logdir,
            )
            relay.forwarders.append(forwarder)
            relay.endpoints.append(wait_for(forwarder, r"^(\S+:\d+)$", 30).group(1))
        if sessions > 1:  # every session registered (it logs one line per session)
            for forwarder in relay.forwarders:
                deadline = time.monotonic() + 30
                while forwarder.stderr_text.count(": echoing ") < sessions:
                    if time.monotonic() > deadline or not forwarder.alive():
                        raise BenchError(f"{forwarder.name}: sessions missing: {forwarder.tail()}")
                    time.sleep(0.05)
    except BaseException:
        stop_relay(relay)
        raise
    return relay


def stop_relay(relay: Relay) -> None:
    for forwarder in relay.forwarders:
        stop(forwarder)
    stop(relay.proc)


def measured(relay: Relay, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``load``; add the CPU the relay's processes and the forwarders spent meanwhile."""
    pids = relay.pids()
    before = {pid: cpu_of(pid) for pid in pids}
    forwarders_before = sum(f.cpu_seconds() for f in relay.forwarders)
    t0 = time.monotonic()
    res = load()
    wall = time.monotonic() - t0
    if not relay.proc.alive() or sorted(relay.pids()) != sorted(pids):
        raise BenchError(f"a relay process died during the run: {relay.proc.tail()}")
    spent = {pid: cpu_of(pid) - before[pid] for pid in pids}
    seconds = res.get("seconds") or wall
    res["relay_cpu_s"] = sum(spent.values())
    res["relay_cores"] = res["relay_cpu_s"] / seconds
    workers = [spent[pid] for pid in pids[1:]] or [spent[pids[0]]]
    res["worker_cpu_s"] = workers
    res["busiest_worker_cores"] = max(workers) / seconds
    res["forwarders_cpu_s"] = sum(f.cpu_seconds() for f in relay.forwarders) - forwarders_before
    res["loadgen_cpu_s"] = res.get("cpu_s")
    moved = res.get("bytes_moved") or 0
    if res.get("connections"):
        res["relay_cpu_us_per_conn"] = res["relay_cpu_s"] / res["connections"] * 1e6
        res["peers_cpu_us_per_conn"] = res["forwarders_cpu_s"] / res["connections"] * 1e6
        if res.get("cpu_s") is not None:
            res["loadgen_cpu_us_per_conn"] = res["cpu_s"] / res["connections"] * 1e6
    elif moved:
        res["relay_cpu_s_per_gb"] = res["relay_cpu_s"] / (moved / 1e9)
        res["forwarders_cpu_s_per_gb"] = res["forwarders_cpu_s"] / (moved / 1e9)
        if res.get("cpu_s") is not None:
            res["loadgen_cpu_s_per_gb"] = res["cpu_s"] / (moved / 1e9)
    return res


def bulk(setup: Env, workers: int) -> dict[str, Any]:
    conns, size = (16, 10_000_000) if setup.quick else (32, 50_000_000)
    relay = start_services(setup, workers, [f"bulk{i}" for i in range(1, SERVICES + 1)])
    try:
        return measured(relay, lambda: echo_load(setup, relay.endpoints, conns, size))
    finally:
        stop_relay(relay)


def connrate(setup: Env, workers: int) -> dict[str, Any]:
    duration = 1.0 if setup.quick else 3.0
    relay = start_services(setup, workers, [f"rate{i}" for i in range(1, SERVICES + 1)])
    try:
        return measured(
            relay,
            lambda: loadgen(
                setup,
                [
                    "connrate",
                    "-addr",
                    ",".join(relay.endpoints),
                    "-size",
                    "64",
                    "-concurrency",
                    str(8 * SERVICES),
                    "-duration",
                    f"{duration:g}s",
                    "-timeout",
                    "10s",
                ],
                duration + 30,
            ),
        )
    finally:
        stop_relay(relay)


def sessions_run(setup: Env, workers: int, sessions: int) -> dict[str, Any]:
    conns, size = (16, 10_000_000) if setup.quick else (16, 100_000_000)
    relay = start_services(setup, workers, ["one"], sessions)
    try:
        return measured(relay, lambda: echo_load(setup, relay.endpoints, conns, size))
    finally:
        stop_relay(relay)


def echo_load(setup: Env, endpoints: list[str], conns: int, size: int) -> dict[str, Any]:
    return loadgen(
        setup,
        [
            "echo",
            "-addr",
            ",".join(endpoints),
            "-conns",
            str(conns),
            "-bytes",
            str(size),
            "-timeout",
            "120s",
        ],
        130,
    )


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    fmt: str = "{:.0f}"


WORKLOADS: dict[str, tuple[str, list[Row]]] = {
    "bulk": (
        f"{SERVICES} services at once, echo",
        [
            Row("mb_per_s", "MB/s (both directions)"),
            Row("relay_cpu_s_per_gb", "relay CPU s per GB", "{:.2f}"),
            Row("relay_cores", "relay cores used", "{:.2f}"),
            Row("busiest_worker_cores", "busiest worker's cores", "{:.2f}"),
            Row("forwarders_cpu_s_per_gb", "echo peers' CPU s per GB", "{:.2f}"),
            Row("loadgen_cpu_s_per_gb", "load generator's CPU s per GB", "{:.2f}"),
        ],
    ),
    "connrate": (
        f"{SERVICES} services at once, connect + 64 B exchange + close",
        [
            Row("conns_per_s", "connections per second"),
            Row("relay_cpu_us_per_conn", "relay CPU us per connection"),
            Row("peers_cpu_us_per_conn", "echo peers' CPU us per connection"),
            Row("loadgen_cpu_us_per_conn", "load generator's CPU us per connection"),
            Row("relay_cores", "relay cores used", "{:.2f}"),
            Row("busiest_worker_cores", "busiest worker's cores", "{:.2f}"),
        ],
    ),
    "sessions": (
        "one service, 1 session vs 2 sessions",
        [
            Row("mb_per_s", "MB/s (both directions)"),
            Row("relay_cores", "relay cores used", "{:.2f}"),
        ],
    ),
}


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["result"][key] for r in runs if r["ok"] and r["result"].get(key) is not None]
    return statistics.median(values) if values else None


def render(
    runs: list[dict[str, Any]], counts: list[int], machine: dict[str, Any], names: list[str]
) -> str:
    lines = [
        f"# relay workers: {', '.join(map(str, counts))} ({machine['date']})",
        "",
        f"{machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"Go {machine['go']}, kernel {machine['kernel']}; load {machine['load_before']} before, "
        f"{machine.get('load_after', '?')} after; medians of {machine['repeat']} runs.",
        "",
    ]
    for name in names:
        title, rows = WORKLOADS[name]
        columns = (
            [("1 session", 1), ("2 sessions", 2)]
            if name == "sessions"
            else [(f"{n} worker{'s' if n > 1 else ''}", n) for n in counts]
        )
        lines += [
            f"## {name}: {title}" + (f" ({max(counts)} workers)" if name == "sessions" else ""),
            "",
            "| | "
            + " | ".join(c for c, _ in columns)
            + f" | ratio {columns[-1][0]}/{columns[0][0]} |",
            "|---|" + "---|" * (len(columns) + 1),
        ]
        for row in rows:
            cells = []
            values = []
            for _, n in columns:
                chosen = [r for r in runs if r["workload"] == name and r["n"] == n]
                value = median(chosen, row.key)
                values.append(value)
                failed = sum(1 for r in chosen if not r["ok"])
                cell = "n/a" if value is None else row.fmt.format(value)
                cells.append(cell + (f" ({failed} failed)" if failed else ""))
            first, last = values[0], values[-1]
            ratio = f"{last / first:.2f}" if first and last is not None else "n/a"
            lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    failures = [r for r in runs if not r["ok"]]
    if failures:
        lines += ["Failures:", ""]
        lines += [
            f"- {r['workload']} n={r['n']} rep {r['rep'] + 1}: {r['error']}" for r in failures
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench --workers N1,N2",
        description="The relay with several worker counts, side by side.",
    )
    ap.add_argument("--workers", required=True, metavar="N1,N2", help="worker counts to compare")
    ap.add_argument("--only", metavar="W1,W2", help=f"workloads: {','.join(WORKLOADS)}")
    ap.add_argument("--quick", action="store_true", help="smaller loads, one repetition")
    ap.add_argument("--repeat", type=int, metavar="N", help="repetitions (default 3; 1 quick)")
    ap.add_argument("--json", metavar="FILE", help="also write every run and the machine here")
    ap.add_argument("--python", default=os.environ.get("PYTHON", "python3"))
    ap.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--no-build", action="store_true", help="use interop/build/ as it is")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' output")
    args = ap.parse_args(argv)
    try:
        args.counts = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    except ValueError:
        ap.error(f"--workers {args.workers}: give worker counts, e.g. 1,2")
    if not args.counts or args.counts[0] < 1:
        ap.error("--workers needs counts of at least 1")
    args.names = list(WORKLOADS) if not args.only else args.only.split(",")
    if bad := [n for n in args.names if n not in WORKLOADS]:
        ap.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    if "sessions" in args.names and max(args.counts) < 2:
        args.names.remove("sessions")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def main(argv: Sequence[str]) -> int:
    import json
    import sys

    args = parse_args(argv)
    if args.python == "python3":
        args.python = sys.executable
    raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="relay-bench-workers-"))
    setup = Env(logdir=logdir, python=args.python, quick=args.quick, py_loop=args.event_loop)
    machine = machine_info(args.python)
    machine["repeat"] = args.repeat
    runs: list[dict[str, Any]] = []
    plans: dict[str, tuple[list[int], Callable[[int], dict[str, Any]]]] = {
        "bulk": (args.counts, functools.partial(bulk, setup)),
        "connrate": (args.counts, functools.partial(connrate, setup)),
        "sessions": ([1, 2], functools.partial(sessions_run, setup, max(args.counts))),
    }
    try:
        if not args.no_build:
            build_go()
        for name in args.names:
            counts, one = plans[name]
            for rep in range(args.repeat):
                order = counts[rep % len(counts) :] + counts[: rep % len(counts)]
                for n in order:
                    record: dict[str, Any] = {"workload": name, "n": n, "rep": rep}
                    try:
                        res = one(n)
                    except (BenchError, ProcessError) as exc:
                        runs.append({**record, "ok": False, "error": str(exc)})
                        log(f"{name} n={n} rep {rep + 1}: FAILED: {exc}")
                        continue
                    runs.append({**record, "ok": True, "result": res})
                    shown = ", ".join(
                        f"{row.key}={row.fmt.format(res[row.key])}"
                        for row in WORKLOADS[name][1]
                        if res.get(row.key) is not None
                    )
                    log(f"{name} n={n} rep {rep + 1}/{args.repeat}: {shown}")
    except KeyboardInterrupt:
        log("interrupted; stopping every process")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all()
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            log(f"logs kept in {logdir}")
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(render(runs, args.counts, machine, args.names), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
    return 1 if any(not r["ok"] for r in runs) else 0
