"""Where a small message's time goes, hop by hop, on the real processes (Linux ``perf``).

For each path (``go``, ``py``, ``py-asyncio``) this starts the echo server and a
relay + forwarder pair as ``python -m bench`` does, then:

* counts, with ``perf stat`` on the relay and on the forwarder, system calls,
  event-loop wake-ups (``epoll_wait``/``epoll_pwait`` calls), context switches
  and CPU time per operation (a 64-byte round trip, or one sequential
  connection with ``--workload connseq``);
* for the round trip, records every system call of the four processes with
  ``perf record -a -e raw_syscalls:*`` and follows each request through them:
  client write -> relay wakes, reads, writes the frame -> forwarder wakes, reads,
  writes to the service -> echo -> and back. Each segment's median is printed:
  a *wake* segment is from the write that sent the bytes to the first system
  call of the process that receives them (loopback delivery plus scheduling),
  a *hop* segment from there to the write that passes them on (reading, our
  code, up to the write system call);
* for a sequential connection (connect, 64-byte exchange, close), follows each
  one from the client's connect(): relay accepts, writes the SYN frame,
  forwarder reads it and connects to the service, writes the request, ... the
  client reads the answer; and after the client's close() the FIN frame, the
  forwarder's shutdown of the service socket and the relay's close of the
  public socket (see ``follow_connections``).

    python -m bench.hops                          # latency: per-hop times and counts per op
    python -m bench.hops --workload connseq --paths py,py-asyncio

Needs root (or ``kernel.perf_event_paranoid`` <= -1) and a ``perf`` that lists
the ``raw_syscalls`` tracepoints. The machine's other work shows in the wake
segments: compare paths within one run.
"""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

if not __package__:  # run as `python bench/hops.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import REPO, BenchError, build_go, log, run_to_end, start, stop, stop_all
from bench.services import PATH_TITLES, Env, Pair, probe_tree, start_echo, start_pair, tree_of
from testkit.procs import Proc, raise_nofile

PATHS = ("go", "py", "py-asyncio")
READS = frozenset({0, 17, 19, 45, 47})
"""x86-64 numbers of read, pread64, readv, recvfrom, recvmsg."""
WRITES = frozenset({1, 18, 20, 44, 46})
"""write, pwrite64, writev, sendto, sendmsg."""
POLLS = frozenset({232, 281, 441})
"""epoll_wait, epoll_pwait, epoll_pwait2."""
COUNTERS = (
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "context-switches",
    "task-clock",
)
SEGMENTS = (
    "wake relay",
    "relay: socket -> frame",
    "  of which the frame's write call",
    "wake forwarder",
    "forwarder: frame -> socket",
    "wake echo server",
    "echo server",
    "wake forwarder (answer)",
    "forwarder: socket -> frame",
    "wake relay (answer)",
    "relay: frame -> socket",
    "wake client",
    "round trip",
)
CONNECTION_SEGMENTS = (
    "client connect -> relay accepts",
    "relay: accept -> first frame written (SYN)",
    "wake forwarder (SYN)",
    "forwarder: SYN read -> connect() to the service",
    "forwarder: connect() -> request written to the service",
    "echo server: request written -> answer written",
    "forwarder: answer written -> its frame written",
    "relay: frame written -> answer written to the client",
    "wake client",
    "client: connect -> answer read",
    "after the client's close: relay's FIN frame written",
    "  then the forwarder shuts the service socket down",
    "after the client's close: relay closes the public socket",
)
_LINE = re.compile(
    r"\s*\S+\s+(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+) (.*)"
)


