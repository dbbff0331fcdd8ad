"""Benchmark: the project's relay against the Go relay of the same design, and no relay.

Run from the repository root::

    python -m bench                 # the full set, about 3-4 minutes (3 repetitions)
    python -m bench --quick         # a smaller set, under a minute
    python -m bench --only latency,connrate --paths go,py --repeat 5 --json out.json
    python -m bench --baseline /tmp/base   # also the relay of another source tree
    python -m bench --wan           # over emulated WAN links (bench/wan.py; needs root)
    python -m bench --registration  # registration latency per lease store (bench/registration.py)
    python -m bench --routing       # names on shared ports vs a dedicated port (bench/routing.py)
    python -m bench --workers 1,2   # the relay with 1 and 2 worker processes (bench/workers.py)

Every workload runs on each path -- ``direct`` (the load generator talks to the
echo server itself), ``go`` (interop/build/go-relay + go-forwarder), ``py``
(``python -m relay`` as relay and as forwarder, uvloop when installed),
``py-asyncio`` (the same on plain asyncio) and, with ``--baseline``, ``base``
(the same from another source tree) -- alternating the paths within
each repetition; a fresh relay + forwarder pair is started for every run and
killed after it. The load comes from the Go program interop/go/loadgen, the echo
service is interop/go/echo-server, redis numbers come from Debian's redis-server
and redis-benchmark. Everything listens on 127.0.0.1 only.

The modules: processes (start/stop, Go build), services (echo, redis, relay
pairs), workloads (what is measured), report (medians, ratios, tables); this
one runs them. See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import (
    REPO,
    BenchError,
    build_go,
    log,
    nofile_limit,
    stop,
    stop_all,
)
from bench.report import machine_info, render, summarize
from bench.services import (
    PATHS,
    Env,
    Pair,
    path_endpoint,
    probe_tree,
    start_echo,
    start_redis,
    tree_of,
)
from bench.workloads import CPU_PER_CONN, Workload, workloads
from testkit.procs import ProcessError, raise_nofile


def measure(env: Env, wl: Workload, addr: str, pair: Pair | None) -> dict[str, Any]:
    """Run ``wl`` against ``addr``; add the CPU the pair's processes spent meanwhile."""
    cpu0 = {p.name: p.cpu_seconds() for p in pair.procs()} if pair else {}
    res = wl.run(env, addr, pair)
    if pair:
        for p, role in ((pair.relay, "relay"), (pair.forwarder, "forwarder")):
            if not p.alive():
                raise BenchError(f"{p.name} died during the run: {p.tail()}")
            res[f"{role}_cpu_s"] = p.cpu_seconds() - cpu0[p.name]
        if res.get("ops"):
            res[CPU_PER_CONN] = (res["relay_cpu_s"] + res["forwarder_cpu_s"]) / res["ops"] * 1e6
    return res


def run_one(env: Env, wl: Workload, path: str) -> dict[str, Any]:
    """One workload on one path: fresh relay pair, CPU before/after, stop everything."""
    target = env.redis_addr if wl.name == "redis" else env.echo_addr
    t0 = time.monotonic()
    with path_endpoint(env, path, target, wl.defaults) as pair:
        res = measure(env, wl, pair.endpoint if pair else target, pair)
    res["wall_s"] = time.monotonic() - t0
    return res


def run_alternating(
    wl: Workload,
    paths: list[str],
    repeat: int,
    unusable: dict[str, str],
    one: Callable[[str], dict[str, Any]],
    label: str = "",
) -> list[dict[str, Any]]:
    """``repeat`` rounds of ``one(path)`` for every path, in an order rotated each round.

    A path that fails is not retried for this workload (its later runs are
    recorded as failed), nor is one in ``unusable``.
    """
    runs: list[dict[str, Any]] = []
    broken = set(unusable)
    name = label or wl.name
    for rep in range(repeat):
        order = paths[rep % len(paths) :] + paths[: rep % len(paths)]
        for path in order:
            record: dict[str, Any] = {"workload": wl.name, "path": path, "rep": rep}
            if path in broken:
                runs.append(
                    {
                        **record,
                        "ok": False,
                        "error": unusable.get(path, "skipped after an earlier failure"),
                    }
                )
                continue
            try:
                res = one(path)
            except (BenchError, ProcessError) as exc:
                broken.add(path)
                runs.append({**record, "ok": False, "error": str(exc)})
                log(f"{name} rep {rep + 1}/{repeat} {path}: FAILED: {exc}")
                continue
            runs.append({**record, "ok": True, "result": res})
            shown = ", ".join(
                f"{m.key}={m.fmt.format(res[m.key])}"
                for m in wl.metrics
                if res.get(m.key) is not None
            )
            log(f"{name} rep {rep + 1}/{repeat} {path}: {shown} ({res['wall_s']:.1f} s)")
    return runs


