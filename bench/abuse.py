"""``python -m bench.abuse``: attack a real relay process as issue #8 does; RSS growth, log lines.

Each attack starts a fresh ``relay`` subprocess (``--event-loop asyncio`` or
``uvloop``) on 127.0.0.1, attacks it from this process over real sockets, and
samples the relay's resident memory (``VmRSS`` in ``/proc/PID/status``) every
20 ms while the attack runs. ``tests/test_abuse.py`` runs the same attacks for
a few seconds each and asserts the bounds; this script runs them longer and
prints a table::

    python -m bench.abuse                     # every attack, both loops, 20 s each (churn 10 min)
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
silent-tls           2,000 TCP connections from 127.0.0.1 to a TLS control port
                     (a certificate made with openssl for the run) that never
                     send a ClientHello, then a TLS registration from 127.0.0.2
challenge-slowloris  13 addresses (127.0.0.2-14) each hold 80 unanswered challenges
                     of a relay with a secret and 1,000 places, resetting each
                     after 4 s and opening it again; a client with the secret
                     registers from 127.0.0.1 every 0.3 s (how many, how fast)
tls-slowloris        the same with 12 addresses holding 90 stalled ClientHellos
                     each on a TLS relay; a TLS client registers from 127.0.0.1
guess-burst          one address opens 90 challenges, answers each with a wrong
                     proof, and goes on guessing: how many proofs were checked
failure-flush        127.0.0.1 is blocked after 5 wrong proofs; 10,000 other
                     addresses fail once each: is it still blocked?
unanswered           a TLS relay: 127.0.0.5 resets 5 challenges unanswered,
                     127.0.0.6 fails 5 TLS handshakes; may they register?
stale-client         an auth file of alice and bob; behind 127.0.0.1, bob with a
                     stale secret retries flat out and junk fails anonymously;
                     alice registers every 0.3 s
fd-limit             a relay under ``ulimit -n 64`` and 300 public clients of a
                     real forwarder: relay log lines and CPU seconds while its
                     descriptors are exhausted, then every client served once
                     the first ones leave
notify-thief         --protocol notify --notify-token: a server of the notify
                     protocol serves 200 clients while another process on its
                     address keeps dialling back without the token (or, on a
                     relay without --notify-token, with nothing to send)
churn                registered sides that register, serve, reset streams, send
                     Go Away or drop their connection, and public clients that
                     complete, half-close, reset or vanish, for the whole run
                     (default 10 minutes): no ERROR line, RSS flat
metrics-names        an open relay (--protocol v2, --metrics): 50 strangers
                     register under names of their choosing; /metrics must parse
                     without a duplicate series and carry none of those names
weak-secret          password, passwordpassword and short hex as the secret of a
                     relay (--secret, RELAY_SECRET, --secret-file), of bob in an
                     auth file, and of a forwarder dialling a relay: each must
                     exit non-zero saying how to make a secret, the forwarder
                     before it reaches the relay
auth-file-edit       alice and bob registered with an auth file, which is then
                     edited: bob removed beside a typo in alice's table, not TOML
                     at all, deleted, emptied; who is cut, who may register, what
                     /status and relay_auth_file_ok say
stream-burst         a JS libp2p relay (node, interop/js/stream-burst.mjs) opens
                     1,000 streams in one write at a real forwarder, beyond its
                     accept backlog of 256: every one must be echoed, none reset
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import relay
import yamux
from interop import families
from relay.wire.v2 import is_challenge, parse_challenge, response_line
from testkit.ports import free_port
from testkit.procs import REPO, Proc, ProcessError, raise_nofile
from yamux.const import Flag, FrameType
from yamux.frame import FrameDecoder, encode_header

HOST = "127.0.0.1"
OTHER_SOURCE = "127.0.0.2"
MIB = 1024 * 1024
SERVING = re.compile(r"Serving relay requests on port (\d+)")
ENDPOINT = re.compile(r"^127\.0\.0\.1:(\d+)$")
ACCEPT_BACKLOG = 256
"""The relay's yamux accept_backlog (Config default): unACKed opens it allows at once."""
LOOPS = ("uvloop", "asyncio")


class AbuseError(RuntimeError):
    """The harness itself failed (a process did not start, a setup step timed out)."""


# ----------------------------------------------------------------- processes
CHILD_TREE = [REPO]
"""The checkout whose relay the children run: this one, or ``--relay-tree``'s (an older
relay, measured by this harness and client code)."""


def python_env() -> dict[str, str]:
    """Children import ``CHILD_TREE`` (``-m relay``, run there), whatever PYTHONPATH says."""
    tree = str(CHILD_TREE[0])
    return {"PYTHONPATH": os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))}


def rss(proc: Proc) -> int:
    """Resident set size in bytes; 0 once the process is gone."""
    try:
        return proc.rss_bytes()
    except (OSError, ProcessError):
        return 0


def start_relay(loop: str, *args: str, nofile: int | None = None) -> tuple[Proc, int]:
    """``relay --bind 127.0.0.1 --event-loop LOOP ARGS PORT``, once it serves; with
    ``nofile``, under ``ulimit -n NOFILE`` (soft and hard limit, so the relay cannot raise it)."""
    for _ in range(3):
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "relay",
            "--bind",
            HOST,
            "--event-loop",
            loop,
            *args,
            str(port),
        ]
        if nofile is not None:
            command = ["sh", "-c", f'ulimit -n {nofile} && exec "$@"', "sh", *command]
        proc = Proc(
            command, "relay", env=python_env(), cwd=CHILD_TREE[0], more_files=nofile is None
        )
        try:
            proc.wait_line(SERVING)
        except ProcessError:
            proc.stop()
            if "address already in use" in proc.stderr_text.lower():
                continue
            raise
        return proc, port
    raise AbuseError("no free control port for the relay")


def start_forwarder(loop: str, relay_port: int, local_port: int) -> tuple[Proc, int]:
    proc = Proc(
        [
            sys.executable,
            "-m",
            "relay",
            f"--localForwardPort={local_port}",
            "--event-loop",
            loop,
            HOST,
            str(relay_port),
        ],
        "forwarder",
        env=python_env(),
        cwd=CHILD_TREE[0],
        more_files=True,
    )
    try:
        _, match = proc.wait_line(ENDPOINT, stream="stdout")
    except BaseException:
        proc.stop()
        raise
    return proc, int(match.group(1))