@dataclass
class Calls:
    """One process's system calls that matter here, in time order (any thread)."""

    times: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    """"p" poll returned events, "r" read returned bytes, "w"/"W" write entered/exited,
    "accept" and "socket" returned a descriptor, "connect", "close", "shutdown" entered."""
    fds: list[int] = field(default_factory=list)
    """The descriptor each call was about (the one returned, for accept and socket)."""

    def next(self, after: float, kinds: str | tuple[str, ...], fd: int | None = None) -> float:
        return self.next_call(after, kinds, fd)[0]

    def next_call(
        self, after: float, kinds: str | tuple[str, ...], fd: int | None = None
    ) -> tuple[float, int]:
        """(time, descriptor) of the first call of one of ``kinds`` after ``after``."""
        wanted = (kinds,) if isinstance(kinds, str) else kinds
        i = bisect.bisect_right(self.times, after)
        while i < len(self.times):
            if self.kinds[i] in wanted and (fd is None or self.fds[i] == fd):
                return self.times[i], self.fds[i]
            i += 1
        raise LookupError


ENTERED: Final = {42: "connect", 3: "close", 48: "shutdown"}
RETURNED: Final = {43: "accept", 288: "accept", 41: "socket"}


def parse_trace(text: str, pids: set[int]) -> dict[int, Calls]:
    """The calls of ``pids`` (any thread) from ``perf script --ns`` output."""
    entered: dict[int, int] = {}
    events: dict[int, list[tuple[float, str, int]]] = {pid: [] for pid in pids}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or int(m.group(1)) not in pids:
            continue
        pid, tid, when, way, nr = (
            int(m.group(1)),
            int(m.group(2)),
            float(m.group(3)),
            m.group(4),
            int(m.group(5)),
        )
        if way == "enter":
            fd = int(m.group(6).strip("()").split(",")[0], 16)
            entered[tid] = fd
            if nr in WRITES:
                events[pid].append((when, "w", fd))
            elif nr in ENTERED:
                events[pid].append((when, ENTERED[nr], fd))
            continue
        fd = entered.pop(tid, -1)
        ret = int(m.group(6).split("=")[1])
        if nr in WRITES:
            events[pid].append((when, "W", fd))
        elif ret > 0 and nr in READS:
            events[pid].append((when, "r", fd))
        elif ret > 0 and nr in POLLS:
            events[pid].append((when, "p", fd))
        elif ret >= 0 and nr in RETURNED:
            events[pid].append((when, RETURNED[nr], ret))
    calls = {}
    for pid, evs in events.items():
        evs.sort()
        calls[pid] = Calls([t for t, _, _ in evs], [k for _, k, _ in evs], [f for _, _, f in evs])
    return calls


def follow(
    calls: dict[int, Calls], client: int, relay: int, fwd: int, echo: int
) -> list[list[float]]:
    """Each request's segments in microseconds (SEGMENTS order), followed from each client write."""
    out = []
    c, r, f, e = calls[client], calls[relay], calls[fwd], calls[echo]
    for i, t0 in enumerate(c.times):
        if c.kinds[i] != "w":
            continue
        try:
            r_wake = r.next(t0, ("p", "r"))
            r_read = r.next(t0, "r")
            r_write = r.next(r_read, "w")
            r_written = r.next(r_write, "W")
            f_wake = f.next(r_write, ("p", "r"))
            f_read = f.next(r_write, "r")
            f_write = f.next(f_read, "w")
            e_read = e.next(f_write, "r")
            e_write = e.next(e_read, "w")
            f_wake2 = f.next(e_write, ("p", "r"))
            f_read2 = f.next(e_write, "r")
            f_write2 = f.next(f_read2, "w")
            r_wake2 = r.next(f_write2, ("p", "r"))
            r_read2 = r.next(f_write2, "r")
            r_write2 = r.next(r_read2, "w")
            c_read = c.next(r_write2, "r")
        except LookupError:
            continue
        points = [
            r_wake - t0,
            r_write - r_wake,
            r_written - r_write,
            f_wake - r_write,
            f_write - f_wake,
            e_read - f_write,
            e_write - e_read,
            f_wake2 - e_write,
            f_write2 - f_wake2,
            r_wake2 - f_write2,
            r_write2 - r_wake2,
            c_read - r_write2,
            c_read - t0,
        ]
        if min(points) >= 0 and points[-1] < 0.01:  # a request that was followed to its end
            out.append([p * 1e6 for p in points])
    return out


