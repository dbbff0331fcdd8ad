"""Benchmark: the project's relay against the Go relay of the same design, and no relay.

Run from the repository root::

    python -m bench                 # the full set, about 3-4 minutes (3 repetitions)
    python -m bench --quick         # a smaller set, under a minute
    python -m bench --only latency,connrate --paths go,py --repeat 5 --json out.json

Every workload runs on each path -- ``direct`` (the load generator talks to the
echo server itself), ``go`` (interop/build/go-relay + go-forwarder) and ``py``
(``python -m relay`` as relay and as forwarder) -- alternating the paths within
each repetition; a fresh relay + forwarder pair is started for every run and
killed after it. The load comes from the Go program interop/go/loadgen, the echo
service is interop/go/echo-server, redis numbers come from Debian's redis-server
and redis-benchmark. Everything listens on 127.0.0.1 only.

The script needs only the standard library. It builds the Go programs with
interop/build.sh (under the same lock as interop/harness.py). See bench/README.md
for how to read the output.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit import gobuild
from testkit.ports import free_port
from testkit.procs import Proc, ProcessError, ProcGroup, Stream, raise_nofile

REPO = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO / "interop" / "build"
BUILD_SCRIPT = REPO / "interop" / "build.sh"
GO_PROGRAMS = ("go-relay", "go-forwarder", "loadgen", "echo-server")
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE_WANTED = 65536

PATHS = ("direct", "go", "py")
PATH_TITLES = {"direct": "direct", "go": "Go relay", "py": "project relay"}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A run could not be done (a process did not start, died, or timed out)."""


# --------------------------------------------------------------------- processes


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


PROCS = ProcGroup(new_session=True, more_files=True)
"""Every process of the bench (in its own process group, descriptors raised); stop_all ends them."""


def start(name: str, argv: Sequence[str], logdir: Path, *,
          env: dict[str, str] | None = None, stdin: bool = False) -> Proc:
    return PROCS.start(argv, name, env=env, stdin=stdin, log_dir=logdir)


def stop(proc: Proc) -> None:
    """SIGTERM the process group, SIGKILL it after 3 s."""
    PROCS.stop(proc, grace=3.0)


def stop_all() -> None:
    with contextlib.suppress(Exception):
        PROCS.close(grace=3.0)


def wait_for(proc: Proc, pattern: str, timeout: float, stream: Stream = "stdout") -> re.Match[str]:
    try:
        return proc.wait_line(pattern, stream=stream, timeout=timeout)[1]
    except ProcessError:
        raise BenchError(f"{proc.name} printed no /{pattern}/ within {timeout:g} s "
                         f"(exit status {proc.returncode}): {proc.tail()}") from None


