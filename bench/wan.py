"""``python -m bench --wan``: the relay over emulated WAN links, next to direct TCP and Go.

Three network namespaces (bench/netns.py): client --LAN-- relay --WAN--
service, every veth 1 Gbit/s (tc tbf). This kernel has no sch_netem, so the
WAN's delay and rate come from testkit.link.SlowLink processes in the relay
namespace: one carries the forwarder's connection to the relay's control port
(so the yamux session, and with it every relayed stream, crosses the WAN),
two more carry the direct path from the client to the services. The one-way
delay is RTT / 2 in each direction; the rate 125,000,000 bytes/s (1 Gbit/s).

For every RTT row, every workload runs on every path, alternating the paths
within each repetition, with a fresh relay + forwarder pair per run; the table
shows medians. Paths: ``direct`` (client -> link -> service), ``go``
(go-relay + go-forwarder, hashicorp/yamux, 256 KiB window), ``py`` (this
relay as it is configured by default), ``py16`` (this relay with a fixed 16 MiB
stream window: ``--max-stream-window`` where the CLI has it, else
bench/fixed_window.py), and optionally ``go16`` (Go with 16 MiB) and ``base``
(``--baseline`` tree, default settings).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.netns import LAN, WAN, Topology, remove_stale
from bench.processes import (
    REPO,
    BenchError,
    build_go,
    log,
    run_to_end,
    start,
    stop,
    stop_all,
    wait_for,
)
from bench.report import machine_info
from bench.run import (
    check_paths_and_repeat,
    install_signal_handlers,
    measure,
    probe_trees,
    run_alternating,
    write_json_and_count_failures,
)
from bench.services import (
    Env,
    Layout,
    Pair,
    start_go_pair,
    start_py_pair,
    stopping,
)
from bench.workloads import Metric, Workload, echo_workload, latency_workload
from testkit.procs import Proc, raise_nofile

WAN_PATHS: Final = ("direct", "go", "py", "pyauto", "py16", "go16", "base")
DEFAULT_PATHS: Final = ("direct", "go", "py", "py16")
"""Plus ``pyauto`` when this tree's relay has ``--window-autotune``."""
TITLES: Final = {
    "direct": "direct TCP",
    "go": "Go relay (hashicorp, 256 KiB)",
    "go16": "Go relay, 16 MiB window",
    "py": "this relay (default)",
    "pyauto": "this relay, auto-tuned to 16 MiB",
    "py16": "this relay, 16 MiB window",
    "base": "baseline relay (default)",
}
BIG_WINDOW: Final = 16 * 1024 * 1024
RATE: Final = 125_000_000.0
"""Bytes per second of the emulated WAN, each direction (1 Gbit/s)."""
CONTROL_PORT: Final = 7000
"""The relay's control port in the relay namespace (a namespace of our own: no clashes)."""
CONTROL_LINK_PORT: Final = 7001
IPERF_PORT: Final = 5201
IPERF_LINK_PORT: Final = 7002
ECHO_LINK_PORT: Final = 7003