def probe_trees(env: Env, paths: list[str], baseline: Path | None) -> dict[str, str]:
    """Find the relay of this tree (and of --baseline); return the paths that cannot run.

    ``paths`` may name a tree's variants (``py-asyncio``): each tree is probed once.
    """
    unusable: dict[str, str] = {}
    for name, root in (("py", REPO), ("base", baseline)):
        variants = [p for p in paths if tree_of(p) == name]
        if not variants or root is None:
            continue
        try:
            env.trees[name] = tree = probe_tree(env, root)
            log(f"{name}: {tree.module_file}")
        except BenchError as exc:
            # Still measure the other paths; every run of this one is reported as failed.
            unusable.update(dict.fromkeys(variants, str(exc)))
            log(f"the relay of {root} cannot run: {exc}")
    return unusable


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [wl.name for wl in workloads(False)]
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the project's relay against the Go relay and no relay.",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smaller workloads, one repetition (under a minute)"
    )
    ap.add_argument("--only", metavar="W1,W2", help=f"workloads to run: {','.join(names)}")
    ap.add_argument(
        "--paths",
        default="direct,go,py,py-asyncio",
        metavar="P1,P2",
        help=f"paths to run, from {','.join(PATHS)} (default: direct,go,py,py-asyncio; "
        "--baseline adds base unless a base* path is named)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="PATH",
        help="also run the relay of this source tree (e.g. a `git worktree add "
        "/tmp/base REV`), interleaved with this one, as path `base`",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="repetitions of every workload on every path (default 3; 1 with --quick)",
    )
    ap.add_argument("--json", metavar="FILE", help="also write every run and the summary here")
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs `-m relay` (default: this one)",
    )
    ap.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the project's relay and forwarder on paths py and base (default "
        "auto: uvloop when installed); paths py-asyncio and base-asyncio always use asyncio",
    )
    ap.add_argument(
        "--no-build",
        action="store_true",
        help="do not run interop/build.sh; use interop/build/ as it is",
    )
    ap.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the processes' output files (their directory is printed)",
    )
    args = ap.parse_args(argv)
    args.workloads = names if not args.only else [w.strip() for w in args.only.split(",") if w]
    bad = [w for w in args.workloads if w not in names]
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(names)}")
    args.path_list = [p.strip() for p in args.paths.split(",") if p.strip()]
    check_paths_and_repeat(ap, args, PATHS)
    return args


def check_paths_and_repeat(
    ap: argparse.ArgumentParser, args: argparse.Namespace, known: Sequence[str]
) -> None:
    """The checks of --paths, --baseline and --repeat that every benchmark mode shares;
    adds path ``base`` for --baseline and sets the default --repeat."""
    if args.baseline is not None:
        if not (args.baseline / "relay").is_dir():
            ap.error(f"--baseline {args.baseline}: no relay/ package there")
        if not any(p.startswith("base") for p in args.path_list):
            args.path_list.append("base")
    bad = [p for p in args.path_list if p not in known]
    if bad or not args.path_list:
        ap.error(f"unknown path(s) {', '.join(bad)}; choose from {', '.join(known)}")
    needs_base = [p for p in args.path_list if p.startswith("base")]
    if needs_base and args.baseline is None:
        ap.error(f"path `{needs_base[0]}` needs --baseline PATH")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """SIGTERM / SIGHUP unwind like Ctrl-C, so every finally (and stop_all) runs."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    atexit.register(stop_all)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--wan" in argv:
        from bench.wan import main as wan_main

        argv.remove("--wan")
        return wan_main(argv)
    if "--routing" in argv:
        from bench.routing import main as routing_main

        argv.remove("--routing")
        return routing_main(argv)
    if "--registration" in argv:
        from bench.registration import main as registration_main

        argv.remove("--registration")
        return registration_main(argv)
    if any(arg == "--workers" or arg.startswith("--workers=") for arg in argv):
        from bench.workers import main as workers_main

        return workers_main(argv)
    args = parse_args(argv)
    t_start = time.monotonic()
    install_signal_handlers()
    raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    env = Env(logdir=logdir, python=args.python, quick=args.quick, py_loop=args.event_loop)
    wls = [wl for wl in workloads(args.quick) if wl.name in args.workloads]
    paths = [p for p in PATHS if p in args.path_list]
    runs: list[dict[str, Any]] = []
    machine = machine_info(args.python)
    machine["mode"] = "quick" if args.quick else "default"
    machine["event_loop"] = args.event_loop
    if args.baseline is not None:
        machine["baseline"] = str(args.baseline.resolve())
    machine["repeat"] = args.repeat
    idle_conns = 2000 if args.quick else 10_000
    if nofile_limit() < idle_conns + 1000 and any(wl.name == "idle" for wl in wls):
        log(f"warning: RLIMIT_NOFILE is only {nofile_limit()}; the idle workload may fail")
    echo = redis = None
    try:
        if not args.no_build:
            build_go()
        unusable = probe_trees(env, paths, args.baseline)
        echo = start_echo(env)
        if any(wl.name == "redis" for wl in wls):
            redis = start_redis(env)
            if redis is None:
                wls = [wl for wl in wls if wl.name != "redis"]
        log(f"echo server {env.echo_addr}, redis {env.redis_addr or '-'}, logs in {logdir}")
        for wl in wls:
            runs += run_alternating(
                wl, paths, args.repeat, unusable, functools.partial(run_one, env, wl)
            )
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
    return write_json_and_count_failures(
        args.json,
        {
            "machine": machine,
            "paths": paths,
            "workloads": [wl.name for wl in wls],
            "summary": summary,
            "runs": runs,
        },
    )


def write_json_and_count_failures(path: str | None, doc: dict[str, Any]) -> int:
    """Write ``doc`` to ``--json`` PATH (if given); the exit status: 1 if any run failed."""
    runs = doc["runs"]
    if path:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {path}")
    failed = sum(1 for r in runs if not r["ok"])
    if failed:
        log(f"{failed} of {len(runs)} runs failed (see Failures above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