def run_to_end(proc: Proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{proc.name} still running after {timeout:g} s: {proc.tail()}") from None


# ---------------------------------------------------------------------- services


@dataclass
class Env:
    """What every run needs: tools, the echo and redis services, options."""

    logdir: Path
    python: str
    quick: bool
    echo_addr: str = ""
    redis_addr: str = ""
    py_relay_opts: list[str] = field(default_factory=list)
    py_loop: str = "auto"
    """--event-loop of the project's relay and forwarder: auto (uvloop if installed), asyncio."""
    py_env: dict[str, str] = field(default_factory=dict)

    def go(self, prog: str) -> str:
        return str(BUILD_DIR / prog)


def build_go() -> None:
    if shutil.which("go") is None:
        missing = [p for p in GO_PROGRAMS if not (BUILD_DIR / p).exists()]
        if missing:
            raise BenchError(f"`go` not found and {', '.join(missing)} not built "
                             "(apt-get install golang-go golang-github-hashicorp-yamux-dev)")
        log("`go` not found; using the programs already in interop/build/")
        return
    try:
        took = gobuild.build_go(BUILD_DIR)
    except gobuild.GoBuildError as exc:
        raise BenchError(str(exc)) from None
    log(f"Go programs built in {took:.1f} s")


def start_echo(env: Env) -> Proc:
    proc = start("echo-server", [env.go("echo-server"), "-addr", f"{HOST}:0"], env.logdir)
    env.echo_addr = wait_for(proc, r"^(\S+:\d+)$", 10).group(1)
    return proc


def start_redis(env: Env) -> Proc | None:
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        log("redis-server / redis-benchmark not found (apt-get install redis-server): "
            "skipping the redis workload")
        return None
    for _ in range(5):
        port = free_port()
        proc = start("redis-server", [
            "redis-server", "--port", str(port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--maxclients", "10000",
            "--dir", str(env.logdir)], env.logdir)
        try:
            wait_for(proc, r"Ready to accept connections", 10)
        except BenchError:
            stop(proc)
            continue
        env.redis_addr = f"{HOST}:{port}"
        return proc
    raise BenchError("redis-server did not start")


def probe_py_relay(env: Env) -> None:
    """Check that `python -m relay` exists and learn which options it has."""
    env.py_env = dict(os.environ)
    env.py_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env.py_env["PYTHONPATH"]] if env.py_env.get("PYTHONPATH") else []))
    proc = subprocess.run([env.python, "-m", "relay", "--help"], capture_output=True, text=True,
                          cwd=REPO, env=env.py_env, timeout=30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"`{env.python} -m relay --help` failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    opts = []
    if "--bind" in proc.stdout:
        opts += ["--bind", HOST]
    if "--max-connections" in proc.stdout:
        # The default (1000 per registered service) is below the 10,000-connection workload.
        opts += ["--max-connections", "1000000"]
    env.py_relay_opts = opts


@dataclass
class Pair:
    """A relay and a forwarder in front of `target`; `endpoint` is the public HOST:PORT."""

    relay: Proc
    forwarder: Proc
    endpoint: str

    def procs(self) -> tuple[Proc, Proc]:
        return self.relay, self.forwarder


SERVING = r"Serving relay requests on port (\d+)"
ENDPOINT = r"^(\S+:\d+)\s*$"


def start_go_pair(env: Env, target: str) -> Pair:
    relay = start("go-relay", [env.go("go-relay"), "-port", "0", "-bind", HOST,
                               "-public-bind", HOST], env.logdir)
    try:
        port = wait_for(relay, SERVING, 10, "both").group(1)
    except BaseException:
        stop(relay)
        raise
    return with_forwarder(relay, "go-forwarder", [env.go("go-forwarder"), "-relay",
                                                  f"{HOST}:{port}", "-local", target], env, 10)


def with_forwarder(relay: Proc, name: str, argv: list[str], env: Env, timeout: float,
                   proc_env: dict[str, str] | None = None) -> Pair:
    """Start the forwarder `argv` in front of `relay`; stop both if it shows no endpoint."""
    try:
        fwd = start(name, argv, env.logdir, env=proc_env)
    except BaseException:
        stop(relay)
        raise
    try:
        endpoint = wait_for(fwd, ENDPOINT, timeout).group(1)
    except BaseException:
        stop(fwd)
        stop(relay)
        raise
    return Pair(relay, fwd, endpoint)


def start_py_pair(env: Env, target: str) -> Pair:
    relay = None
    for _ in range(5):  # the relay takes no port 0: pick a free one, retry if taken meanwhile
        port = free_port()
        relay = start("py-relay", [env.python, "-m", "relay", *env.py_relay_opts,
                                   "--event-loop", env.py_loop, str(port)],
                      env.logdir, env=env.py_env)
        try:
            wait_for(relay, SERVING, 30, "both")
            break
        except BenchError as exc:
            stop(relay)
            relay = None
            if "in use" not in str(exc):
                raise
    if relay is None:
        raise BenchError("the project relay found no free control port")
    target_host, target_port = target.rsplit(":", 1)
    return with_forwarder(relay, "py-forwarder", [
        env.python, "-m", "relay", "--event-loop", env.py_loop,
        f"--localForwardPort={target_port}", "--local-forward-host", target_host, HOST, str(port),
    ], env, 30, env.py_env)


@contextlib.contextmanager
def path_endpoint(env: Env, path: str, target: str) -> Iterator[Pair | None]:
    """Yield the pair for `path` (None for direct), always stopping it afterwards."""
    if path == "direct":
        yield None
        return
    pair = start_go_pair(env, target) if path == "go" else start_py_pair(env, target)
    try:
        yield pair
    finally:
        stop(pair.forwarder)
        stop(pair.relay)


# --------------------------------------------------------------------- workloads


@dataclass
class Metric:
    key: str     # key in a run's result
    label: str   # row label in the table
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


def loadgen(env: Env, args: list[str], timeout: float) -> dict[str, Any]:
    proc = start("loadgen", [env.go("loadgen"), *args], env.logdir)
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
        return loadgen(env, ["echo", "-addr", addr, "-conns", str(conns), "-bytes", str(size),
                             "-timeout", f"{timeout:g}s"], timeout + 10)
    metrics = [Metric("mb_per_s", title, "MB/s", "higher")]
    if conns >= 1000:  # opening many at once is a result of its own (not in the MB/s)
        metrics.append(Metric("connect_s", f"{conns} conns: time to connect all", "s", "lower",
                              "{:.2f}"))
    return Workload(name, title, metrics, run, "GB", timeout)


def latency_workload(n: int, duration: float) -> Workload:
    timeout = duration + 30

    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        res = loadgen(env, ["latency", "-addr", addr, "-size", "64", "-n", str(n),
                            "-duration", f"{duration:g}s", "-timeout", f"{timeout:g}s"],
                      timeout + 10)
        res["ops"] = res["round_trips"]
        return res
    return Workload("latency", "64-byte request/response, 1 connection", [
        Metric("p50_us", "64 B round trip p50", "us", "lower", "{:.1f}"),
        Metric("p99_us", "64 B round trip p99", "us", "lower", "{:.1f}"),
    ], run, "op", timeout)


def connrate_workload(duration: float) -> Workload:
    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        res = loadgen(env, ["connrate", "-addr", addr, "-size", "64", "-concurrency", "16",
                            "-duration", f"{duration:g}s", "-timeout", "10s"], duration + 30)
        res["ops"] = res["connections"]
        return res
    return Workload("connrate", "new connections (connect, 64 B exchange, close), 16 at once",
                    [Metric("conns_per_s", "new connections", "conn/s", "higher")], run, "op",
                    duration + 30)


def idle_workload(conns: int, timeout: float) -> Workload:
    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        before = {p.name: p.rss_bytes() for p in pair.procs()} if pair else {}
        proc = start("loadgen", [env.go("loadgen"), "idle", "-addr", addr, "-conns", str(conns),
                                 "-size", "64", "-timeout", f"{timeout:g}s"], env.logdir,
                     stdin=True)
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
    return Workload("idle", f"{conns} concurrent idle connections", [
        Metric("all_work", f"{k} idle conns: all work (1 = yes)", "", "higher", "{:.0f}"),
        Metric("open_s", f"{k} idle conns: time to open all", "s", "lower", "{:.2f}"),
        Metric("relay_rss_per_conn", f"{k} idle conns: relay RSS/conn", "bytes", "lower"),
        Metric("forwarder_rss_per_conn", f"{k} idle conns: forwarder RSS/conn", "bytes",
               "lower"),
    ], run, "op", timeout)


REDIS_LINE = re.compile(r"\b(SET|GET): ([\d.]+) requests per second")


def redis_workload(requests: int, timeout: float) -> Workload:
    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        host, port = addr.rsplit(":", 1)
        proc = start("redis-benchmark", ["redis-benchmark", "-h", host, "-p", port,
                                         "-t", "set,get", "-c", "50", "-n", str(requests), "-q"],
                     env.logdir)
        try:
            code = run_to_end(proc, timeout)
            found = dict(REDIS_LINE.findall(proc.stdout_text.replace("\r", "\n")))
            if code != 0 or set(found) != {"SET", "GET"}:
                raise BenchError(f"redis-benchmark exited {code}: {proc.tail()}")
        finally:
            stop(proc)
        return {"set_ops_per_s": float(found["SET"]), "get_ops_per_s": float(found["GET"]),
                "ops": 2 * requests}
    return Workload("redis", "redis-benchmark SET/GET, 50 clients", [
        Metric("set_ops_per_s", "redis-benchmark SET", "ops/s", "higher"),
        Metric("get_ops_per_s", "redis-benchmark GET", "ops/s", "higher"),
    ], run, "op", timeout)


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            echo_workload("1x1GB", "1 conn x 200 MB echoed", 1, 200_000_000, 60),
            echo_workload("100x10MB", "100 conns x 2 MB echoed", 100, 2_000_000, 60),
            echo_workload("1000x100KB", "1000 conns x 20 KB echoed", 1000, 20_000, 60),
            latency_workload(2000, 1.0),
            connrate_workload(1.0),
            idle_workload(2000, 60),
            redis_workload(10_000, 60),
        ]
    return [
        echo_workload("1x1GB", "1 conn x 1 GB echoed", 1, 1_000_000_000, 90),
        echo_workload("100x10MB", "100 conns x 10 MB echoed", 100, 10_000_000, 90),
        echo_workload("1000x100KB", "1000 conns x 100 KB echoed", 1000, 100_000, 60),
        latency_workload(10_000, 3.0),
        connrate_workload(2.0),
        idle_workload(10_000, 90),
        redis_workload(50_000, 90),
    ]


