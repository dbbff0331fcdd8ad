"""``python -m bench.abuse``: attack a real relay process as issue #8 does; RSS growth, log lines.

Each attack starts a fresh ``relay`` subprocess (``--event-loop asyncio`` or
``uvloop``) on 127.0.0.1, attacks it from this process over real sockets, and
samples the relay's resident memory (``VmRSS`` in ``/proc/PID/status``) every
20 ms while the attack runs. ``tests/test_abuse.py`` runs the same attacks for
a few seconds each and asserts the bounds; this script runs them longer and
prints a table::

    python -m bench.abuse                     # every attack, both loops, 20 s each
    python -m bench.abuse --seconds 60 --loop uvloop --attack ping-flood

Attacks (every target is on 127.0.0.0/8):

slow-ack-sender      the registered side never ACKs: 256 public connections fill
                     its open backlog, then one more client sends as fast as it can
non-reading-service  100 public clients push into a service (behind a real
                     forwarder) that never reads
syn-rst              the registered side sends Window Update SYN|RST frames
ping-flood           the registered side sends pings and never reads the pongs
bad-frames           the registered side sends bad frames (SYNs the relay refuses,
                     frames for unknown streams, SYN|RST); counts relay log lines
refused-connections  public connections refused by --max-connections; log lines
idle-flood           1,000 idle connections from 127.0.0.1 (--max-connections
                     1000), then a client from 127.0.0.2; idle connections must
                     close at --idle-timeout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yamux.const import Flag, FrameType
from yamux.frame import encode_header, parse_header

HOST = "127.0.0.1"
OTHER_SOURCE = "127.0.0.2"
REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
SERVING = re.compile(r"Serving relay requests on port (\d+)")
ENDPOINT = re.compile(r"^127\.0\.0\.1:(\d+)$")
ACCEPT_BACKLOG = 256
"""The relay's yamux accept_backlog (Config default): unACKed opens it allows at once."""
LOOPS = ("uvloop", "asyncio")


class AbuseError(RuntimeError):
    """The harness itself failed (a process did not start, a setup step timed out)."""


# ----------------------------------------------------------------- processes
class Process:
    """A child process whose stdout and stderr lines are collected by threads."""

    def __init__(self, args: list[str], name: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.name = name
        self.args = args
        self.popen = subprocess.Popen(
            args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace")
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._collect, args=(pipe, lines), daemon=True)
                         for pipe, lines in ((self.popen.stdout, self.stdout),
                                             (self.popen.stderr, self.stderr))]
        for thread in self._threads:
            thread.start()

    def _collect(self, pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            with self._lock:
                lines.append(line.rstrip("\n"))
                self._lock.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss(self) -> int:
        """Resident set size in bytes (0 once the process is gone)."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def wait_line(self, pattern: re.Pattern[str], stream: str = "stderr",
                  timeout: float = 15.0) -> re.Match[str]:
        lines = self.stderr if stream == "stderr" else self.stdout
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for line in lines:
                    if match := pattern.search(line):
                        return match
                if time.monotonic() > deadline or self.popen.poll() is not None:
                    raise AbuseError(f"{self.name}: no line matching {pattern.pattern!r}:\n"
                                     + "\n".join(self.stderr[-20:]))
                self._lock.wait(0.1)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for thread in self._threads:
            thread.join(5)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_relay(loop: str, *args: str) -> tuple[Process, int]:
    """``relay --bind 127.0.0.1 --event-loop LOOP ARGS PORT``, once it serves."""
    for _ in range(3):
        port = free_port()
        proc = Process([sys.executable, "-m", "relay", "--bind", HOST, "--event-loop", loop,
                        *args, str(port)], "relay")
        try:
            proc.wait_line(SERVING)
        except AbuseError:
            proc.stop()
            if "address already in use" in "\n".join(proc.stderr).lower():
                continue
            raise
        return proc, port
    raise AbuseError("no free control port for the relay")


def start_forwarder(loop: str, relay_port: int, local_port: int) -> tuple[Process, int]:
    proc = Process([sys.executable, "-m", "relay", f"--localForwardPort={local_port}",
                    "--event-loop", loop, HOST, str(relay_port)], "forwarder")
    try:
        match = proc.wait_line(ENDPOINT, stream="stdout")
    except BaseException:
        proc.stop()
        raise
    return proc, int(match.group(1))


class RssSampler:
    """Samples a process's RSS every 20 ms in a thread; ``peak`` since ``start()``."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.peak = self.proc.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.proc.rss())

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.rss())