def follow_connections(
    calls: dict[int, Calls], client: int, relay: int, fwd: int, echo: int
) -> list[list[float]]:
    """Each sequential connection's segments in microseconds (CONNECTION_SEGMENTS order).

    A connection is followed from the client's connect(): the relay's accept
    (whose descriptor is the public socket), its first write (the SYN frame),
    the forwarder's read of it, its socket() and connect() to the service, its
    first write on that socket, the echo server's answer, the forwarder's next
    write (the frame), the relay's write on the public socket, the client's read;
    then from the client's close(): the relay's next write (FIN frame), the
    forwarder's shutdown() of the service socket, the relay's close() of the
    public socket.
    """
    out = []
    c, r, f, e = calls[client], calls[relay], calls[fwd], calls[echo]
    for i, t0 in enumerate(c.times):
        if c.kinds[i] != "connect":
            continue
        try:
            accepted, public = r.next_call(t0, "accept")
            syn = r.next(accepted, "w")
            f_read = f.next(syn, "r")
            _, local = f.next_call(f_read, "socket")
            f_connect = f.next(f_read, "connect")
            f_request = f.next(f_connect, "w", local)
            e_answer = e.next(f_request, "w")
            f_frame = f.next(e_answer, "w")
            r_answer = r.next(f_frame, "w", public)
            c_read = c.next(r_answer, "r")
            c_close = c.next(c_read, "close")
            r_fin = r.next(c_close, "w")
            f_shutdown = f.next(r_fin, "shutdown", local)
            r_close = r.next(c_close, "close", public)
        except LookupError:
            continue
        points = [
            accepted - t0,
            syn - accepted,
            f_read - syn,
            f_connect - f_read,
            f_request - f_connect,
            e_answer - f_request,
            f_frame - e_answer,
            r_answer - f_frame,
            c_read - r_answer,
            c_read - t0,
            r_fin - c_close,
            f_shutdown - r_fin,
            r_close - c_close,
        ]
        if min(points) >= 0 and points[9] < 0.05:
            out.append([p * 1e6 for p in points])
    return out


def perf_stat(pids: dict[str, int], workdir: Path) -> dict[str, subprocess.Popen[bytes]]:
    return {
        role: subprocess.Popen(
            [
                "perf",
                "stat",
                "-x,",
                "-e",
                ",".join(COUNTERS),
                "-p",
                str(pid),
                "-o",
                str(workdir / f"stat.{role}"),
            ]
        )
        for role, pid in pids.items()
    }


def read_stat(path: Path) -> dict[str, float]:
    values = {}
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 3 and parts[2] in COUNTERS:
            try:
                values[parts[2]] = float(parts[0])
            except ValueError:
                values[parts[2]] = 0.0  # <not counted>: nothing happened
    return values


def loadgen_args(workload: str, n: int, addr: str) -> list[str]:
    if workload == "latency":
        return ["latency", "-addr", addr, "-n", str(n), "-warmup", "200", "-duration", "600s"]
    return ["connrate", "-addr", addr, "-concurrency", "1", "-max", str(n), "-duration", "600s"]


def run_loadgen(env: Env, args: list[str]) -> Proc:
    proc = start("loadgen", [env.go("loadgen"), *args], env.logdir)
    code = run_to_end(proc, 300)
    if code != 0:
        raise BenchError(f"loadgen failed ({code}): {proc.tail()}")
    return proc


def counts_per_op(env: Env, pair: Pair, workload: str, n: int, workdir: Path) -> dict[str, float]:
    """perf stat of the relay and the forwarder during ``n`` operations, per operation."""
    run_loadgen(env, loadgen_args(workload, 100, pair.endpoint))  # warm up, not counted
    stats = perf_stat({"relay": pair.relay.pid, "forwarder": pair.forwarder.pid}, workdir)
    try:
        run_loadgen(env, loadgen_args(workload, n, pair.endpoint))
    finally:
        for proc in stats.values():
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    out = {}
    for role in stats:
        values = read_stat(workdir / f"stat.{role}")
        out[f"{role}: system calls"] = values.get("raw_syscalls:sys_enter", 0) / n
        out[f"{role}: loop wake-ups (epoll calls)"] = (
            values.get("syscalls:sys_enter_epoll_wait", 0)
            + values.get("syscalls:sys_enter_epoll_pwait", 0)
        ) / n
        out[f"{role}: context switches"] = values.get("context-switches", 0) / n
        out[f"{role}: CPU us"] = values.get("task-clock", 0) * 1000 / n  # task-clock is in ms
    return out