# ------------------------------------------------------------------------ runner


def run_one(env: Env, wl: Workload, path: str) -> dict[str, Any]:
    """One workload on one path: fresh relay pair, CPU before/after, stop everything."""
    target = env.redis_addr if wl.name == "redis" else env.echo_addr
    t0 = time.monotonic()
    with path_endpoint(env, path, target) as pair:
        addr = pair.endpoint if pair else target
        cpu0 = {p.name: p.cpu_seconds() for p in pair.procs()} if pair else {}
        res = wl.run(env, addr, pair)
        if pair:
            for p, role in ((pair.relay, "relay"), (pair.forwarder, "forwarder")):
                if not p.alive():
                    raise BenchError(f"{p.name} died during the run: {p.tail()}")
                res[f"{role}_cpu_s"] = p.cpu_seconds() - cpu0[p.name]
    res["wall_s"] = time.monotonic() - t0
    return res


def cpu_cost(res: dict[str, Any], role: str, per: str) -> float | None:
    cpu = res.get(f"{role}_cpu_s")
    if cpu is None:
        return None
    if per == "GB":
        moved = res.get("bytes_moved") or 0
        return cpu / (moved / 1e9) if moved else None
    ops = res.get("ops") or 0
    return cpu / ops * 1e6 if ops else None  # microseconds per op