# ------------------------------------------------------ a hand-made registrant
class RawRegistrant:
    """A registered side speaking yamux by hand, so it can misbehave.

    It reads the port line, then frames: it answers pings (unless ``answer_pings``
    is off), never ACKs the relay's SYNs (it counts them), and drops data.
    ``stop_reading()`` stops reading the socket altogether.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 public_port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.public_port = public_port
        self.syns = 0
        self.pings_answered = 0
        self.closed = asyncio.get_running_loop().create_future()
        self._reading = True
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_frames())

    @classmethod
    async def register(cls, relay_port: int) -> RawRegistrant:
        reader, writer = await asyncio.open_connection(HOST, relay_port, limit=1 << 20)
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line.strip().isdigit():
            writer.close()
            raise AbuseError(f"the relay refused the registration: {line!r}")
        registrant = cls(reader, writer, int(line))
        await registrant.until(lambda: registrant.pings_answered > 0)  # the handshake ping
        return registrant

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (20 s at most) until ``predicate()`` holds; checked whenever a frame is counted."""
        async with asyncio.timeout(20):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def _read_frames(self) -> None:
        reader, writer = self.reader, self.writer
        try:
            while True:
                if not self._reading:
                    return
                header = await reader.readexactly(12)
                kind, flags, _, length = parse_header(header)
                if kind is FrameType.DATA and length:
                    await reader.readexactly(length)
                elif kind is FrameType.PING and flags & Flag.SYN:
                    writer.write(encode_header(FrameType.PING, Flag.ACK, 0, length))
                    self.pings_answered += 1
                    self._changed.set()
                elif kind is FrameType.WINDOW_UPDATE and flags & Flag.SYN:
                    self.syns += 1
                    self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if not self.closed.done():
                self.closed.set_result(str(exc) or type(exc).__name__)

    def stop_reading(self) -> None:
        """Never read again: whatever the relay sends piles up on its side."""
        self._reading = False

    async def send(self, frames: bytes) -> None:
        self.writer.write(frames)
        await self.writer.drain()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def raise_nofile_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


async def close_writers(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(0)


async def push(port: int, deadline: float, source: str = HOST) -> int:
    """Connect and send as fast as the relay takes it until ``deadline``; bytes the kernel took."""
    loop = asyncio.get_running_loop()
    _, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    chunk = b"\0" * 65536
    sent = 0
    try:
        while (remaining := deadline - loop.time()) > 0:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), remaining)
            except TimeoutError:
                break
            sent += len(chunk)
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()
    return sent


# -------------------------------------------------------------------- results
@dataclass
class Outcome:
    attack: str
    loop: str
    seconds: float
    rss_before: int
    rss_peak: int
    log_lines: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


Attack = Callable[[Process, int, str, float, dict[str, Any]], Awaitable[None]]


async def slow_ack_sender(relay: Process, port: int, loop_name: str, seconds: float,
                          notes: dict[str, Any]) -> None:
    registrant = await RawRegistrant.register(port)
    holders: list[asyncio.StreamWriter] = []
    try:
        for _ in range(ACCEPT_BACKLOG):
            holders.append((await asyncio.open_connection(HOST, registrant.public_port))[1])
        await registrant.until(lambda: registrant.syns >= ACCEPT_BACKLOG)
        deadline = asyncio.get_running_loop().time() + seconds
        notes["sent_mib"] = round(await push(registrant.public_port, deadline) / MIB, 1)
    finally:
        await close_writers(holders)
        await registrant.close()


