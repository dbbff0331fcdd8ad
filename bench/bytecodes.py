"""Python bytecodes per operation in the real relay and forwarder, by function and module.

Runs the relay and the forwarder of this tree under a ``sys.settrace`` opcode
hook (every bytecode executed is counted against its function), drives them
with the load generator for two numbers of operations, and prints the
difference divided by the extra operations: bytecodes per 64-byte round trip
(``--workload latency``) or per sequential connection (``--workload connseq``).
The counts do not depend on the machine's load, so they show where Python work
per operation goes and what a change saves; the hook slows the processes
about fifty times, so nothing else here is meaningful::

    python -m bench.bytecodes                                # latency on uvloop
    python -m bench.bytecodes --workload connseq --loop asyncio --top 60
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

if not __package__:  # run as a file: as the launcher of a relay process, or by hand
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hops import loadgen_args, run_loadgen
from bench.processes import REPO, BenchError, build_go, log, stop, stop_all
from bench.services import Env, probe_tree, start_echo, start_py_pair
from testkit.procs import raise_nofile

LAUNCH = "--launch"
"""First argument of this file as the launcher of ``python -m relay`` (then the output
directory, then the relay's own arguments)."""
_STDLIB = sysconfig.get_paths()["stdlib"] + "/"


def launch(outdir: Path, relay_args: list[str]) -> None:
    """Run ``python -m relay RELAY_ARGS`` counting bytecodes per function; write them to
    ``outdir/PID.json`` when it exits (SIGTERM ends it the usual way)."""
    counts: dict[CodeType, int] = {}
    root = str(REPO) + "/"

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[code] = counts.get(code, 0) + 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    sys.argv = ["relay", *relay_args]
    sys.settrace(tracer)
    try:
        runpy.run_module("relay", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        sys.settrace(None)
        short: Counter[str] = Counter()
        for code, n in counts.items():
            short[
                f"{code.co_filename.removeprefix(root).removeprefix(_STDLIB)}:{code.co_name}"
            ] += n
        (outdir / f"{os.getpid()}.json").write_text(json.dumps(short))


def counted_run(
    env: Env, loop: str, workload: str, n: int, workdir: Path
) -> dict[str, Counter[str]]:
    """Bytecodes of the relay and of the forwarder over a whole run of ``n`` operations."""
    pair = start_py_pair(
        env,
        env.echo_addr,
        env.trees["py"],
        loop=loop,
        launcher=(str(Path(__file__).resolve()), LAUNCH, str(workdir)),
    )
    try:
        run_loadgen(env, loadgen_args(workload, n, pair.endpoint))
    finally:
        for proc in (pair.forwarder, pair.relay):  # SIGTERM: each exits and writes its counts
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        stop(pair.forwarder)
        stop(pair.relay)
    return {
        role: Counter(json.loads((workdir / f"{proc.pid}.json").read_text()))
        for role, proc in (("relay", pair.relay), ("forwarder", pair.forwarder))
    }


def module_of(name: str) -> str:
    path = name.rsplit(":", 1)[0]
    if path.startswith(("yamux/", "relay/")):
        return path
    return path.split("/")[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [LAUNCH]:
        launch(Path(argv[1]), argv[2:])
        return 0
    ap = argparse.ArgumentParser(
        prog="python -m bench.bytecodes", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--workload", choices=("latency", "connseq"), default="latency")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--n", type=int, default=0, help="extra operations (default 1500; 300 connseq)")
    ap.add_argument("--top", type=int, default=40, help="functions to list per process")
    ap.add_argument("--no-build", action="store_true", help="use interop/build/ as it is")
    args = ap.parse_args(argv)
    extra = args.n or (1500 if args.workload == "latency" else 300)
    short = extra // 3
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bytecodes-"))
    env = Env(logdir=workdir, python=sys.executable, quick=True)
    try:
        if not args.no_build:
            build_go()
        env.trees["py"] = probe_tree(env, REPO)
        echo = start_echo(env)
        runs = [
            counted_run(env, args.loop, args.workload, n, workdir) for n in (short, short + extra)
        ]
        stop(echo)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all()
    per = "round trip" if args.workload == "latency" else "sequential connection"
    for role in ("relay", "forwarder"):
        diff = {k: (runs[1][role][k] - runs[0][role][k]) / extra for k in runs[1][role]}
        modules: dict[str, float] = {}
        for name, count in diff.items():
            modules[module_of(name)] = modules.get(module_of(name), 0.0) + count
        print(f"## {role}, loop {args.loop}: {sum(diff.values()):.0f} bytecodes per {per}\n")
        print("| module | bytecodes |\n|---|---|")
        for module, count in sorted(modules.items(), key=lambda kv: -kv[1]):
            if count >= 5:
                print(f"| {module} | {count:.0f} |")
        print("\n| function | bytecodes |\n|---|---|")
        for name, count in sorted(diff.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| {name} | {count:.1f} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