def median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(wls: list[Workload], paths: list[str], runs: list[dict[str, Any]],
              repeat: int) -> dict[str, Any]:
    rows = []
    cpu_rows = []
    for wl in wls:
        by_path = {p: [r for r in runs if r["workload"] == wl.name and r["path"] == p]
                   for p in paths}
        for m in wl.metrics:
            row: dict[str, Any] = {"workload": wl.name, "metric": m.key, "label": m.label,
                                   "unit": m.unit, "better": m.better, "fmt": m.fmt}
            for p in paths:
                ok = [r["result"][m.key] for r in by_path[p]
                      if r["ok"] and r["result"].get(m.key) is not None]
                failed = [r["error"] for r in by_path[p] if not r["ok"]]
                row[p] = {"median": statistics.median(ok) if ok else None, "values": ok,
                          "runs": len(by_path[p]), "failed": len(failed),
                          "errors": failed[:3]}
            go, py = row.get("go", {}).get("median"), row.get("py", {}).get("median")
            row["ratio"] = py / go if go and py is not None else None
            rows.append(row)
        unit = "CPU s per GB moved" if wl.cpu_per == "GB" else "CPU us per op"
        crow: dict[str, Any] = {"workload": wl.name, "title": wl.title, "unit": unit}
        for p in paths:
            if p == "direct":
                continue
            ok = [r["result"] for r in by_path[p] if r["ok"]]
            crow[p] = {role: median_or_none([cpu_cost(r, role, wl.cpu_per) for r in ok])
                       for role in ("relay", "forwarder")}
        go_c, py_c = crow.get("go"), crow.get("py")
        if go_c and py_c and None not in go_c.values() and None not in py_c.values():
            go_sum = go_c["relay"] + go_c["forwarder"]
            crow["ratio"] = (py_c["relay"] + py_c["forwarder"]) / go_sum if go_sum else None
        else:
            crow["ratio"] = None
        cpu_rows.append(crow)
    return {"rows": rows, "cpu_rows": cpu_rows, "repeat": repeat}