class RssSampler:
    """Samples a process's RSS every 20 ms in a thread; ``peak`` since ``start()``."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.peak = rss(self.proc)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss(self.proc))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.proc))


# ------------------------------------------------------ a hand-made registrant
class RawRegistrant:
    """A registered side speaking yamux by hand, so it can misbehave.

    It reads the port line, then frames (in large reads, so it keeps up with
    whatever the relay answers): it answers pings, never ACKs the relay's SYNs
    (it counts them), and drops data. ``stop_reading()`` stops reading the
    socket altogether; with ``rcvbuf`` small the kernel buffers little for it.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        public_port: int,
        initial: bytes,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.public_port = public_port
        self.syns = 0
        self.pings_answered = 0
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reading = True
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_frames(initial))

    @classmethod
    async def register(cls, relay_port: int, rcvbuf: int | None = None) -> RawRegistrant:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, (HOST, relay_port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), 10)
        except BaseException:
            writer.transport.abort()
            raise
        if not line.strip().isdigit():
            writer.transport.abort()
            raise AbuseError(f"the relay refused the registration: {line!r}")
        registrant = cls(reader, writer, int(line), b"")
        await registrant.until(lambda: registrant.pings_answered > 0)  # the handshake ping
        return registrant

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (20 s at most) until ``predicate()`` holds; checked whenever a frame is counted."""
        async with asyncio.timeout(20):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def _read_frames(self, initial: bytes) -> None:
        decoder = FrameDecoder(max_body=1 << 32)
        data = initial
        try:
            while self._reading:
                for frame in decoder.feed(data):
                    if frame.type is FrameType.PING and frame.flags & Flag.SYN:
                        self.writer.write(encode_header(FrameType.PING, Flag.ACK, 0, frame.length))
                        self.pings_answered += 1
                        self._changed.set()
                    elif frame.type is FrameType.WINDOW_UPDATE and frame.flags & Flag.SYN:
                        self.syns += 1
                        self._changed.set()
                data = await self.reader.read(1 << 20)
                if not data:
                    raise ConnectionResetError("EOF from the relay")
        except ConnectionError as exc:
            if not self.closed.done():
                self.closed.set_result(str(exc) or type(exc).__name__)

    def stop_reading(self) -> None:
        """Never read again: whatever the relay sends piles up on its side."""
        self._reading = False
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    async def send(self, frames: bytes) -> None:
        self.writer.write(frames)
        await self.writer.drain()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.transport.abort()
        await asyncio.sleep(0)


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


Attack = Callable[[Proc, int, str, float, dict[str, Any]], Coroutine[Any, Any, None]]


async def slow_ack_sender(
    relay: Proc, port: int, loop_name: str, seconds: float, notes: dict[str, Any]
) -> None:
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


async def non_reading_service(
    relay: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    clients: int = 100,
) -> None:
    loop = asyncio.get_running_loop()
    held: list[asyncio.Transport] = []

    class NeverRead(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            held.append(transport)

    service = await loop.create_server(NeverRead, HOST, 0)
    forwarder, public_port = start_forwarder(loop_name, port, service.sockets[0].getsockname()[1])
    try:
        deadline = loop.time() + seconds
        sent = await asyncio.gather(*(push(public_port, deadline) for _ in range(clients)))
        notes["sent_mib"] = round(sum(sent) / MIB, 1)
        notes["forwarder_rss_mib"] = round(rss(forwarder) / MIB, 1)
    finally:
        forwarder.stop()
        for transport in held:
            transport.abort()
        service.close()
        await service.wait_closed()


async def syn_rst(
    relay: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    frames: int = 500_000,
) -> None:
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
                    data += encode_header(
                        FrameType.WINDOW_UPDATE, Flag.SYN | Flag.RST, stream_id, 0
                    )
                    stream_id = stream_id + 2 if stream_id < 0xFFFFFFF0 else 2
                await registrant.send(bytes(data))
                sent += min(batch, frames - sent)
        notes["frames"] = sent
        notes["send_s"] = round(loop.time() - start, 1)
        await asyncio.sleep(max(1.0, seconds - (loop.time() - start)))
        notes["session"] = (
            ("ended: " + registrant.closed.result()) if registrant.closed.done() else "still up"
        )
    finally:
        await registrant.close()


async def ping_flood(
    relay: Proc, port: int, loop_name: str, seconds: float, notes: dict[str, Any]
) -> None:
    registrant = await RawRegistrant.register(port, rcvbuf=4096)
    registrant.stop_reading()
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds
    pings = b"".join(encode_header(FrameType.PING, Flag.SYN, 0, n) for n in range(5000))
    sent = 0
    cut_after = None
    try:
        try:
            while (remaining := deadline - loop.time()) > 0:
                registrant.writer.write(pings)
                try:
                    await asyncio.wait_for(registrant.writer.drain(), remaining)
                except TimeoutError:
                    break
                sent += len(pings)
        except ConnectionError:
            cut_after = loop.time() - start
        notes["sent_mib"] = round(sent / MIB, 1)
        if cut_after is None:
            notes["session"] = "still up"
        else:
            with contextlib.suppress(ProcessError):
                await relay.await_line(r" ended: ", timeout=5)
            ended = [line for line in relay.stderr if " ended: " in line]
            reason = ended[0].split(" ended: ")[1].split(";")[0] if ended else "?"
            notes["session"] = f"cut after {cut_after:.1f} s: {reason}"
    finally:
        await registrant.close()


async def bad_frames(
    relay: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    frames: int = 100_000,
) -> None:
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
        notes["session"] = (
            ("ended: " + registrant.closed.result()) if registrant.closed.done() else "still up"
        )
        notes["session_lines"] = len(relay.stderr) - before
    finally:
        await registrant.close()


async def refused_connections(
    relay: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    attempts: int = 5000,
) -> None:
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


async def idle_flood(
    relay: Proc, port: int, loop_name: str, seconds: float, notes: dict[str, Any], conns: int = 1000
) -> None:
    """The relay runs with --max-connections 1000 and a short --idle-timeout (``seconds``)."""
    loop = asyncio.get_running_loop()
    raise_nofile()

    backends: list[asyncio.Transport] = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            backends.append(self.transport)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    service = await loop.create_server(Echo, HOST, 0, backlog=4096)
    forwarder, public_port = start_forwarder(loop_name, port, service.sockets[0].getsockname()[1])
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened: list[float] = []
        refused_at_connect = 0
        for _ in range(conns):
            try:
                idle.append(await asyncio.open_connection(HOST, public_port))
            except ConnectionError:  # reset before our connect() returned
                refused_at_connect += 1
                continue
            opened.append(loop.time())

        async def lifetime(reader: asyncio.StreamReader, since: float) -> float:
            with contextlib.suppress(ConnectionError):
                await reader.read(1)
            return loop.time() - since

        endings = [
            loop.create_task(lifetime(reader, since))
            for (reader, _), since in zip(idle, opened, strict=True)
        ]
        await asyncio.sleep(0.5)  # the relay has accepted or refused all of them by now
        refused = {task for task in endings if task.done()}
        notes["refused"] = len(refused) + refused_at_connect
        start = loop.time()
        try:
            reader, writer = await asyncio.open_connection(
                HOST, public_port, local_addr=(OTHER_SOURCE, 0)
            )
            try:
                writer.write(b"hello from another address\n")
                answer = await asyncio.wait_for(reader.readline(), 5)
            finally:
                writer.transport.abort()
            notes["other_client_s"] = round(loop.time() - start, 3)
            notes["other_client_ok"] = answer == b"hello from another address\n"
        except (ConnectionError, TimeoutError) as exc:
            notes["other_client_ok"] = False
            notes["other_client_error"] = type(exc).__name__
        waiting = [task for task in endings if task not in refused]
        done, pending = (
            await asyncio.wait(waiting, timeout=seconds * 3 + 5) if waiting else (set(), set())
        )
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
        for transport in backends:
            transport.abort()
        service.close()
        await service.wait_closed()


async def silent_tls(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    conns: int = 2000,
    cert: Path | None = None,
) -> None:
    """Silent TLS connects from one address, held for ``seconds`` (the relay's handshake
    timeout is its default, 10 s); ``cert`` is the relay's self-signed certificate."""
    assert cert is not None
    raise_nofile()
    loop = asyncio.get_running_loop()
    silent: list[socket.socket] = []
    try:
        for _ in range(conns):
            sock = socket.create_connection((HOST, port))
            sock.setblocking(False)
            silent.append(sock)
        # Until the relay has admitted or closed every one (it stops changing).
        held, previous = len(silent), -1
        for _ in range(40):
            await asyncio.sleep(0.25)
            held, previous = sum(1 for sock in silent if _still_open(sock)), held
            if held == previous:
                break
        notes["held"] = held
        notes["closed_at_once"] = conns - notes["held"]
        start = loop.time()
        try:
            registration = await relay.register(
                HOST,
                port,
                ssl=ssl.create_default_context(cafile=str(cert)),
                local_addr=(OTHER_SOURCE, 0),
                connect_timeout=5,
            )
            registration.session.close()
            await registration.session.wait_closed()
            notes["other_client_ok"] = True
        except (ConnectionError, TimeoutError) as exc:
            notes["other_client_ok"] = False
            notes["other_client_error"] = str(exc)
        notes["other_client_s"] = round(loop.time() - start, 3)
        await asyncio.sleep(max(0.0, seconds - (loop.time() - start)))
    finally:
        for sock in silent:
            sock.close()