@dataclass
class Wan:
    """The namespaces, the links of the current RTT row, the services, the measured trees."""

    env: Env
    topo: Topology
    rate: float
    echo_port: int = 0
    links: list[Proc] = field(default_factory=list)

    def layout(self) -> Layout:
        return Layout(
            relay_at=self.topo.relay_lan,
            forwarder_at=self.topo.service,
            bind="0.0.0.0",
            control_port=CONTROL_PORT,
            dial=f"{WAN[0]}:{CONTROL_LINK_PORT}",
            public_host=LAN[1],
        )

    def start_link(self, listen: str, target: str, delay: float) -> Proc:
        proc = start(
            "slowlink",
            self.topo.relay_lan.argv(
                self.env.python,
                "-m",
                "testkit.link",
                "--listen",
                listen,
                "--target",
                target,
                "--delay",
                f"{delay:g}",
                "--rate",
                f"{self.rate:g}",
            ),
            self.env.logdir,
        )
        wait_for(proc, r"^LISTENING ", 15)
        return proc

    def set_rtt(self, rtt_ms: float) -> None:
        """(Re)start the three links with a one-way delay of RTT / 2."""
        for proc in self.links:
            stop(proc)
        delay = rtt_ms / 2000
        self.links = [
            self.start_link(f"{WAN[0]}:{CONTROL_LINK_PORT}", f"127.0.0.1:{CONTROL_PORT}", delay),
            self.start_link(f"{LAN[1]}:{IPERF_LINK_PORT}", f"{WAN[1]}:{IPERF_PORT}", delay),
            self.start_link(f"{LAN[1]}:{ECHO_LINK_PORT}", f"{WAN[1]}:{self.echo_port}", delay),
        ]

    def start_pair(self, path: str, target: str) -> Pair:
        layout = self.layout()
        if path == "go":
            return start_go_pair(self.env, target, layout)
        if path == "go16":
            return start_go_pair(self.env, target, layout, ("-window", str(BIG_WINDOW)))
        if path in ("py16", "pyauto"):
            tree = self.env.trees["py"]
            if path == "pyauto":
                if not tree.has_option("--window-autotune"):
                    raise BenchError("this tree's relay has no --window-autotune")
                opts: tuple[str, ...] = (
                    "--max-stream-window",
                    str(BIG_WINDOW),
                    "--window-autotune",
                )
            elif tree.has_option("--max-stream-window"):
                opts = ("--max-stream-window", str(BIG_WINDOW))
                if tree.has_option("--no-window-autotune"):
                    opts += ("--no-window-autotune",)
            else:
                launcher = (str(REPO / "bench" / "fixed_window.py"), str(BIG_WINDOW))
                return start_py_pair(self.env, target, tree, layout, launcher=launcher)
            return start_py_pair(self.env, target, tree, layout, py_opts=opts)
        return start_py_pair(self.env, target, self.env.trees[path], layout)


def iperf_workload(duration: float) -> Workload:
    """One TCP stream client -> service for ``duration`` s (iperf3; the first second omitted)."""
    timeout = duration + 40

    def run(env: Env, addr: str, pair: Pair | None) -> dict[str, Any]:
        host, port = addr.rsplit(":", 1)
        proc = start(
            "iperf3",
            env.client.argv(
                "iperf3",
                "-c",
                host,
                "-p",
                port,
                "-t",
                f"{duration:g}",
                "-O",
                "1",
                "-J",
                "--connect-timeout",
                "10000",
            ),
            env.logdir,
        )
        try:
            code = run_to_end(proc, timeout)
        finally:
            stop(proc)
        try:
            doc = json.loads(proc.stdout_text)
        except ValueError:
            raise BenchError(f"iperf3 exited {code} without JSON: {proc.tail()}") from None
        if doc.get("error") or code != 0:
            raise BenchError(f"iperf3 exited {code}: {doc.get('error', proc.tail())}")
        received = doc["end"]["sum_received"]
        return {"mb_per_s": received["bits_per_second"] / 8 / 1e6, "bytes_moved": received["bytes"]}

    return Workload(
        "stream",
        f"1 stream, iperf3 -t {duration:g}",
        [Metric("mb_per_s", "1 stream (iperf3, client -> service)", "MB/s", "higher", "{:.1f}")],
        run,
        "GB",
        timeout,
    )


def wan_workloads(quick: bool, duration: float) -> list[Workload]:
    latency = latency_workload(1000, 1.0 if quick else 2.0, warmup=3)
    return [
        iperf_workload(duration),
        echo_workload("100x2MB", "100 conns x 2 MB echoed", 100, 2_000_000, 180),
        latency,
    ]


def run_wan_one(wan: Wan, wl: Workload, path: str) -> dict[str, Any]:
    """One workload on one path over the current links (fresh pair, fresh iperf3 server)."""
    t0 = time.monotonic()
    server = None
    if wl.name == "stream":
        server = start(
            "iperf3-server",
            wan.topo.service.argv("iperf3", "-s", "-1", "--forceflush", "-p", str(IPERF_PORT)),
            wan.env.logdir,
        )
    try:
        if server is not None:
            wait_for(server, r"Server listening", 10)
        local = IPERF_PORT if wl.name == "stream" else wan.echo_port
        direct = IPERF_LINK_PORT if wl.name == "stream" else ECHO_LINK_PORT
        pair = None if path == "direct" else wan.start_pair(path, f"127.0.0.1:{local}")
        with stopping(pair):
            addr = pair.endpoint if pair else f"{LAN[1]}:{direct}"
            res = measure(wan.env, wl, addr, pair)
    finally:
        if server is not None:
            stop(server)
    res["wall_s"] = time.monotonic() - t0
    return res


# ------------------------------------------------------------------------- table