async def non_reading_service(relay: Process, port: int, loop_name: str, seconds: float,
                              notes: dict[str, Any], clients: int = 100) -> None:
    loop = asyncio.get_running_loop()
    held: list[asyncio.BaseTransport] = []

    class NeverRead(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.pause_reading()  # type: ignore[attr-defined]
            held.append(transport)

    service = await loop.create_server(NeverRead, HOST, 0)
    forwarder, public_port = start_forwarder(loop_name, port, service.sockets[0].getsockname()[1])
    try:
        deadline = loop.time() + seconds
        sent = await asyncio.gather(*(push(public_port, deadline) for _ in range(clients)))
        notes["sent_mib"] = round(sum(sent) / MIB, 1)
        notes["forwarder_rss_mib"] = round(forwarder.rss() / MIB, 1)
    finally:
        forwarder.stop()
        for transport in held:
            transport.abort()
        service.close()
        await service.wait_closed()


async def syn_rst(relay: Process, port: int, loop_name: str, seconds: float,
                  notes: dict[str, Any], frames: int = 500_000) -> None:
    registrant = await RawRegistrant.register(port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        batch = 10_000
        stream_id = 2
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < frames and not registrant.closed.done():
                data = bytearray()
                for _ in range(min(batch, frames - sent)):
                    data += encode_header(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.RST,
                                          stream_id, 0)
                    stream_id = stream_id + 2 if stream_id < 0xFFFFFFF0 else 2
                await registrant.send(bytes(data))
                sent += min(batch, frames - sent)
        notes["frames"] = sent
        notes["send_s"] = round(loop.time() - start, 1)
        await asyncio.sleep(max(1.0, seconds - (loop.time() - start)))
        notes["session"] = ("ended: " + registrant.closed.result()) if registrant.closed.done() \
            else "still up"
    finally:
        await registrant.close()


async def ping_flood(relay: Process, port: int, loop_name: str, seconds: float,
                     notes: dict[str, Any]) -> None:
    registrant = await RawRegistrant.register(port)
    registrant.stop_reading()
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds
    pings = b"".join(encode_header(FrameType.PING, Flag.SYN, 0, n) for n in range(5000))
    sent = 0
    try:
        with contextlib.suppress(ConnectionError):
            while (remaining := deadline - loop.time()) > 0:
                registrant.writer.write(pings)
                try:
                    await asyncio.wait_for(registrant.writer.drain(), remaining)
                except TimeoutError:
                    break
                sent += len(pings)
        notes["sent_mib"] = round(sent / MIB, 1)
        cut = [line for line in relay.stderr if "session 1 from" in line and "ended" in line]
        notes["session"] = f"cut after {loop.time() - start:.1f} s: {cut[0].split('ended: ')[-1]}" \
            if cut else "still up"
    finally:
        await registrant.close()


async def bad_frames(relay: Process, port: int, loop_name: str, seconds: float,
                     notes: dict[str, Any], frames: int = 100_000) -> None:
    """Three kinds in turn: a SYN (a stream the relay does not accept), Data for an unknown
    stream, a SYN|RST; none is fatal to the session."""
    registrant = await RawRegistrant.register(port)
    before = len(relay.stderr)
    try:
        stream_id = 2
        data = bytearray()
        for n in range(frames):
            kind = n % 3
            if kind == 0:
                data += encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0)
            elif kind == 1:
                data += encode_header(FrameType.DATA, 0, 0x7FFFFFF0 - n * 2, 1) + b"x"
            else:
                data += encode_header(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.RST, stream_id, 0)
            stream_id += 2
        with contextlib.suppress(ConnectionError):
            await registrant.send(bytes(data))
        await asyncio.sleep(max(1.0, seconds))
        notes["frames"] = frames
        notes["session"] = ("ended: " + registrant.closed.result()) if registrant.closed.done() \
            else "still up"
        notes["session_lines"] = len(relay.stderr) - before
    finally:
        await registrant.close()


async def refused_connections(relay: Process, port: int, loop_name: str, seconds: float,
                              notes: dict[str, Any], attempts: int = 5000) -> None:
    """The relay runs with --max-connections 1; one connection holds the slot."""
    registrant = await RawRegistrant.register(port)
    holder = (await asyncio.open_connection(HOST, registrant.public_port))[1]
    before = len(relay.stderr)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(seconds, 1.0) * 10
    refused = 0
    try:
        for _ in range(attempts):
            if loop.time() > deadline:
                break
            with contextlib.suppress(ConnectionError, OSError):
                reader, writer = await asyncio.open_connection(HOST, registrant.public_port)
                with contextlib.suppress(ConnectionError):
                    await reader.read(1)
                writer.transport.abort()
            refused += 1
        await asyncio.sleep(1.0)
        notes["attempts"] = refused
        notes["session_lines"] = len(relay.stderr) - before
    finally:
        holder.transport.abort()
        await registrant.close()


async def idle_flood(relay: Process, port: int, loop_name: str, seconds: float,
                     notes: dict[str, Any], conns: int = 1000) -> None:
    """The relay runs with --max-connections 1000 and a short --idle-timeout (``seconds``)."""
    loop = asyncio.get_running_loop()
    raise_nofile_limit(4 * conns + 100)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    service = await asyncio.start_server(echo, HOST, 0, backlog=4096)
    forwarder, public_port = start_forwarder(loop_name, port, service.sockets[0].getsockname()[1])
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened: list[float] = []
        for _ in range(conns):
            idle.append(await asyncio.open_connection(HOST, public_port))
            opened.append(loop.time())

        async def lifetime(reader: asyncio.StreamReader, since: float) -> float:
            with contextlib.suppress(ConnectionError):
                await reader.read(1)
            return loop.time() - since

        endings = [loop.create_task(lifetime(reader, since))
                   for (reader, _), since in zip(idle, opened, strict=True)]
        await asyncio.sleep(0.5)  # the relay has accepted or refused all of them by now
        refused = {task for task in endings if task.done()}
        notes["refused"] = len(refused)
        start = loop.time()
        reader, writer = await asyncio.open_connection(HOST, public_port,
                                                       local_addr=(OTHER_SOURCE, 0))
        writer.write(b"hello from another address\n")
        answer = await asyncio.wait_for(reader.readline(), 5)
        notes["other_client_s"] = round(loop.time() - start, 3)
        notes["other_client_ok"] = answer == b"hello from another address\n"
        writer.close()
        waiting = [task for task in endings if task not in refused]
        done, pending = await asyncio.wait(waiting, timeout=seconds * 3 + 5) if waiting \
            else (set(), set())
        for task in pending:
            task.cancel()
        times = sorted(task.result() for task in done)
        notes["idle_closed"] = len(times)
        notes["still_open"] = len(pending)
        if times:
            notes["closed_after_s"] = (round(times[0], 2), round(times[-1], 2))
    finally:
        for _, writer in idle:
            writer.transport.abort()
        forwarder.stop()
        service.close()
        await service.wait_closed()


ATTACKS: dict[str, tuple[Attack, tuple[str, ...]]] = {
    "slow-ack-sender": (slow_ack_sender, ()),
    "non-reading-service": (non_reading_service, ()),
    "syn-rst": (syn_rst, ()),
    "ping-flood": (ping_flood, ()),
    "bad-frames": (bad_frames, ()),
    "refused-connections": (refused_connections, ("--max-connections", "1")),
    "idle-flood": (idle_flood, ("--max-connections", "1000")),
}
"""name: (attack, relay options)."""


def run(attack: str, loop: str, seconds: float, **kwargs: Any) -> Outcome:
    """One attack against a fresh relay process; the relay is stopped afterwards."""
    function, options = ATTACKS[attack]
    if attack == "idle-flood":
        options = (*options, "--idle-timeout", f"{seconds:g}")
    relay, port = start_relay(loop, *options)
    notes: dict[str, Any] = {}
    try:
        rss_before = relay.rss()
        lines_before = len(relay.stderr)
        with RssSampler(relay) as sampler:
            asyncio.run(function(relay, port, loop, seconds, notes, **kwargs))
        if relay.popen.poll() is not None:
            raise AbuseError(f"the relay exited ({relay.popen.returncode}):\n"
                             + "\n".join(relay.stderr[-20:]))
        return Outcome(attack, loop, seconds, rss_before, sampler.peak,
                       len(relay.stderr) - lines_before, notes)
    finally:
        relay.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS),
                        help="run only this attack (repeatable); default: all")
    parser.add_argument("--loop", action="append", choices=LOOPS,
                        help="run only on this event loop (repeatable); default: both")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="attack duration (idle-flood: the idle timeout) [20]")
    args = parser.parse_args(argv)
    print(f"{'attack':<20} {'loop':<8} {'RSS before':>10} {'peak':>8} {'growth':>8} "
          f"{'log lines':>9}  notes", flush=True)
    for attack in args.attack or list(ATTACKS):
        for loop in args.loop or LOOPS:
            try:
                out = run(attack, loop, args.seconds)
            except AbuseError as exc:
                print(f"{attack:<20} {loop:<8} harness error: {exc}", flush=True)
                continue
            notes = ", ".join(f"{k}={v}" for k, v in out.notes.items())
            print(f"{attack:<20} {loop:<8} {out.rss_before / MIB:>8.1f}Mi "
                  f"{out.rss_peak / MIB:>6.1f}Mi {out.growth / MIB:>6.1f}Mi "
                  f"{out.log_lines:>9}  {notes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