def hop_times(
    env: Env, pair: Pair, echo: Proc, workload: str, n: int, workdir: Path
) -> list[float]:
    """Median microseconds per segment of ``n`` operations, from a system-wide syscall trace;
    the last item is how many operations were followed."""
    data = workdir / "trace.data"
    recorder = subprocess.Popen(
        [
            "perf",
            "record",
            "-q",
            "-a",
            "-e",
            "raw_syscalls:sys_enter,raw_syscalls:sys_exit",
            "-o",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # perf sets up its buffers on every CPU first
        client = run_loadgen(env, loadgen_args(workload, n, pair.endpoint))
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    text = subprocess.run(
        ["perf", "script", "-i", str(data), "--ns", "-F", "comm,pid,tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data.unlink()
    pids = {client.pid, pair.relay.pid, pair.forwarder.pid, echo.pid}
    how = follow if workload == "latency" else follow_connections
    rows = how(parse_trace(text, pids), client.pid, pair.relay.pid, pair.forwarder.pid, echo.pid)
    if not rows:
        raise BenchError(f"no {workload} operation could be followed through the trace")
    return [statistics.median(col) for col in zip(*rows, strict=True)] + [float(len(rows))]


def table(heads: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__.split("\n")[0])
    ap.add_argument("--paths", default=",".join(PATHS), help=f"from {','.join(PATHS)}")
    ap.add_argument("--workload", choices=("latency", "connseq"), default="latency")
    ap.add_argument("--n", type=int, default=3000, help="round trips or connections per path")
    ap.add_argument("--no-build", action="store_true", help="use interop/build/ as it is")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs -m relay")
    args = ap.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        ap.error(f"--paths: choose from {','.join(PATHS)}")
    if shutil.which("perf") is None:
        ap.error("needs perf (apt-get install linux-perf)")
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="relay-hops-"))
    env = Env(logdir=workdir, python=args.python, quick=True)
    counts: dict[str, dict[str, float]] = {}
    hops: dict[str, list[float]] = {}
    """Per path: the median of each segment, then the number of operations followed."""
    try:
        if not args.no_build:
            build_go()
        if any(tree_of(p) == "py" for p in paths):
            env.trees["py"] = probe_tree(env, REPO)
        echo = start_echo(env)
        for path in paths:
            pair = start_pair(env, path, env.echo_addr)
            try:
                counts[path] = counts_per_op(env, pair, args.workload, args.n, workdir)
                hops[path] = hop_times(env, pair, echo, args.workload, args.n, workdir)
            finally:
                stop(pair.forwarder)
                stop(pair.relay)
            log(f"{path}: done")
        stop(echo)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    titles = [PATH_TITLES[p] for p in paths]
    per = "64-byte round trip" if args.workload == "latency" else "sequential connection"
    print(f"## Per {per}: relay and forwarder (perf stat, {args.n} operations)\n")
    keys = list(next(iter(counts.values())))
    print(table(["per op", *titles], [[k] + [f"{counts[p][k]:.1f}" for p in paths] for k in keys]))
    followed = ", ".join(f"{PATH_TITLES[p]} {hops[p][-1]:.0f}" for p in paths)
    what = "hop" if args.workload == "latency" else "step of a connection"
    print(f"\n## Per {what}, median microseconds ({per}s followed: {followed})\n")
    segments = SEGMENTS if args.workload == "latency" else CONNECTION_SEGMENTS
    rows = [[seg] + [f"{hops[p][i]:.1f}" for p in paths] for i, seg in enumerate(segments)]
    print(table(["segment", *titles], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
