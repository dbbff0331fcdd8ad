"""The Python cost of one small message on each hop of a relay process, without sockets.

Every relayed message crosses two hops in each process (relay and forwarder
run the same code): **socket -> frame** (a chunk read from a TCP socket goes
into a yamux stream and out as a Data frame) and **frame -> socket** (a Data
frame read from the session's connection goes out to a TCP socket). This
builds one session with one stream spliced to a socket end (``relay.pipe``),
as the relay and the forwarder do, over transports that only count what is
written, and times each hop alone::

    python -m bench.hotpath                      # ns per message and calls per message
    python -m bench.hotpath --size 1024 --n 50000
    python -m bench.hotpath --callgrind          # also CPU instructions per message
    python -m bench.hotpath --functions 20       # and where the bytecodes of a message go

Nanoseconds depend on the machine and its load; calls, bytecodes (an opcode
trace hook), instructions (``--callgrind``: ``valgrind --tool=callgrind`` runs
of two lengths, the difference divided by the extra messages, so start-up
cancels out) and pymalloc allocations per message do not, so they show an
optimisation's effect on a shared machine. The peer's window updates are fed as a real peer would
send them (one per 128 KiB), so their cost is in the figures, amortised. What
the event loop and the kernel add per message (wake-ups, reads, writes) is not
here: see bench/RESULTS.md for how that was measured on the real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

if not __package__:  # run as `python bench/hotpath.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yamux
from relay.pipe import PipeResult, SocketEnd, pipe
from yamux.const import Flag, FrameType
from yamux.frame import encode_header

HOPS = ("socket-to-frame", "frame-to-socket")
WINDOW_GRANT = 128 * 1024
"""What the peer's window updates grant (hashicorp's rule: half the 256 KiB window)."""


class CountingTransport(asyncio.Transport):
    """A transport that takes every write and keeps only the count of bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self._closing = False
        self._protocol: asyncio.BaseProtocol | None = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.written += len(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Rig:
    """A session (the relay's client role) with one open stream spliced to a socket end."""

    def __init__(self, size: int) -> None:
        self.payload = bytes(size)
        self.control = CountingTransport()
        self.public = CountingTransport()
        self.session = yamux.Session.attach(self.control, client=True)
        self.protocol = cast(asyncio.Protocol, self.control.get_protocol())
        """The session's protocol: what the transport feeds (``data_received``)."""
        self.end = SocketEnd()
        self.end.connection_made(self.public)
        self.stream_id = 0
        self.frame = b""
        self.window_update = b""
        self.used = 0
        """Send credit used since the peer's last window update."""
        self._pipe: asyncio.Task[PipeResult] | None = None

    async def start(self) -> None:
        stream = await self.session.open_stream()
        self.stream_id = sid = stream.id
        self.protocol.data_received(encode_header(FrameType.WINDOW_UPDATE, Flag.ACK, sid, 0))
        self._pipe = asyncio.get_running_loop().create_task(pipe(self.end, stream))
        await asyncio.sleep(0)  # the pipe splices the socket end to the stream
        self.frame = encode_header(FrameType.DATA, 0, sid, len(self.payload)) + self.payload
        self.window_update = encode_header(FrameType.WINDOW_UPDATE, 0, sid, WINDOW_GRANT)

    async def stop(self) -> None:
        if self._pipe is not None:
            self._pipe.cancel()
            await asyncio.gather(self._pipe, return_exceptions=True)
        self.protocol.connection_lost(None)  # as the transport would once closed
        await self.session.wait_closed()

    def hop(self, name: str) -> Callable[[int], None]:
        """``run(n)``: n messages over the hop ``name``."""
        if name == "socket-to-frame":
            data_received = self.end.data_received
            session_received = self.protocol.data_received
            payload, window_update = self.payload, self.window_update
            size = len(payload)

            def socket_to_frame(n: int) -> None:
                used = self.used
                for _ in range(n):
                    data_received(payload)
                    used += size
                    if used >= WINDOW_GRANT:  # the peer returns what we used, as it would
                        session_received(window_update)
                        used -= WINDOW_GRANT
                self.used = used

            return socket_to_frame
        session_received = self.protocol.data_received
        frame = self.frame

        def frame_to_socket(n: int) -> None:
            for _ in range(n):
                session_received(frame)

        return frame_to_socket

    def written(self) -> tuple[int, int]:
        return self.control.written, self.public.written


def count_calls(run: Callable[[int], None], n: int) -> tuple[float, float]:
    """(Python calls, builtin calls) per message, from a profile hook."""
    counts = {"call": 0, "c_call": 0}

    def hook(frame: object, event: str, arg: object) -> None:
        if event in counts:
            counts[event] += 1

    sys.setprofile(hook)
    try:
        run(n)
    finally:
        sys.setprofile(None)
    # The loop calls run's inner function once (a Python call) and range() (a builtin).
    return (counts["call"] - 1) / n, (counts["c_call"] - 2) / n


def count_bytecodes(run: Callable[[int], None], n: int) -> dict[str, float]:
    """Bytecodes per message by function (``file:function``), from an opcode trace hook."""
    counts: dict[types.CodeType, int] = {}

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[code] = counts.get(code, 0) + 1
        return local

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    sys.settrace(tracer)
    try:
        run(n)
    finally:
        sys.settrace(None)
    named: dict[str, float] = {}
    for code, count in counts.items():
        name = f"{Path(code.co_filename).name}:{code.co_name}"
        named[name] = named.get(name, 0.0) + count / n
    return named


async def measure(hops: list[str], size: int, n: int, repeat: int) -> list[dict[str, Any]]:
    out = []
    for name in hops:
        rig = Rig(size)
        await rig.start()
        try:
            run = rig.hop(name)
            run(min(n, 2000))  # warm up (caches, specialised bytecode)
            before = rig.written()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter_ns()
                run(n)
                times.append((time.perf_counter_ns() - t0) / n)
            control, public = (a - b for a, b in zip(rig.written(), before, strict=True))
            expected = (control, public)
            if name == "socket-to-frame" and control != repeat * n * (size + 12):
                raise RuntimeError(f"{name}: only {control} bytes framed, {expected}")
            if name == "frame-to-socket" and public != repeat * n * size:
                raise RuntimeError(f"{name}: {public} bytes reached the socket, {expected}")
            py_calls, c_calls = count_calls(run, min(n, 5000))
            bytecodes = count_bytecodes(run, min(n, 2000))
        finally:
            await rig.stop()
        out.append(
            {
                "hop": name,
                "ns": min(times),
                "ns_median": statistics.median(times),
                "py_calls": py_calls,
                "c_calls": c_calls,
                "bytecodes": bytecodes,
            }
        )
    return out


async def run_only(hop: str, size: int, n: int) -> None:
    """The body of one callgrind run: set up, ``n`` messages over ``hop``, tear down."""
    rig = Rig(size)
    await rig.start()
    try:
        rig.hop(hop)(n)
    finally:
        await rig.stop()


def callgrind(hop: str, size: int, loop: str, n: int, workdir: Path) -> tuple[int, int]:
    """(instructions, pymalloc allocations) of one whole run of ``n`` messages."""
    out = workdir / f"callgrind.{hop}.{n}"
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.hotpath",
            "--run-only",
            hop,
            "--size",
            str(size),
            "--n",
            str(n),
            "--loop",
            loop,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1)), malloc_calls(out)