def cell_value(runs: list[dict[str, Any]], key: str) -> tuple[float | None, int, int]:
    """Median of ``key`` over the runs that worked; number of runs and of failures."""
    ok = [r["result"][key] for r in runs if r["ok"] and r["result"].get(key) is not None]
    failed = sum(1 for r in runs if not r["ok"])
    return (statistics.median(ok) if ok else None), len(runs), failed


def measured_rtt(runs: list[dict[str, Any]], rtt: float) -> str:
    """`` (2.43 measured)``: the direct path's 64-byte p50, the link's real round trip."""
    sel = [
        r
        for r in runs
        if r["rtt_ms"] == rtt and r["workload"] == "latency" and r["path"] == "direct"
    ]
    value = cell_value(sel, "p50_us")[0]
    return "" if value is None else f" ({value / 1000:.3g} measured)"


def render_wan(
    runs: list[dict[str, Any]],
    rtts: list[float],
    paths: list[str],
    wls: list[Workload],
    machine: dict[str, Any],
) -> str:
    out = ["## WAN benchmark (python -m bench --wan)", ""]
    for key in (
        "date",
        "nproc",
        "cpu",
        "python",
        "go",
        "kernel",
        "load_before",
        "load_after",
        "mode",
        "event_loop",
        "link",
        "baseline",
        "py16_window",
        "repeat",
        "duration_s",
    ):
        if key in machine:
            out.append(f"- {key}: {machine[key]}")
    tables = [(wl, m) for wl in wls for m in wl.metrics if m.key != "p99_us"]
    for wl, metric in tables:
        scale, unit = (1e-3, "ms") if metric.unit == "us" else (1.0, metric.unit)
        out += [
            "",
            f"{metric.label} ({unit}, {metric.better} is better; medians of "
            f"{machine.get('repeat', '?')}):",
            "",
        ]
        heads = ["RTT", *(TITLES[p] for p in paths)]
        out.append("| " + " | ".join(heads) + " |")
        out.append("|" + "---|" * len(heads))
        for rtt in rtts:
            medians = {}
            cells = [f"{rtt:g} ms{measured_rtt(runs, rtt)}"]
            for path in paths:
                sel = [
                    r
                    for r in runs
                    if r["rtt_ms"] == rtt and r["workload"] == wl.name and r["path"] == path
                ]
                value, total, failed = cell_value(sel, metric.key)
                medians[path] = value
                if value is None:
                    cells.append(f"FAIL ({failed}/{total})" if failed else "-")
                    continue
                text = f"{value * scale:.3g}" if value * scale < 100 else f"{value * scale:.0f}"
                notes = []
                go, direct = medians.get("go"), medians.get("direct")
                if path not in ("go", "direct") and go:
                    notes.append(f"{value / go:.2f}x Go")
                if path != "direct" and direct and metric.better == "higher":
                    notes.append(f"{100 * value / direct:.0f}% of direct")
                if notes:
                    text += f" ({', '.join(notes)})"
                if failed:
                    text += f" [{total - failed}/{total} ok]"
                cells.append(text)
            out.append("| " + " | ".join(cells) + " |")
    failures = sorted({(r["path"], r["rtt_ms"], r["error"][:300]) for r in runs if not r["ok"]})
    if failures:
        out += ["", "Failures:"]
        out += [f"- {TITLES[p]}, RTT {rtt:g} ms: {e}" for p, rtt, e in failures]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench --wan",
        description="The relay over emulated WAN links (network namespaces; needs root).",
    )
    ap.add_argument(
        "--quick", action="store_true", help="RTT 1 and 50 ms only, one repetition, 3 s streams"
    )
    ap.add_argument(
        "--rtts", metavar="MS,MS", help="round-trip times of the rows in ms (default 1,20,50,100)"
    )
    ap.add_argument(
        "--paths",
        metavar="P1,P2",
        help=f"columns, from {','.join(WAN_PATHS)} (default: "
        f"{','.join(DEFAULT_PATHS)}, plus pyauto when the relay has "
        "--window-autotune; base is added by --baseline)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="PATH",
        help="also run the relay of this source tree (default settings) as `base`",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="repetitions (default 3; 1 with --quick); the table shows medians",
    )
    ap.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="seconds of each iperf3 stream (default 6; 3 with --quick)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=RATE,
        metavar="BYTES_PER_S",
        help="WAN rate each way (default 125e6 = 1 Gbit/s)",
    )
    ap.add_argument("--json", metavar="FILE", help="also write every run here")
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the relays and link emulators (default: this one)",
    )
    ap.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the project's relay and forwarder",
    )
    ap.add_argument("--no-build", action="store_true", help="use interop/build/ as it is")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' output")
    args = ap.parse_args(argv)
    rtts = args.rtts or ("1,50" if args.quick else "1,20,50,100")
    try:
        args.rtt_list = [float(x) for x in rtts.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--rtts: not a list of numbers: {rtts!r}")
    if not args.rtt_list or any(r < 0 for r in args.rtt_list):
        ap.error("--rtts needs at least one RTT >= 0")
    args.paths_given = args.paths is not None
    paths = args.paths if args.paths_given else ",".join(DEFAULT_PATHS)
    args.path_list = [p.strip() for p in paths.split(",") if p.strip()]
    check_paths_and_repeat(ap, args, WAN_PATHS)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 6.0
    if args.duration < 2:
        ap.error("--duration must be at least 2 s (the first second is omitted)")
    return args


def check_tools() -> None:
    if os.geteuid() != 0:
        raise BenchError("--wan makes network namespaces: run it as root")
    missing = [t for t in ("ip", "tc", "iperf3") if shutil.which(t) is None]
    if missing:
        raise BenchError(f"--wan needs {', '.join(missing)} (apt-get install iproute2 iperf3)")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    install_signal_handlers()
    raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="relay-bench-wan-"))
    env = Env(logdir=logdir, python=args.python, quick=args.quick, py_loop=args.event_loop)
    paths = [p for p in WAN_PATHS if p in args.path_list]
    wls = wan_workloads(args.quick, args.duration)
    machine = machine_info(args.python)
    machine.update(
        mode="quick" if args.quick else "default",
        event_loop=args.event_loop,
        repeat=args.repeat,
        link=f"testkit.link, {args.rate:g} bytes/s and RTT/2 each way, on the "
        "relay <-> service leg; every veth 1 Gbit/s (tc tbf)",
    )
    if args.baseline is not None:
        machine["baseline"] = str(args.baseline.resolve())
    runs: list[dict[str, Any]] = []
    topo = Topology()
    try:
        check_tools()
        if not args.no_build:
            build_go()
        remove_stale()
        tree_paths = ["py" if p in ("py16", "pyauto") else p for p in paths]
        unusable = probe_trees(env, tree_paths, args.baseline)
        for variant in ("py16", "pyauto"):
            if "py" in unusable:
                unusable[variant] = unusable["py"]
        tree = env.trees.get("py")
        if tree is not None and not args.paths_given and tree.has_option("--window-autotune"):
            paths.insert(paths.index("py") + 1, "pyauto")
        if "py16" in paths and tree is not None:
            machine["py16_window"] = (
                "--max-stream-window"
                + (" --no-window-autotune" if tree.has_option("--no-window-autotune") else "")
                if tree.has_option("--max-stream-window")
                else "bench/fixed_window.py (the CLI has no --max-stream-window)"
            )
        topo.create()
        env.client = topo.client
        wan = Wan(env, topo, args.rate)
        echo = start(
            "echo-server", topo.service.argv(env.go("echo-server"), "-addr", "0.0.0.0:0"), logdir
        )
        wan.echo_port = int(wait_for(echo, r"^\S+:(\d+)$", 10).group(1))
        log(f"logs in {logdir}")
        for rtt in args.rtt_list:
            wan.set_rtt(rtt)
            for wl in wls:
                batch = run_alternating(
                    wl,
                    paths,
                    args.repeat,
                    unusable,
                    functools.partial(run_wan_one, wan, wl),
                    label=f"RTT {rtt:g} ms {wl.name}",
                )
                runs += [{**r, "rtt_ms": rtt} for r in batch]
                if not echo.alive():
                    raise BenchError(f"the echo server died: {echo.tail()}")
    except KeyboardInterrupt:
        log("interrupted; stopping every process and removing the namespaces")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all()
        topo.destroy()
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["duration_s"] = round(time.monotonic() - t_start, 1)
    print(render_wan(runs, args.rtt_list, paths, wls, machine), flush=True)
    return write_json_and_count_failures(
        args.json, {"machine": machine, "paths": paths, "rtts_ms": args.rtt_list, "runs": runs}
    )