def fmt_cell(cell: dict[str, Any] | None, fmt: str) -> str:
    if cell is None:
        return "-"
    if cell["median"] is None and not cell["failed"]:
        return "n/a"
    if cell["median"] is None:
        return f"FAIL ({cell['failed']}/{cell['runs']})" if cell["runs"] else "-"
    text = fmt.format(cell["median"])
    if cell["failed"]:
        text += f" ({cell['runs'] - cell['failed']}/{cell['runs']} ok)"
    return text


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def render(summary: dict[str, Any], machine: dict[str, Any], paths: list[str]) -> str:
    out = []
    out.append("## Relay benchmark")
    out.append("")
    for key in ("date", "nproc", "cpu", "python", "go", "kernel", "load_before",
                "load_after", "mode", "event_loop", "repeat", "duration_s"):
        if key in machine:
            out.append(f"- {key}: {machine[key]}")
    out.append("")
    heads = ["workload", *(PATH_TITLES[p] for p in paths)]
    if "go" in paths and "py" in paths:
        heads.append("ratio project/Go")
    out.append("| " + " | ".join(heads) + " |")
    out.append("|" + "---|" * len(heads))
    for row in summary["rows"]:
        label = f"{row['label']} ({row['unit']}, {row['better']} is better)" if row["unit"] \
            else f"{row['label']}"
        cells = [label]
        for p in paths:
            cells.append(fmt_cell(row.get(p), row["fmt"]))
        if "go" in paths and "py" in paths:
            cells.append("-" if row["ratio"] is None else f"{row['ratio']:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    relay_paths = [p for p in paths if p != "direct"]
    if relay_paths:
        out.append("")
        out.append("CPU time of the relay and forwarder processes (utime+stime), medians; "
                   "GB moved counts both directions:")
        out.append("")
        heads = ["workload", "unit"]
        for p in relay_paths:
            heads += [f"{PATH_TITLES[p]}: relay", f"{PATH_TITLES[p]}: forwarder"]
        if len(relay_paths) == 2:
            heads.append("ratio project/Go (sum)")
        out.append("| " + " | ".join(heads) + " |")
        out.append("|" + "---|" * len(heads))
        for crow in summary["cpu_rows"]:
            cells = [crow["title"], crow["unit"]]
            for p in relay_paths:
                cells += [fmt_num(crow[p]["relay"]), fmt_num(crow[p]["forwarder"])]
            if len(relay_paths) == 2:
                cells.append("-" if crow["ratio"] is None else f"{crow['ratio']:.2f}")
            out.append("| " + " | ".join(cells) + " |")
    failures = [(row["label"], p, e) for row in summary["rows"] for p in paths
                for e in (row.get(p) or {}).get("errors", [])]
    if failures:
        out.append("")
        out.append("Failures:")
        seen = set()
        for label, p, e in failures:
            if (p, e) in seen:
                continue
            seen.add((p, e))
            out.append(f"- {PATH_TITLES[p]}, {label}: {e[:400]}")
    return "\n".join(out)


def machine_info(python: str) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pyver = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                           capture_output=True, text=True, check=False).stdout.strip()
    gover = "?"
    if shutil.which("go"):
        gover = subprocess.run(["go", "version"], capture_output=True, text=True,
                               check=False).stdout.strip().removeprefix("go version ")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": pyver,
        "go": gover,
        "kernel": platform.release(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [wl.name for wl in workloads(False)]
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the project's relay against the Go relay and no relay.")
    ap.add_argument("--quick", action="store_true",
                    help="smaller workloads, one repetition (under a minute)")
    ap.add_argument("--only", metavar="W1,W2", help=f"workloads to run: {','.join(names)}")
    ap.add_argument("--paths", default=",".join(PATHS), metavar="P1,P2",
                    help="paths to run (default: direct,go,py)")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="repetitions of every workload on every path (default 3; 1 with --quick)")
    ap.add_argument("--json", metavar="FILE", help="also write every run and the summary here")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that runs `-m relay` (default: this one)")
    ap.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                    help="event loop of the project's relay and forwarder (default auto: "
                         "uvloop when installed)")
    ap.add_argument("--no-build", action="store_true",
                    help="do not run interop/build.sh; use interop/build/ as it is")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the processes' output files (their directory is printed)")
    args = ap.parse_args(argv)
    args.workloads = names if not args.only else [w.strip() for w in args.only.split(",") if w]
    bad = [w for w in args.workloads if w not in names]
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(names)}")
    args.path_list = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in args.path_list if p not in PATHS]
    if bad or not args.path_list:
        ap.error(f"unknown path(s) {', '.join(bad)}; choose from {', '.join(PATHS)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    # SIGTERM / SIGHUP unwind like Ctrl-C, so every finally (and stop_all) runs.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    atexit.register(stop_all)
    raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    env = Env(logdir=logdir, python=args.python, quick=args.quick, py_loop=args.event_loop)
    wls = [wl for wl in workloads(args.quick) if wl.name in args.workloads]
    paths = [p for p in PATHS if p in args.path_list]
    runs: list[dict[str, Any]] = []
    unusable: dict[str, str] = {}
    machine = machine_info(args.python)
    machine["mode"] = "quick" if args.quick else "default"
    machine["event_loop"] = args.event_loop
    machine["repeat"] = args.repeat
    idle_conns = 2000 if args.quick else 10_000
    if nofile_limit() < idle_conns + 1000 and any(wl.name == "idle" for wl in wls):
        log(f"warning: RLIMIT_NOFILE is only {nofile_limit()}; the idle workload may fail")
    echo = redis = None
    try:
        if not args.no_build:
            build_go()
        if "py" in paths:
            try:
                probe_py_relay(env)
            except BenchError as exc:
                # Still measure the other paths; every py run is reported as failed.
                unusable["py"] = str(exc)
                log(f"the project relay cannot run: {exc}")
        echo = start_echo(env)
        if any(wl.name == "redis" for wl in wls):
            redis = start_redis(env)
            if redis is None:
                wls = [wl for wl in wls if wl.name != "redis"]
        log(f"echo server {env.echo_addr}, redis {env.redis_addr or '-'}, logs in {logdir}")
        for wl in wls:
            broken = set(unusable)  # a path that failed is not retried for this workload
            for rep in range(args.repeat):
                order = paths[rep % len(paths):] + paths[:rep % len(paths)]
                for path in order:
                    if path in broken:
                        why = unusable.get(path, "skipped after an earlier failure")
                        runs.append({"workload": wl.name, "path": path, "rep": rep,
                                     "ok": False, "error": why})
                        continue
                    try:
                        res = run_one(env, wl, path)
                        runs.append({"workload": wl.name, "path": path, "rep": rep, "ok": True,
                                     "result": res})
                        shown = ", ".join(f"{m.key}={m.fmt.format(res[m.key])}"
                                          for m in wl.metrics if res.get(m.key) is not None)
                        log(f"{wl.name} rep {rep + 1}/{args.repeat} {path}: {shown} "
                            f"({res['wall_s']:.1f} s)")
                    except (BenchError, ProcessError) as exc:
                        broken.add(path)
                        runs.append({"workload": wl.name, "path": path, "rep": rep,
                                     "ok": False, "error": str(exc)})
                        log(f"{wl.name} rep {rep + 1}/{args.repeat} {path}: FAILED: {exc}")
            if echo and not echo.alive():
                raise BenchError(f"the echo server died: {echo.tail()}")
    except KeyboardInterrupt:
        log("interrupted; stopping every process")
        stop_all()
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        stop_all()
        return 1
    finally:
        for proc in (redis, echo):
            if proc:
                stop(proc)
        stop_all()
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["duration_s"] = round(time.monotonic() - t_start, 1)
    summary = summarize(wls, paths, runs, args.repeat)
    print(render(summary, machine, paths), flush=True)
    if args.json:
        doc = {"machine": machine, "paths": paths, "workloads": [wl.name for wl in wls],
               "summary": summary, "runs": runs}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    failed = sum(1 for r in runs if not r["ok"])
    if failed:
        log(f"{failed} of {len(runs)} runs failed (see Failures above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