def malloc_calls(path: Path) -> int:
    """Calls of ``_PyObject_Malloc`` (every pymalloc allocation) in a callgrind output file."""
    names: dict[str, str] = {}
    """Function ids: callgrind names a function once, in a ``fn=`` or a ``cfn=`` line."""
    total = 0
    target = None
    for line in path.read_text().splitlines():
        if line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("cfn="):
                    target = names.get(m.group(1))
        elif line.startswith("calls=") and target == "_PyObject_Malloc":
            total += int(line[6:].split()[0])
    return total


def set_loop(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    ap.add_argument("--n", type=int, default=20_000, help="messages per timed run")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per hop (best is shown)")
    ap.add_argument("--hops", default=",".join(HOPS), help=f"hops to run: {','.join(HOPS)}")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="also count instructions and allocations per message (valgrind; a minute or two)",
    )
    ap.add_argument(
        "--functions",
        type=int,
        default=0,
        metavar="N",
        help="also list the N functions with the most bytecodes per message, per hop",
    )
    ap.add_argument("--run-only", choices=HOPS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 < args.size <= 256 * 1024:
        ap.error("--size must be between 1 and 262144")
    set_loop(args.loop)
    if args.run_only:
        asyncio.run(run_only(args.run_only, args.size, args.n))
        return 0
    hops = [h.strip() for h in args.hops.split(",") if h.strip()]
    if not hops or any(h not in HOPS for h in hops):
        ap.error(f"--hops: choose from {', '.join(HOPS)}")
    if args.callgrind and shutil.which("valgrind") is None:
        ap.error("--callgrind needs valgrind (apt-get install valgrind)")
    rows = asyncio.run(measure(hops, args.size, args.n, args.repeat))
    if args.callgrind:
        short, extra = 1000, 10_000
        # Both runs must start alike: import once natively, so neither compiles to .pyc.
        subprocess.run(
            [sys.executable, "-m", "bench.hotpath", "--run-only", HOPS[0], "--n", "1"],
            cwd=Path(__file__).resolve().parent.parent,
            check=True,
        )
        with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
            for row in rows:
                base = callgrind(row["hop"], args.size, args.loop, short, Path(tmp))
                more = callgrind(row["hop"], args.size, args.loop, short + extra, Path(tmp))
                row["instructions"] = (more[0] - base[0]) / extra
                row["mallocs"] = (more[1] - base[1]) / extra
    print(
        f"## Hot path, {args.size}-byte messages, {args.loop}, Python "
        f"{sys.version.split()[0]}, pid {os.getpid()}\n"
    )
    heads = [
        "hop",
        "ns/msg (best)",
        "ns/msg (median)",
        "Python calls/msg",
        "builtin calls/msg",
        "bytecodes/msg",
    ]
    if args.callgrind:
        heads += ["instructions/msg", "pymalloc allocations/msg"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for row in rows:
        cells = [
            row["hop"],
            f"{row['ns']:.0f}",
            f"{row['ns_median']:.0f}",
            f"{row['py_calls']:.1f}",
            f"{row['c_calls']:.1f}",
            f"{sum(row['bytecodes'].values()):.0f}",
        ]
        if args.callgrind:
            cells += [f"{row['instructions']:.0f}", f"{row['mallocs']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    for row in rows if args.functions else []:
        print(f"\n{row['hop']}, bytecodes per message (this file's rig included):\n")
        ranked = sorted(row["bytecodes"].items(), key=lambda kv: -kv[1])[: args.functions]
        print("| function | bytecodes |\n|---|---|")
        for name, count in ranked:
            print(f"| {name} | {count:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