def _still_open(sock: socket.socket) -> bool:
    """Neither closed nor reset by the peer (and it sent nothing)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False


FD_LIMIT = 64
"""``ulimit -n`` of the relay in the fd-limit attack: a few dozen public connections."""


class Echo(asyncio.Protocol):
    """A local service that echoes; ``held`` collects its transports to close at the end."""

    def __init__(self, held: list[asyncio.Transport]) -> None:
        self.held = held
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.held.append(transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def fd_limit(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    clients: int = 300,
) -> None:
    """The relay runs under ``ulimit -n 64``. ``clients`` public clients connect at once
    (the kernel completes every handshake; the relay accepts what its descriptors allow)
    and each sends a line; those answered hold on for ``seconds``, while the relay's
    log lines and CPU seconds are counted. Then every client leaves as soon as it is
    answered: all of them must be, and then a newcomer at once."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    backends: list[asyncio.Transport] = []
    service = await loop.create_server(lambda: Echo(backends), HOST, 0, backlog=4096)
    forwarder, public_port = start_forwarder(loop_name, port, service.sockets[0].getsockname()[1])
    release = asyncio.Event()
    answered: list[float] = []
    """Seconds each client waited for its answer."""

    async def client() -> None:
        """Connect, send a line, wait for it to come back; leave once released."""
        started = loop.time()
        try:
            reader, writer = await asyncio.open_connection(HOST, public_port)
        except OSError:
            return
        try:
            writer.write(b"hello through a relay out of descriptors\n")
            if (await reader.readline()).endswith(b"\n"):
                answered.append(loop.time() - started)
            await release.wait()
        except OSError:
            pass
        finally:
            writer.transport.abort()

    try:
        lines_before, cpu_before = len(relay_proc.stderr), relay_proc.cpu_seconds()
        tasks = [loop.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(seconds)
        notes["served_while_held"] = len(answered)
        notes["cpu_s_while_held"] = round(relay_proc.cpu_seconds() - cpu_before, 2)
        notes["log_lines_while_held"] = len(relay_proc.stderr) - lines_before
        release.set()
        _, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
        notes["served"] = len(answered)
        notes["slowest_s"] = round(max(answered, default=0.0), 2)
        started = loop.time()
        try:
            reader, writer = await asyncio.open_connection(HOST, public_port)
            try:
                writer.write(b"and a newcomer\n")
                answer = await asyncio.wait_for(reader.readline(), 5)
            finally:
                writer.transport.abort()
            notes["newcomer_ok"] = answer == b"and a newcomer\n"
        except (OSError, TimeoutError) as exc:
            notes["newcomer_ok"] = False
            notes["newcomer_error"] = type(exc).__name__
        notes["newcomer_s"] = round(loop.time() - started, 3)
        await asyncio.sleep(0.2)
        notes["log_lines"] = len(relay_proc.stderr) - lines_before
    finally:
        forwarder.stop()
        for transport in backends:
            transport.abort()
        service.close()
        await service.wait_closed()


async def notify_thief(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    clients: int = 200,
) -> None:
    """A notify server (its dial-backs send the token of their [NEW] line, if any) serves
    ``clients`` echo clients, 10 at a time, while 4 thieves on the same address dial back
    as fast as they can, with a wrong token when the relay issues tokens."""
    loop = asyncio.get_running_loop()
    control_reader, control_writer = await asyncio.open_connection(HOST, port)
    public_port = int(await control_reader.readline())
    dialback_port: asyncio.Future[int] = loop.create_future()
    tokens = False
    served = failed = stolen = attempts = 0
    tasks: set[asyncio.Task[None]] = set()

    async def dial_back(dialback: int, token: bytes | None) -> None:
        reader, writer = await asyncio.open_connection(HOST, dialback)
        try:
            if token is not None:
                writer.write(token + b"\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()

    async def server() -> None:
        nonlocal tokens
        while line := await control_reader.readline():
            dialback, *token = line[5:].split()
            tokens = bool(token)
            if not dialback_port.done():
                dialback_port.set_result(int(dialback))
            task = loop.create_task(dial_back(int(dialback), token[0] if token else None))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def thief(until: float) -> None:
        nonlocal stolen, attempts
        dialback = await dialback_port
        while loop.time() < until:
            attempts += 1
            try:
                reader, writer = await asyncio.open_connection(HOST, dialback)
            except OSError:
                continue
            try:
                if tokens:
                    writer.write(b"f" * 32 + b"\n")
                if await asyncio.wait_for(reader.read(1), 1.0):
                    stolen += 1  # a client's first byte: the thief has its connection
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()

    async def client(n: int) -> None:
        nonlocal served, failed
        payload = f"client {n} ".encode() * 100
        try:
            reader, writer = await asyncio.open_connection(HOST, public_port)
            try:
                writer.write(payload)
                writer.write_eof()
                answer = await asyncio.wait_for(reader.read(), 15)
            finally:
                writer.transport.abort()
        except (OSError, TimeoutError):
            answer = b""
        if answer == payload:
            served += 1
        else:
            failed += 1

    serving = loop.create_task(server())
    try:
        await client(-1)  # the dial-back port is known from here on
        until = loop.time() + seconds
        thieves = [loop.create_task(thief(until)) for _ in range(4)]
        gate = asyncio.Semaphore(10)

        async def gated(n: int) -> None:
            async with gate:
                await client(n)

        await asyncio.gather(*(gated(n) for n in range(clients)))
        await asyncio.gather(*thieves)
        notes.update(
            tokens=tokens,
            served=served,
            failed=failed,
            stolen=stolen,
            thief_attempts=attempts,
        )
    finally:
        serving.cancel()
        for task in [*tasks, serving]:
            task.cancel()
        await asyncio.gather(*tasks, serving, return_exceptions=True)
        control_writer.transport.abort()


CHURN_SECONDS = 600.0
"""``python -m bench.abuse --attack churn`` runs this long unless ``--seconds`` says."""
CHURN_REGISTRANTS = 8
CHURN_CLIENTS = 48
ERROR_LINE = re.compile(r" ERROR |Traceback|Exception in callback|Fatal error")
"""What must not appear in the relay's log under churn: an error, or asyncio's own report
of an exception that escaped a callback."""


class ChurnRegistrant:
    """A registered side that lives a little while, serves its streams in one of several
    ways, and ends in one of several ways; then registers again, until ``until``."""

    def __init__(self, relay_port: int, live: list[int], rng: random.Random) -> None:
        self.relay_port = relay_port
        self.live = live
        self.rng = rng
        self.sessions = 0
        self.endings: dict[str, int] = {}

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            try:
                await self._one_session(min(until, loop.time() + self.rng.uniform(0.3, 3.0)))
            except OSError:
                await asyncio.sleep(0.05)

    async def _one_session(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.create_connection((HOST, self.relay_port), timeout=10)
        try:
            line = b""
            while not line.endswith(b"\n"):  # byte by byte: yamux follows the port line
                byte = sock.recv(1)
                if not byte:
                    raise ConnectionResetError("the relay closed the registration")
                line += byte
            sock.setblocking(False)
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        session = yamux.Session.attach(transport, client=False)
        public_port = int(line)
        self.sessions += 1
        self.live.append(public_port)
        handlers: set[asyncio.Task[None]] = set()
        try:
            async with asyncio.timeout(max(0.0, until - loop.time())):
                async for stream in session:
                    task = loop.create_task(self._serve(stream))
                    handlers.add(task)
                    task.add_done_callback(handlers.discard)
        except TimeoutError:
            pass
        finally:
            self.live.remove(public_port)
            ending = self.rng.choice(("close", "go away", "drop"))
            self.endings[ending] = self.endings.get(ending, 0) + 1
            if ending == "go away":
                session.go_away()
                await asyncio.sleep(0.2)
            elif ending == "drop":
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            session.close()
            await session.wait_closed()

    async def _serve(self, stream: yamux.Stream) -> None:
        way = self.rng.random()
        try:
            if way < 0.1:
                stream.reset()  # at once
                return
            data = await stream.read(65536)
            if way < 0.2:
                stream.reset()  # after the first chunk
                return
            stream.write(data)
            if way < 0.3:
                stream.write_eof()  # half-close, then take the rest
                while await stream.read(65536):
                    pass
                return
            while data := await stream.read(65536):
                stream.write(data)
                await stream.drain()
            stream.close()
        except yamux.YamuxError:
            stream.reset()


async def churn_client(
    live: list[int], until: float, rng: random.Random, counts: dict[str, int]
) -> None:
    """Public clients one after another: most complete an exchange, others half-close,
    reset, or vanish without reading."""
    loop = asyncio.get_running_loop()
    payload = b"churn " * 100
    while loop.time() < until:
        if not live:
            await asyncio.sleep(0.01)
            continue
        way = rng.choice(("complete", "complete", "half-close", "reset", "reset at once", "vanish"))
        counts[way] = counts.get(way, 0) + 1
        try:
            reader, writer = await asyncio.open_connection(HOST, rng.choice(live))
        except OSError:
            counts["refused"] = counts.get("refused", 0) + 1
            continue
        try:
            if way == "reset at once":
                _reset(writer)
                continue
            writer.write(payload)
            if way == "complete":
                await asyncio.wait_for(reader.readexactly(len(payload)), 5)
            elif way == "half-close":
                writer.write_eof()
                await asyncio.wait_for(reader.read(), 5)
            elif way == "reset":
                await asyncio.wait_for(reader.read(1), 5)
                _reset(writer)
            else:  # vanish: never read, go away a little later
                await asyncio.sleep(rng.uniform(0, 0.5))
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            counts["cut"] = counts.get("cut", 0) + 1
        finally:
            writer.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def churn(
    relay_proc: Proc, port: int, loop_name: str, seconds: float, notes: dict[str, Any]
) -> None:
    """``CHURN_REGISTRANTS`` registered sides and ``CHURN_CLIENTS`` public clients at once,
    for ``seconds``; the relay's RSS is read every second."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    rng = random.Random(18)
    live: list[int] = []
    counts: dict[str, int] = {}
    until = loop.time() + seconds
    registrants = [ChurnRegistrant(port, live, rng) for _ in range(CHURN_REGISTRANTS)]
    lines_before = len(relay_proc.stderr)
    timeline: list[int] = []

    async def sample() -> None:
        while loop.time() < until:
            timeline.append(rss(relay_proc))
            await asyncio.sleep(1.0)

    # Our own registered sides log what the relay does to them (streams refused after
    # Go Away, ...): that is the attack working, not news.
    attacker_log = logging.getLogger("yamux")
    level = attacker_log.level
    attacker_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.gather(
            sample(),
            *(registrant.run(until) for registrant in registrants),
            *(churn_client(live, until, rng, counts) for _ in range(CHURN_CLIENTS)),
        )
    finally:
        attacker_log.setLevel(level)
    await asyncio.sleep(1.0)  # the relay logs what the last sessions' ends caused
    log = relay_proc.stderr[lines_before:]
    errors = [line for line in log if ERROR_LINE.search(line)]
    quarter = timeline[len(timeline) // 4] if timeline else 0
    notes.update(
        public_connections=sum(v for k, v in counts.items() if k not in ("refused", "cut")),
        per_second=round(sum(counts.values()) / seconds),
        clients={k: v for k, v in sorted(counts.items())},
        sessions=sum(r.sessions for r in registrants),
        error_lines=len(errors),
        first_error=errors[0][:300] if errors else None,
        rss_quarter_mib=round(quarter / MIB, 1),
        rss_end_mib=round((timeline[-1] if timeline else 0) / MIB, 1),
        rss_growth_after_quarter_mib=round((max(timeline, default=0) - quarter) / MIB, 1),
    )


METRICS_LINE = re.compile(r"metrics on http://([\d.]+:\d+)/metrics")


async def metrics_names(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    sessions: int = 50,
) -> None:
    """Strangers register on an open relay, each under a name of its own choosing (a
    tenth of them under a name already taken), then /metrics is scraped."""
    _, match = await relay_proc.await_line(METRICS_LINE)
    endpoint = match.group(1)
    registrations = []
    refused = 0
    try:
        for n in range(sessions):
            try:
                registrations.append(await relay.register(HOST, port, name=f"stranger-{n % 45}"))
            except relay.RelayRefusedError:
                refused += 1  # the name is held by a live session
        await asyncio.sleep(min(seconds, 1.0))
        text = await asyncio.to_thread(_get, f"http://{endpoint}/metrics")
    finally:
        for registration in registrations:
            registration.session.close()
            await registration.session.wait_closed()
    samples = [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    notes["sessions"] = len(registrations)
    notes["refused"] = refused
    notes["duplicate_series"] = len(samples) - len(set(samples))
    notes["service_series"] = sum(1 for name, _ in samples if name == "relay_service_sessions")
    notes["stranger_label_values"] = len(
        {value for _, labels in samples for _, value in labels if "stranger" in value}
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl; the certificate is its CA."""
    cert, key = directory / "relay.pem", directory / "relay.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=relay",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# ------------------------------------------------- admission: places and failures
ATTACKER_SOURCES = tuple(f"127.0.0.{host}" for host in range(2, 15))
"""13 attacker addresses, all in the /24 of the legitimate client (127.0.0.1)."""
HOLD = 4.0
"""Seconds an attacker holds a place before it resets the connection: within the answer
and TLS handshake timeouts, both before (10 s) and after (5 s) they were separate."""
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32
"""The start of a TLS ClientHello that announces 512 bytes and never sends the rest."""


@dataclass
class Holders:
    """What the connections of ``hold_places`` saw."""

    opened: int = 0
    held: int = 0
    """Connections holding a place right now (challenged, or in their TLS handshake)."""
    peak: int = 0
    reset: int = 0
    """Held until ``HOLD`` and reset by us."""
    closed_by_relay: int = 0
    """Closed by the relay first: refused at once, blocked, or their place taken."""
    blocked: int = 0
    """Refused with ``too many failed registrations``."""


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as an attacker who never says goodbye."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def hold_places(
    port: int, source: str, count: int, deadline: float, holders: Holders, opening: bytes = b""
) -> None:
    """``count`` connections from ``source`` until ``deadline``: each sends ``opening``
    (a TLS attacker) or reads the challenge, holds its place ``HOLD`` seconds, then resets
    and opens again at once; one the relay closes first is opened again after half a
    second (an attacker who wants places, not a flood of connections)."""
    loop = asyncio.get_running_loop()

    async def one() -> None:
        while (left := deadline - loop.time()) > 0:
            try:
                reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
            except OSError:
                await asyncio.sleep(0.2)
                continue
            holders.opened += 1
            holding = False
            try:
                if opening:
                    writer.write(opening)
                else:
                    first = await asyncio.wait_for(reader.readline(), left)
                    if not first.startswith(b"error: v2 needed"):
                        holders.closed_by_relay += 1
                        holders.blocked += first.startswith(b"error: too many failed")
                        await asyncio.sleep(0.5)
                        continue
                holding = True
                holders.held += 1
                holders.peak = max(holders.peak, holders.held)
                await asyncio.wait_for(reader.read(), min(HOLD, deadline - loop.time()))
                holders.closed_by_relay += 1  # EOF before we let go
                await asyncio.sleep(0.5)
            except TimeoutError:
                holders.reset += 1
            except ConnectionError:
                holders.closed_by_relay += 1
                await asyncio.sleep(0.5)
            finally:
                if holding:
                    holders.held -= 1
                reset(writer)

    await asyncio.gather(*(one() for _ in range(count)))


async def try_to_register(
    port: int, deadline: float, tries: list[float | str], pause: float = 0.3, **options: Any
) -> None:
    """Register from 127.0.0.1 again and again until ``deadline``: the seconds each took, or
    why it failed."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        start = loop.time()
        try:
            registration = await relay.register(
                HOST, port, local_addr=(HOST, 0), connect_timeout=3, **options
            )
        except (OSError, TimeoutError) as exc:
            tries.append(f"{type(exc).__name__}: {exc}"[:120])
        else:
            tries.append(loop.time() - start)
            registration.session.close()
            await registration.session.wait_closed()
        await asyncio.sleep(pause)


def summarize_tries(tries: list[float | str], notes: dict[str, Any]) -> None:
    times = [t for t in tries if isinstance(t, float)]
    notes["tries"] = len(tries)
    notes["ok"] = len(times)
    notes["ok_within_1s"] = sum(1 for t in times if t <= 1.0)
    notes["slowest_s"] = round(max(times), 3) if times else None
    errors = [t for t in tries if isinstance(t, str)]
    if errors:
        notes["first_error"] = errors[0]


async def slowloris(
    port: int,
    seconds: float,
    notes: dict[str, Any],
    per_source: int,
    sources: tuple[str, ...],
    opening: bytes = b"",
    **register: Any,
) -> None:
    """Attackers hold places from ``sources``; the legitimate client tries meanwhile."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    holders = Holders()
    attack = asyncio.gather(
        *(hold_places(port, source, per_source, deadline, holders, opening) for source in sources)
    )
    await asyncio.sleep(1.0)  # the attackers have filled their places by now
    notes["held_at_1s"] = holders.held
    tries: list[float | str] = []
    await try_to_register(port, deadline, tries, **register)
    await attack
    summarize_tries(tries, notes)
    notes["attacker_opened"] = holders.opened
    notes["attacker_peak"] = holders.peak
    notes["attacker_reset"] = holders.reset
    notes["closed_by_relay"] = holders.closed_by_relay
    notes["blocked"] = holders.blocked


async def challenge_slowloris(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secret: str = "",
) -> None:
    """13 addresses each hold 80 unanswered challenges (reset before the answer timeout)."""
    await slowloris(port, seconds, notes, 80, ATTACKER_SOURCES, secret=secret)


async def tls_slowloris(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secret: str = "",
    cert: Path | None = None,
) -> None:
    """12 addresses each hold 90 stalled ClientHellos (reset before the handshake timeout)."""
    assert cert is not None
    context = ssl.create_default_context(cafile=str(cert))
    await slowloris(
        port,
        seconds,
        notes,
        90,
        ATTACKER_SOURCES[:12],
        PARTIAL_CLIENT_HELLO,
        secret=secret,
        ssl=context,
    )


async def challenge(
    port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw v2 connection from ``source``: its first line (a challenge, or a refusal)."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    try:
        return reader, writer, await asyncio.wait_for(reader.readline(), 10)
    except BaseException:
        writer.transport.abort()
        raise


async def guess(port: int, source: str, secret: bytes = b"a wrong guess of the secret") -> bytes:
    """Answer one challenge from ``source`` with a proof made with ``secret``: the reply."""
    reader, writer, line = await challenge(port, source)
    try:
        if not is_challenge(line.rstrip(b"\n")):
            return line
        writer.write(response_line(parse_challenge(line.rstrip(b"\n")), secret=secret))
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.transport.abort()


async def guess_burst(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secret: str = "",
    opened: int = 90,
) -> None:
    """One address opens ``opened`` challenges, then answers them all with guesses; then
    it keeps guessing until ``seconds`` are over."""
    source = "127.0.0.3"
    loop = asyncio.get_running_loop()
    start = loop.time()
    held = [await challenge(port, source) for _ in range(opened)]
    for _, writer, line in held:
        assert is_challenge(line.rstrip(b"\n")), line
        writer.write(response_line(parse_challenge(line.rstrip(b"\n")), secret=b"a wrong guess"))
    replies = [await asyncio.wait_for(reader.readline(), 10) for reader, _, _ in held]
    for _, writer, _ in held:
        writer.transport.abort()
    checked = sum(1 for reply in replies if reply.startswith(b"error: auth failed"))
    notes["burst_checked"] = checked
    notes["burst_refused_unchecked"] = sum(
        1 for reply in replies if reply.startswith(b"error: too many failed")
    )
    while loop.time() - start < seconds:
        checked += (await guess(port, source)).startswith(b"error: auth failed")
        await asyncio.sleep(0.01)
    notes["checked"] = checked
    notes["checked_per_minute"] = round(checked * 60 / (loop.time() - start), 1)


async def failure_flush(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secret: str = "",
    others: int = 10_000,
) -> None:
    """127.0.0.1 guesses until it is blocked; then ``others`` addresses fail once each; is
    127.0.0.1 still blocked?"""
    for _ in range(5):
        await guess(port, HOST)
    _, writer, line = await challenge(port, HOST)
    writer.transport.abort()
    notes["blocked_before"] = line.startswith(b"error: too many failed")
    addresses = [f"127.1.{n // 250}.{n % 250 + 1}" for n in range(others)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for batch in range(0, others, 200):
        await asyncio.gather(*(guess(port, source) for source in addresses[batch : batch + 200]))
    notes["others_s"] = round(loop.time() - start, 1)
    _, writer, line = await challenge(port, HOST)
    writer.transport.abort()
    notes["blocked_after"] = line.startswith(b"error: too many failed")


async def unanswered_failures(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secret: str = "",
    cert: Path | None = None,
) -> None:
    """On a TLS relay: 127.0.0.5 resets 5 challenges it got, 127.0.0.6 fails 5 TLS
    handshakes; can each still register with the right secret? (127.0.0.7 can.)"""
    assert cert is not None
    context = ssl.create_default_context(cafile=str(cert))
    for _ in range(5):
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=context, local_addr=("127.0.0.5", 0)
        )
        assert is_challenge((await asyncio.wait_for(reader.readline(), 10)).rstrip(b"\n"))
        reset(writer)
    for _ in range(5):
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=("127.0.0.6", 0))
        writer.write(PARTIAL_CLIENT_HELLO)
        await asyncio.sleep(0.05)
        reset(writer)
    await asyncio.sleep(0.2)
    for source, name in (
        ("127.0.0.5", "after_resets"),
        ("127.0.0.6", "after_tls"),
        ("127.0.0.7", "other"),
    ):
        try:
            registration = await relay.register(
                HOST, port, ssl=context, secret=secret, local_addr=(source, 0), connect_timeout=5
            )
        except (OSError, TimeoutError) as exc:
            notes[f"{name}_registers"] = False
            notes[f"{name}_error"] = str(exc)[:100]
        else:
            notes[f"{name}_registers"] = True
            registration.session.close()
            await registration.session.wait_closed()


async def stale_client(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secrets: dict[str, str] | None = None,
) -> None:
    """Behind one address (127.0.0.1): ``bob`` with a stale secret retries flat out, and
    junk (challenges reset unanswered, malformed responses) comes from it too; ``alice``
    registers every 0.3 s."""
    assert secrets is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    bob = {"bob": 0, "junk": 0}

    async def stale_bob() -> None:
        while loop.time() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                registration = await relay.register(
                    HOST, port, secret="a stale secret of bob's, long gone", client_name="bob"
                )
                registration.session.close()  # cannot happen: bob's secret is wrong
            bob["bob"] += 1
            await asyncio.sleep(0.05)

    async def junk() -> None:
        while loop.time() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer, _line = await challenge(port, HOST)
                if bob["junk"] % 2:
                    writer.write(b"relay/2 nonsense\n")
                    await asyncio.wait_for(reader.readline(), 5)
                reset(writer)
            bob["junk"] += 1
            await asyncio.sleep(0.05)

    attack = asyncio.gather(stale_bob(), junk())
    await asyncio.sleep(0.5)
    tries: list[float | str] = []
    await try_to_register(port, deadline, tries, secret=secrets["alice"], client_name="alice")
    await attack
    summarize_tries(tries, notes)
    notes["bob_tries"] = bob["bob"]
    notes["junk"] = bob["junk"]


# ------------------------------------------------ secrets, the auth file, stream bursts
WEAK_SECRETS = ("password", "passwordpassword", "deadbeefdeadbeef")
"""Secrets people type: 38, 42 and 36 bits by the relay's estimate, all under 128."""
HOW_TO_MAKE_ONE = re.compile(r"relay gen-secret|openssl rand")
REFUSAL_PATIENCE = 5.0
"""Seconds a process given a weak secret may take to exit before it counts as accepting it."""


async def weak_secret_attempt(args: list[str], secret: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``relay ARGS`` with a weak ``secret``: its exit status (None: still running after
    ``REFUSAL_PATIENCE`` s, so it took the secret), whether its message says how to make a
    strong one, and whether it shows the secret."""
    proc = Proc(
        [sys.executable, "-m", "relay", *args],
        "relay",
        env={**python_env(), **env},
        cwd=CHILD_TREE[0],
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        exit_status: int | None = await proc.await_exit(REFUSAL_PATIENCE)
    except subprocess.TimeoutExpired:
        exit_status = None
    finally:
        proc.stop()
    text = proc.stderr_text
    return {
        "exit": exit_status,
        "s": round(loop.time() - start, 2),
        "says_how": bool(HOW_TO_MAKE_ONE.search(text)),
        "shows_secret": secret in text,
        "message": next((line for line in text.splitlines() if "weak" in line), ""),
    }


async def weak_secret(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secret: str = "",
    directory: Path | None = None,
) -> None:
    """Weak secrets wherever one is given: a relay with one (``--secret``, RELAY_SECRET,
    ``--secret-file``), a relay whose auth file gives one to bob, and a forwarder with one
    that dials this run's relay (which has a strong secret) and must not reach it."""
    assert directory is not None
    password, repeated, short_hex = WEAK_SECRETS
    (directory / "weak.secret").write_text(short_hex + "\n")
    (directory / "weak-bob.toml").write_text(
        auth_table("alice", secrets.token_hex(32)) + auth_table("bob", password)
    )
    relay_args = ["--bind", HOST, "--event-loop", loop_name]
    attempts: dict[str, tuple[list[str], str, dict[str, str]]] = {
        "relay --secret": ([*relay_args, "--secret", password, str(free_port())], password, {}),
        "relay RELAY_SECRET": (
            [*relay_args, str(free_port())],
            repeated,
            {"RELAY_SECRET": repeated},
        ),
        "relay --secret-file": (
            [*relay_args, "--secret-file", str(directory / "weak.secret"), str(free_port())],
            short_hex,
            {},
        ),
        "relay --auth-file": (
            [*relay_args, "--auth-file", str(directory / "weak-bob.toml"), str(free_port())],
            password,
            {},
        ),
        "forwarder --secret": (
            [
                f"--localForwardPort={free_port()}",
                "--event-loop",
                loop_name,
                "--secret",
                password,
                HOST,
                str(port),
            ],
            password,
            {},
        ),
    }
    lines_before = len(relay_proc.stderr)
    results = {
        name: await weak_secret_attempt(args, weak, env)
        for name, (args, weak, env) in attempts.items()
    }
    await asyncio.sleep(0.2)  # a registration the forwarder tried would be logged by now
    notes["refused"] = sum(1 for r in results.values() if r["exit"] not in (None, 0))
    notes["of"] = len(results)
    notes["exits"] = {name: r["exit"] for name, r in results.items()}
    notes["says_how"] = sum(1 for r in results.values() if r["says_how"])
    notes["shows_secret"] = sum(1 for r in results.values() if r["shows_secret"])
    notes["slowest_s"] = max(
        (r["s"] for r in results.values() if r["exit"] is not None), default=None
    )
    notes["relay_lines_from_forwarder"] = len(relay_proc.stderr) - lines_before
    notes["message"] = results["relay --secret"]["message"][:100]


AUTH_CHANGE_TIMEOUT = 10.0
"""The relay looks at its auth file every second and reads a change once it held still."""


def auth_table(name: str, secret: str, extra: str = "") -> str:
    return f'[clients.{name}]\nsecret = "{secret}"\n{extra}'


def auth_file_text(clients: dict[str, str]) -> str:
    return "".join(auth_table(name, secret) for name, secret in clients.items())


@dataclass
class AuthRelay:
    """A relay process with an auth file and ``--metrics``, seen as its clients see it."""

    proc: Proc
    port: int
    auth: Path
    secrets: dict[str, str]
    endpoint: str = ""

    async def start(self) -> AuthRelay:
        _, match = await self.proc.await_line(METRICS_LINE)
        self.endpoint = match.group(1)
        return self

    async def register(self, name: str) -> relay.Registration:
        return await relay.register(
            HOST, self.port, secret=self.secrets[name], client_name=name, connect_timeout=5
        )

    async def may_register(self, name: str) -> str:
        """'yes', or how the relay refused ``name``."""
        try:
            registration = await self.register(name)
        except relay.RelayRefusedError as exc:
            return "refused for good" if exc.permanent else "refused for now"
        except (OSError, TimeoutError) as exc:
            return type(exc).__name__
        await close_registration(registration)
        return "yes"

    async def edit(self, text: str | None, pattern: str) -> float:
        """Write the auth file (None: delete it); wait until the relay logged ``pattern``.
        Returns when it was written (the loop's time)."""
        lines = len(self.proc.stderr)
        written = asyncio.get_running_loop().time()
        rewrite(self.auth, text)
        await self.proc.await_line(pattern, after=lines, timeout=AUTH_CHANGE_TIMEOUT)
        return written

    async def state(self) -> dict[str, Any]:
        """What /status and relay_auth_file_ok say of the auth file."""
        status = json.loads(await asyncio.to_thread(_get, f"http://{self.endpoint}/status"))
        metrics = await asyncio.to_thread(_get, f"http://{self.endpoint}/metrics")
        gauges = {
            sample.name: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }
        auth_file = status.get("auth_file") or {}  # None: a relay from before it said
        return {
            "ok": auth_file.get("ok"),
            "clients": auth_file.get("clients"),
            "gauge_ok": gauges.get("relay_auth_file_ok"),
        }


async def cut(since: float, *registrations: relay.Registration) -> tuple[int, float]:
    """How many of ``registrations`` the relay ended (within AUTH_CHANGE_TIMEOUT), and
    seconds from ``since`` (the loop's time) until the last of them ended."""
    loop = asyncio.get_running_loop()
    ended = await asyncio.gather(
        *(asyncio.wait_for(r.session.wait_closed(), AUTH_CHANGE_TIMEOUT) for r in registrations),
        return_exceptions=True,
    )
    return sum(1 for e in ended if e is None), round(loop.time() - since, 2)


READ = r" relay\.auth: .*auth file "
"""The relay's first line once it read a change of its auth file (an ERROR if it did not
take)."""


async def auth_file_edit(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    secrets: dict[str, str] | None = None,
    auth: Path | None = None,
) -> None:
    """alice and bob registered on two relays with an auth file each. On this run's relay,
    bob is removed beside a typo in alice's table, then the file is made no TOML at all
    (left so for ``seconds``); on a second relay, the file is deleted, restored, and
    emptied. After each edit: who was cut, who may register, what /status and
    ``relay_auth_file_ok`` say."""
    assert secrets is not None
    assert auth is not None
    other_auth = auth.with_name("other-clients.toml")
    rewrite(other_auth, auth_file_text(secrets))
    other_proc, other_port = await asyncio.to_thread(
        start_relay, loop_name, "--auth-file", str(other_auth), "--metrics", f"{HOST}:0"
    )
    try:
        await asyncio.gather(
            edit_in_place(await AuthRelay(relay_proc, port, auth, secrets).start(), seconds, notes),
            revoke_all(await AuthRelay(other_proc, other_port, other_auth, secrets).start(), notes),
        )
    finally:
        other_proc.stop()


async def edit_in_place(target: AuthRelay, seconds: float, notes: dict[str, Any]) -> None:
    """bob removed while alice's ports are mistyped; then not TOML for ``seconds``."""
    alice, bob = await target.register("alice"), await target.register("bob")
    try:
        mistyped = auth_table("alice", target.secrets["alice"], 'ports = "5000-"\n')
        written = await target.edit(mistyped, READ)
        notes["removed_cut"], notes["removed_cut_s"] = await cut(written, bob)
        notes["removed_may_register"] = await target.may_register("bob")
        notes["typo_alice_served"] = await serves(alice)
        notes["typo_state"] = await target.state()
        lines = len(target.proc.stderr)
        await target.edit("[clients.alice\n", READ)
        notes["broken_alice_served"] = await serves(alice)
        notes["broken_state"] = await target.state()
        await asyncio.sleep(seconds)  # the relay looks again and again at the same bad file
        notes["broken_error_lines"] = sum(
            1 for line in target.proc.stderr[lines:] if " ERROR " in line
        )
        notes["broken_for_s"] = seconds
    finally:
        for registration in (alice, bob):
            await close_registration(registration)


async def revoke_all(target: AuthRelay, notes: dict[str, Any]) -> None:
    """The file deleted, then written again as it was, then emptied."""
    held: list[relay.Registration] = []
    try:
        for edit, text in (("deleted", None), ("emptied", "")):
            alice, bob = await target.register("alice"), await target.register("bob")
            held += [alice, bob]
            written = await target.edit(text, READ)
            notes[f"{edit}_cut"], notes[f"{edit}_cut_s"] = await cut(written, alice, bob)
            notes[f"{edit}_may_register"] = await target.may_register("alice")
            notes[f"{edit}_state"] = await target.state()
            if text is None:
                await target.edit(auth_file_text(target.secrets), READ)
    finally:
        for registration in held:
            await close_registration(registration)


def rewrite(path: Path, text: str | None) -> None:
    """Write ``text`` to ``path``; None deletes it."""
    if text is None:
        path.unlink()
    else:
        path.write_text(text)


async def close_registration(registration: relay.Registration) -> None:
    registration.session.close()
    await registration.session.wait_closed()


async def serves(registration: relay.Registration) -> bool:
    """A public client's bytes reach the registered side and its answer comes back."""
    try:
        reader, writer = await asyncio.open_connection(HOST, registration.public_port)
    except OSError:
        return False
    try:
        writer.write(b"ping\n")
        stream = await asyncio.wait_for(registration.session.accept_stream(), 5)
        try:
            request = await asyncio.wait_for(stream.read(5), 5)
            stream.write(b"pong\n")
            return (
                request == b"ping\n" and await asyncio.wait_for(reader.readline(), 5) == b"pong\n"
            )
        finally:
            stream.reset()
    except (OSError, TimeoutError, yamux.YamuxError):
        return False
    finally:
        writer.transport.abort()


STREAM_BURST = REPO / "interop" / "js" / "stream-burst.mjs"
"""A relay on @chainsafe/libp2p-yamux that opens streams at its registered side in one write."""
BURST_LINE = re.compile(r"^\{.*\}$")


async def stream_burst(
    relay_proc: Proc,
    port: int,
    loop_name: str,
    seconds: float,
    notes: dict[str, Any],
    streams: int = 1000,
    size: int = 600,
) -> None:
    """A JS libp2p relay (interop/js/stream-burst.mjs) opens ``streams`` streams in one write
    at a real forwarder, each with ``size`` bytes and a FIN, far beyond the forwarder's
    accept backlog (256); each must come back echoed by the local service. This run's relay
    is not in the path: the JS relay stands in for it, as nothing else opens streams so."""
    js = families.family("js")
    missing = js.unavailable_reason()  # raises under CI=true
    if missing is not None:
        raise AbuseError(missing)
    raise_nofile()
    loop = asyncio.get_running_loop()
    backends: list[asyncio.Transport] = []
    service = await loop.create_server(lambda: Echo(backends), HOST, 0, backlog=4096)
    burst = Proc(
        [families.node(), str(STREAM_BURST), "-streams", str(streams), "-size", str(size)],
        "stream-burst",
    )
    try:
        _, match = await burst.await_line(r"^listening (\d+)$", stream="stdout")
        forwarder, _ = await asyncio.to_thread(
            start_forwarder, loop_name, int(match.group(1)), service.sockets[0].getsockname()[1]
        )
        try:
            rss_before = rss(forwarder)
            with RssSampler(forwarder) as sampler:
                _, match = await burst.await_line(BURST_LINE, stream="stdout", timeout=90)
            counts = json.loads(match.group(0))
            notes.update(
                streams=counts["streams"],
                echoed=counts["echoed"],
                reset=counts["reset"],
                failed=counts["failed"],
                burst_ms=counts["ms"],
                forwarder_rss_growth_mib=round((sampler.peak - rss_before) / MIB, 1),
                forwarder_refusal_lines=sum(1 for line in forwarder.stderr if "refus" in line),
            )
            if "first_failure" in counts:
                notes["first_failure"] = counts["first_failure"]
        finally:
            forwarder.stop()
    finally:
        burst.stop()
        for transport in backends:
            transport.abort()
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
    "silent-tls": (silent_tls, ()),
    "challenge-slowloris": (challenge_slowloris, ()),
    "tls-slowloris": (tls_slowloris, ()),
    "guess-burst": (guess_burst, ()),
    "failure-flush": (failure_flush, ()),
    "unanswered": (unanswered_failures, ()),
    "stale-client": (stale_client, ()),
    "fd-limit": (fd_limit, ("--no-connection-log",)),
    "notify-thief": (
        notify_thief,
        ("--protocol", "notify", "--notify-token", "--no-connection-log"),
    ),
    "churn": (churn, ("--no-connection-log",)),
    "metrics-names": (metrics_names, ("--protocol", "v2", "--metrics", f"{HOST}:0")),
    "weak-secret": (weak_secret, ()),
    "auth-file-edit": (auth_file_edit, ("--metrics", f"{HOST}:0")),
    "stream-burst": (stream_burst, ()),
}
"""name: (attack, relay options)."""


def prepare_admission(attack: str, directory: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Relay options and attack keywords of the admission attacks: a secret (or an auth
    file of alice and bob), a certificate for the TLS ones, and 1,000 places in all (the
    old default) where the attack is about them."""
    if attack in ("stale-client", "auth-file-edit"):
        clients = {name: secrets.token_hex(32) for name in ("alice", "bob")}
        auth = directory / "clients.toml"
        auth.write_text(auth_file_text(clients))
        auth_path = {"auth": auth} if attack == "auth-file-edit" else {}
        return ("--auth-file", str(auth)), {"secrets": clients, **auth_path}
    secret = secrets.token_hex(32)
    (directory / "secret").write_text(secret + "\n")
    options: tuple[str, ...] = ("--secret-file", str(directory / "secret"))
    kwargs: dict[str, Any] = {"secret": secret}
    if attack == "weak-secret":
        kwargs["directory"] = directory
    if attack in ("tls-slowloris", "unanswered"):
        cert, key = self_signed_certificate(directory)
        options = (*options, "--tls-cert", str(cert), "--tls-key", str(key))
        kwargs["cert"] = cert
    if attack == "challenge-slowloris" and relay_has_option("--max-pending"):
        options = (*options, "--max-pending", "1000")
    return options, kwargs


PREPARE = {
    name: prepare_admission
    for name in (
        "challenge-slowloris",
        "tls-slowloris",
        "guess-burst",
        "failure-flush",
        "unanswered",
        "stale-client",
        "weak-secret",
        "auth-file-edit",
    )
}
"""Attacks whose relay needs files made for the run: name -> (relay options, keywords)."""


def relay_has_option(name: str) -> bool:
    """Whether this checkout's relay knows ``name`` (to measure a relay from before it did)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "relay", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **python_env()},
        cwd=CHILD_TREE[0],
        timeout=60,
        check=False,
    ).stdout
    return re.search(rf"{re.escape(name)}(?![\w-])", help_text) is not None


def run(
    attack: str, loop: str, seconds: float, *, relay_options: tuple[str, ...] = (), **kwargs: Any
) -> Outcome:
    """One attack against a fresh relay process (with ``relay_options`` besides the
    attack's own); the relay is stopped afterwards."""
    function, options = ATTACKS[attack]
    if attack == "idle-flood" and relay_has_option("--idle-timeout"):
        options = (*options, "--idle-timeout", f"{seconds:g}")
    if attack == "notify-thief" and not relay_has_option("--notify-token"):
        options = tuple(option for option in options if option != "--notify-token")
    with tempfile.TemporaryDirectory(prefix="relay-abuse-") as directory:
        if attack == "silent-tls":
            cert, key = self_signed_certificate(Path(directory))
            options = (*options, "--tls-cert", str(cert), "--tls-key", str(key))
            kwargs = {"cert": cert, **kwargs}
        if attack in PREPARE:
            more_options, more_kwargs = PREPARE[attack](attack, Path(directory))
            options = (*options, *more_options)
            kwargs = {**more_kwargs, **kwargs}
        relay_proc, port = start_relay(
            loop, *options, *relay_options, nofile=FD_LIMIT if attack == "fd-limit" else None
        )
        notes: dict[str, Any] = {}
        try:
            rss_before = rss(relay_proc)
            lines_before = len(relay_proc.stderr)
            with RssSampler(relay_proc) as sampler:
                asyncio.run(function(relay_proc, port, loop, seconds, notes, **kwargs))
            if not relay_proc.alive():
                raise AbuseError(
                    f"the relay exited ({relay_proc.returncode}):\n"
                    + "\n".join(relay_proc.stderr[-20:])
                )
            return Outcome(
                attack,
                loop,
                seconds,
                rss_before,
                sampler.peak,
                len(relay_proc.stderr) - lines_before,
                notes,
            )
        finally:
            relay_proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.abuse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--attack",
        action="append",
        choices=sorted(ATTACKS),
        help="run only this attack (repeatable); default: all",
    )
    parser.add_argument(
        "--loop",
        action="append",
        choices=LOOPS,
        help="run only on this event loop (repeatable); default: both",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="attack duration (idle-flood: the idle timeout) [20; churn: 600]",
    )
    parser.add_argument(
        "--relay-tree",
        type=Path,
        help="run the relay and forwarder processes of this checkout (e.g. an older commit's "
        "`git archive`) instead of this one's",
    )
    args = parser.parse_args(argv)
    if args.relay_tree is not None:
        CHILD_TREE[0] = args.relay_tree.resolve()
    print(
        f"{'attack':<20} {'loop':<8} {'RSS before':>10} {'peak':>8} {'growth':>8} "
        f"{'log lines':>9}  notes",
        flush=True,
    )
    for attack in args.attack or list(ATTACKS):
        for loop in args.loop or LOOPS:
            seconds = args.seconds or (CHURN_SECONDS if attack == "churn" else 20.0)
            try:
                out = run(attack, loop, seconds)
            except (AbuseError, ProcessError) as exc:
                print(f"{attack:<20} {loop:<8} harness error: {exc}", flush=True)
                continue
            notes = ", ".join(f"{k}={v}" for k, v in out.notes.items())
            print(
                f"{attack:<20} {loop:<8} {out.rss_before / MIB:>8.1f}Mi "
                f"{out.rss_peak / MIB:>6.1f}Mi {out.growth / MIB:>6.1f}Mi "
                f"{out.log_lines:>9}  {notes}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
