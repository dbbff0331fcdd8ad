"""The Python halves of the interop scenarios (interop/SCENARIOS.md), on this project's yamux.

Both roles of every scenario:

* ``run_active`` -- Python is the yamux **client** and drives the scenario (the Go
  peer runs ``-role server``, passive);
* ``run_passive`` -- Python is the yamux **server** and obeys the command lines
  (the Go peer runs ``-role client``, active).

In both cases Python listens on 127.0.0.1 and the Go peer dials it
(:class:`PeerListener`). ``run_against_go`` puts it together: listener, Go peer
(through interop/harness.py), the Python half, and an :class:`Outcome` that holds
both verdicts plus everything needed to debug a failure without rerunning it
(Go's stdout/stderr, the Python exception and traceback, bytes seen/expected of
every transfer, and frame counters of a wire tap on the Python side).

The Python side checks what the Go side checks (see each scenario in
SCENARIOS.md) from its own point of view, using a wire tap like the Go peer's
(:class:`WireTap`): frame counts per direction, largest Data frame, RST frames,
pings, SYN/ACK window grants.

Manual use: ``python -m interop.py_peer echo client [--family js]`` (Python = yamux client).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import shlex
import struct
import sys
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import yamux
from yamux.const import Flag, FrameType

from . import families, harness

logger = logging.getLogger("interop.py_peer")

INITIAL_WINDOW: Final = 256 * 1024
CHUNK: Final = 256 * 1024
"""Size of our write() calls for streamed payloads (as the Go peer)."""
READ_CHUNK: Final = 1 << 20
MAX_LINE: Final = 256
PATTERN_LEN: Final = (1 << 20) + 7
"""Not a power of two, so a reordered or duplicated frame changes the digest."""
BUSY_LIMIT: Final = 5.0
"""closebusy: pending operations must end within this many seconds of the session's end."""
HANDLER_GRACE: Final = 10.0
"""Passive side: how long stream handlers may run on after the session ended."""

ROLES: Final = ("client", "server")
SCENARIOS: Final = harness.SCENARIOS
COMMAND_ARITY: Final = {
    "ECHO": 1, "XFER": 2, "HALFCLOSE": 1, "HALFCLOSE-REV": 1, "EXPECT-RST": 0, "SEND-RST": 0,
    "PING": 1, "EXPECT-GOAWAY": 0, "SEND-GOAWAY": 0, "BIGWRITE": 1, "HOLD": 0, "FLOOD": 0,
    "STALL": 0, "BYE": 0,
}  # fmt: skip


class ScenarioError(Exception):
    """A check of the Python side failed; the message says what was seen and expected."""


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """The knobs of one scenario, shared by both peers (passed to Go explicitly).

    Defaults are those of yamux-peer (SCENARIOS.md, "Go peer command line").
    """

    scenario: str
    size: int
    down: int
    window: int = INITIAL_WINDOW
    streams: int = 1
    backlog: int = 256
    count: int = 1
    seed: int = 1
    keepalive_interval: float = 0.0
    """Seconds; 0 = keepalive off on both sides."""
    idle: float = 1.0
    write_timeout: float = 10.0
    timeout: float = 120.0
    """Go's overall deadline (-timeout); the Python side gets a little more."""
    grants_on_synack: bool = True
    """The peer grants a window beyond 256 KiB on its SYN/ACK (hashicorp) -- the libp2p peers
    start at 256 KiB and grow it by themselves, so bigwindow's one-frame checks do not apply."""
    grants_on_consume: bool = True
    """The peer grants window only for data its application consumed (hashicorp). The libp2p
    peers grant on receipt, so a stream whose reader stalls is bounded only by what they
    granted: closebusy then checks that no side sent beyond the granted window."""

    @classmethod
    def for_scenario(cls, scenario: str, **overrides: Any) -> Params:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        backlog = overrides.get("backlog", 256)
        window = overrides.get("window", INITIAL_WINDOW)
        d: dict[str, Any] = {"size": 1 << 20}
        if scenario == "parallel":
            d.update(size=8 << 20, streams=100)
        elif scenario == "bulk":
            d.update(size=1 << 30)
        elif scenario in ("rst", "goaway"):
            d.update(size=64 << 10)
        elif scenario == "ping":
            d.update(count=5)
        elif scenario == "keepalive":
            d.update(size=64 << 20, keepalive_interval=0.1)
        elif scenario == "bigwindow":
            window = overrides.get("window", 16 << 20)
            d.update(window=window, size=window - (64 << 10))
        elif scenario == "openstorm":
            d.update(size=32, streams=5 * backlog)
        elif scenario == "closebusy":
            d.update(streams=4)
        d.update(overrides)
        d.setdefault("down", d["size"])
        return cls(scenario=scenario, **d)

    def go_knobs(self) -> dict[str, object]:
        """Every knob, explicitly, so Go's defaults can never differ from ours."""
        return {
            "size": self.size,
            "down": self.down,
            "window": self.window,
            "streams": self.streams,
            "backlog": self.backlog,
            "count": self.count,
            "seed": self.seed,
            "keepalive_interval": self.keepalive_interval,  # 0 = off in yamux-peer too
            "idle": self.idle,
            "write_timeout": self.write_timeout,
            "timeout": self.timeout,
        }

    def config(self) -> yamux.Config:
        """Our session's Config, configured alike with the Go peer's."""
        return yamux.Config(
            accept_backlog=self.backlog,
            enable_keepalive=self.keepalive_interval > 0,
            keepalive_interval=self.keepalive_interval or 30.0,
            connection_write_timeout=self.write_timeout,
            max_stream_window_size=self.window,
            # bigwindow: our single big write may then leave as one Data frame too.
            max_frame_size=max(64 * 1024, self.window if self.scenario == "bigwindow" else 0),
        )


# --------------------------------------------------------------------------- wire tap


@dataclass
class WireStats:
    """What went by in one direction (mirrors yamux-peer's wireStats)."""

    frames: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    invalid: int = 0
    syn: int = 0
    ack: int = 0
    fin: int = 0
    rst: int = 0
    data_bytes: int = 0
    max_data: int = 0
    ping_req: int = 0
    ping_resp: int = 0
    go_away: int = 0
    go_away_code: int = -1
    max_grant: int = 0
    """Largest window delta carried by a frame with SYN or ACK."""
    data_by_stream: Counter[int] = field(default_factory=Counter)
    grant_by_stream: Counter[int] = field(default_factory=Counter)
    """Window deltas per stream (Window Update frames without RST: a RST's length is no delta)."""

    def __str__(self) -> str:
        f = self.frames
        return (
            f"frames={f[0]}/{f[1]}/{f[2]}/{f[3]} syn={self.syn} ack={self.ack} fin={self.fin} "
            f"rst={self.rst} data={self.data_bytes} maxframe={self.max_data} "
            f"pingreq={self.ping_req} pingresp={self.ping_resp} goaway={self.go_away} "
            f"goaway_code={self.go_away_code} maxgrant={self.max_grant} invalid={self.invalid}"
        )


_HEADER = struct.Struct(">BBHII")


class _FrameCounter:
    """Follows frame boundaries in one direction's byte stream and counts frames."""

    def __init__(self, stats: WireStats, on_frame: Callable[[int, int], None]) -> None:
        self.stats = stats
        self._on_frame = on_frame
        self._header = bytearray()
        self._body_left = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self._body_left:
                k = min(self._body_left, n - i)
                self._body_left -= k
                i += k
                continue
            k = min(12 - len(self._header), n - i)
            self._header += view[i : i + k]
            i += k
            if len(self._header) < 12:
                return
            self._count(*_HEADER.unpack(self._header))
            self._header.clear()

    def _count(self, version: int, type_: int, flags: int, stream_id: int, length: int) -> None:
        s = self.stats
        if version != 0 or type_ > FrameType.GO_AWAY:
            s.invalid += 1
            return
        s.frames[type_] += 1
        if type_ in (FrameType.DATA, FrameType.WINDOW_UPDATE):
            s.syn += bool(flags & Flag.SYN)
            s.ack += bool(flags & Flag.ACK)
            s.fin += bool(flags & Flag.FIN)
            s.rst += bool(flags & Flag.RST)
            if type_ == FrameType.DATA:
                self._body_left = length
                s.data_bytes += length
                s.data_by_stream[stream_id] += length
                s.max_data = max(s.max_data, length)
            elif not flags & Flag.RST:
                s.grant_by_stream[stream_id] += length
                if flags & (Flag.SYN | Flag.ACK):
                    s.max_grant = max(s.max_grant, length)
        elif type_ == FrameType.PING:
            s.ping_req += bool(flags & Flag.SYN)
            s.ping_resp += bool(flags & Flag.ACK)
        else:
            s.go_away += 1
            s.go_away_code = length
        self._on_frame(type_, flags)


class WireTap:
    """Counts the frames our session sends and receives (between yamux and the socket)."""

    def __init__(self) -> None:
        self.sent = WireStats()
        self.recv = WireStats()
        self.syn_after_our_goaway = 0
        self._out = _FrameCounter(self.sent, lambda type_, flags: None)
        self._in = _FrameCounter(self.recv, self._on_received)

    def _on_received(self, type_: int, flags: int) -> None:
        if self.sent.go_away and type_ <= FrameType.WINDOW_UPDATE and flags & Flag.SYN:
            self.syn_after_our_goaway += 1

    def wrap(self, protocol: asyncio.Protocol) -> asyncio.Protocol:
        return _TapProtocol(protocol, self)

    def __str__(self) -> str:
        return f"sent: {self.sent}\nrecv: {self.recv}"


class _TapTransport:
    """Delegates to the real transport, counting what the session writes."""

    def __init__(self, inner: asyncio.Transport, tap: WireTap) -> None:
        self._inner = inner
        self._tap = tap

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tap._out.feed(data)
        self._inner.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        for chunk in chunks:
            self._tap._out.feed(chunk)
        self._inner.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TapProtocol(asyncio.Protocol):
    """Sits between the transport and the session's protocol."""

    def __init__(self, inner: asyncio.Protocol, tap: WireTap) -> None:
        self._inner = inner
        self._tap = tap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(_TapTransport(transport, self._tap))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._tap._in.feed(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


# --------------------------------------------------------------------------- report


@dataclass
class Meter:
    name: str
    expected: int
    """-1: unknown in advance (read until EOF)."""
    seen: int = 0


@dataclass
class Report:
    """Everything the Python side saw: its verdict and what a failure report needs."""

    scenario: str
    role: str
    params: Params
    tap: WireTap = field(default_factory=WireTap)
    failures: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)
    meters: list[Meter] = field(default_factory=list)
    session: yamux.Session | None = None

    def fail(self, message: str) -> None:
        logger.warning("FAIL %s %s: %s", self.scenario, self.role, message)
        self.failures.append(message)

    def meter(self, expected: int, name: str) -> Meter:
        m = Meter(name, expected)
        self.meters.append(m)
        return m

    def unfinished(self, limit: int = 20) -> list[str]:
        out = sorted(
            f"{m.name}: seen {m.seen} of {m.expected if m.expected >= 0 else '?'} bytes"
            for m in self.meters
            if m.seen != m.expected and m.expected >= 0
        )
        if len(out) > limit:
            out = [*out[:limit], f"... and {len(out) - limit} more"]
        return out

    def describe(self) -> str:
        lines = [f"python {self.role} ({'active' if self.role == 'client' else 'passive'}):"]
        lines += [f"  FAIL {f}" for f in self.failures] or ["  no failed checks"]
        lines += [f"  unfinished {u}" for u in self.unfinished()]
        if self.notes:
            lines.append("  notes: " + " ".join(f"{k}={v}" for k, v in self.notes.items()))
        if self.served:
            lines.append(f"  served: {dict(self.served)}")
        if self.session is not None:
            lines.append(f"  session close_reason: {self.session.close_reason!r}")
        lines += [f"  wire {line}" for line in str(self.tap).splitlines()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- byte helpers

_patterns: dict[int, bytes] = {}


def _pattern(seed: int) -> bytes:
    """PATTERN_LEN seeded pseudo-random bytes, doubled so any slice of that length is contiguous."""
    p = _patterns.get(seed)
    if p is None:
        half = random.Random(seed).randbytes(PATTERN_LEN)
        p = _patterns[seed] = half + half
    return p


def payload_chunk(seed: int, salt: int, pos: int, n: int) -> bytes:
    off = (salt * 7919 + pos) % PATTERN_LEN
    return _pattern(seed)[off : off + min(n, PATTERN_LEN)]


def big_payload(seed: int, salt: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += payload_chunk(seed, salt, len(out), n - len(out))
    return bytes(out)


async def write_payload(
    stream: yamux.Stream, n: int, seed: int, salt: int, digest: Any, meter: Meter
) -> None:
    """Write n pattern bytes in CHUNK writes (with drain), hashing them."""
    pos = 0
    try:
        while pos < n:
            data = payload_chunk(seed, salt, pos, min(CHUNK, n - pos))
            stream.write(data)
            digest.update(data)
            pos += len(data)
            meter.seen = pos
            await stream.drain()
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"write failed after {pos} of {n} bytes: {exc!r}") from exc


async def read_n(stream: yamux.Stream, n: int, digest: Any, meter: Meter) -> None:
    """Read exactly n bytes into a hash."""
    got = 0
    try:
        while got < n:
            data = await stream.read(min(n - got, READ_CHUNK))
            if not data:
                raise ScenarioError(f"short read: got {got} of {n} bytes, then EOF")
            digest.update(data)
            got += len(data)
            meter.seen = got
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"short read: got {got} of {n} bytes: {exc!r}") from exc


async def read_all(stream: yamux.Stream, meter: Meter) -> tuple[int, str]:
    """Read until EOF: (count, sha256 hex)."""
    digest = hashlib.sha256()
    try:
        while data := await stream.read(READ_CHUNK):
            digest.update(data)
            meter.seen += len(data)
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"reading to EOF: error after {meter.seen} bytes: {exc!r}") from exc
    return meter.seen, digest.hexdigest()


async def read_line(stream: yamux.Stream) -> str:
    """One ``\\n``-terminated ASCII line (without the newline), at most MAX_LINE bytes."""
    try:
        raw = await stream.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        what = f"line {exc.partial[:80]!r} cut short by EOF" if exc.partial else "EOF"
        raise ScenarioError(f"reading a line: {what}") from None
    except asyncio.LimitOverrunError as exc:
        raise ScenarioError("reading a line: no newline within the stream's limit") from exc
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"reading a line: {exc!r}") from exc
    if len(raw) > MAX_LINE + 1:
        raise ScenarioError(f"line longer than {MAX_LINE} bytes: {raw[:40]!r}...")
    return raw[:-1].decode("ascii", "replace")


async def expect_line(stream: yamux.Stream, want: str) -> None:
    got = await read_line(stream)
    if got != want:
        raise ScenarioError(f"expected line {want!r}, got {got!r}")


async def expect_eof(stream: yamux.Stream) -> None:
    """The peer half-closed with nothing more to say."""
    extra = 0
    try:
        while data := await stream.read(4096):
            extra += len(data)
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"expected EOF, got {exc!r} after {extra} extra bytes") from exc
    if extra:
        raise ScenarioError(f"expected EOF, got {extra} extra bytes first")


async def finish(stream: yamux.Stream) -> None:
    """Active side: the passive side FINs first; read its EOF, then FIN ours."""
    await expect_eof(stream)
    stream.close()


def write_line(stream: yamux.Stream, line: str) -> None:
    try:
        stream.write(line.encode("ascii") + b"\n")
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"writing line {line[:40]!r}: {exc!r}") from exc


async def see_reset(stream: yamux.Stream) -> None:
    """A read must fail with a stream reset (EOF is a failure); then a write must fail too."""
    got = 0
    try:
        while data := await stream.read(4096):
            got += len(data)
    except yamux.StreamResetError:
        pass
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"read ended with {exc!r} after {got} bytes, not a reset") from exc
    else:
        raise ScenarioError(f"read ended with EOF after {got} bytes, expected a stream reset")
    try:
        stream.write(b"x")
    except yamux.StreamResetError:
        return
    except (yamux.YamuxError, ConnectionError) as exc:
        raise ScenarioError(f"write after the reset raised {exc!r}, not a reset") from exc
    raise ScenarioError("write after the reset succeeded")


async def concurrently(*coros: Awaitable[Any]) -> list[Any]:
    """Run coroutines at once; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sha(digest: Any) -> str:
    return str(digest.hexdigest())


def check_keepalive(report: Report) -> None:
    """Both our keepalive and the peer's ran, and (all but one in flight of) ours were answered."""
    sent, recv = report.tap.sent, report.tap.recv
    if recv.ping_req < 1:
        report.fail("the peer sent no ping requests: is its keepalive on?")
    if sent.ping_req < 1:
        report.fail(f"our keepalive sent no pings (interval {report.params.keepalive_interval}s)")
    if recv.ping_resp < sent.ping_req - 1:
        report.fail(f"the peer answered {recv.ping_resp} of our {sent.ping_req} pings")
    report.notes.update(
        keepalive_pings_sent=sent.ping_req, answered=recv.ping_resp, peer_pings=recv.ping_req
    )


@contextlib.contextmanager
def pings_during(report: Report, what: str) -> Iterator[None]:
    """Note the ping requests each side sent while ``what`` ran (keepalive during bulk data)."""
    sent0, recv0 = report.tap.sent.ping_req, report.tap.recv.ping_req
    try:
        yield
    finally:
        report.notes[f"our_pings_during_{what}"] = report.tap.sent.ping_req - sent0
        report.notes[f"peer_pings_during_{what}"] = report.tap.recv.ping_req - recv0


def window_overrun(report: Report, stream_id: int, *, ours: bool) -> str | None:
    """What one side sent on a stream whose reader stopped, if more than the reader allowed.

    hashicorp grants only for consumed data: a stalled reader's stream carries at most the
    initial 256 KiB. Peers that grant on receipt (``Params.grants_on_consume`` False) allow
    256 KiB plus whatever they granted; no side may ever send beyond that.
    """
    tap = report.tap
    sender, receiver = (tap.sent, tap.recv) if ours else (tap.recv, tap.sent)
    limit = INITIAL_WINDOW
    if not report.params.grants_on_consume:
        limit += receiver.grant_by_stream[stream_id]
    on_wire = sender.data_by_stream[stream_id]
    if on_wire <= limit:
        return None
    who = "we" if ours else "the peer"
    return f"{who} sent {on_wire} bytes on stream {stream_id}, the reader allowed {limit}"


def check_big_frames(report: Report, n: int) -> None:
    """bigwindow: both single n-byte writes crossed as one Data frame; both sides granted."""
    sent, recv = report.tap.sent, report.tap.recv
    extra = report.params.window - INITIAL_WINDOW
    report.notes.update(big_write=n, peer_grant_on_synack=recv.max_grant,
                        largest_rx_frame=recv.max_data, largest_tx_frame=sent.max_data)
    if not report.params.grants_on_synack:
        return  # the digests checked the bytes; frame sizes depend on the peer's own tuning
    if recv.max_data < n:
        report.fail(f"the peer's {n}-byte write arrived split (largest Data frame {recv.max_data})")
    if sent.max_data < n:
        report.fail(
            f"our {n}-byte write was split (largest Data frame {sent.max_data}): the peer's "
            f"grant on its SYN/ACK ({recv.max_grant}) was not used"
        )
    if sent.max_grant != extra:
        report.fail(f"we granted {sent.max_grant} extra on our SYN/ACK, want {extra}")
    if recv.max_grant != extra:
        report.fail(f"the peer granted {recv.max_grant} extra on its SYN/ACK, want {extra}")


# --------------------------------------------------------------------------- active side


class Active:
    """Python as yamux client: opens streams, drives and verifies (mirror of active.go)."""

    def __init__(self, session: yamux.Session, report: Report) -> None:
        self.session = session
        self.report = report
        self.p = report.params

    async def open(self, cmd: str = "") -> yamux.Stream:
        try:
            stream = await self.session.open_stream()
        except yamux.YamuxError as exc:
            raise ScenarioError(f"open stream for {cmd!r}: {exc!r}") from exc
        if cmd:
            write_line(stream, cmd)
        return stream

    async def run(self) -> None:
        ctl = None if self.p.scenario == "closebusy" else await self.open()
        await getattr(self, "sc_" + self.p.scenario)()
        if ctl is None:
            return
        write_line(ctl, "BYE")
        try:
            verdict = await read_line(ctl)
        except ScenarioError as exc:
            raise ScenarioError(f"control stream: waiting for the answer to BYE: {exc}") from exc
        self.report.notes["peer_verdict"] = repr(verdict)
        if verdict != "BYE OK":
            raise ScenarioError(f"the passive side reports: {verdict!r}")
        await finish(ctl)

    # -- building blocks

    async def echo(self, n: int, salt: int) -> None:
        stream = await self.open(f"ECHO {n}")
        what = f"ECHO stream {stream.id}"
        tx, rx = hashlib.sha256(), hashlib.sha256()
        wm = self.report.meter(n, f"{what} sent")
        rm = self.report.meter(n, f"{what} echoed back")
        try:
            await concurrently(
                write_payload(stream, n, self.p.seed, salt, tx, wm), read_n(stream, n, rx, rm)
            )
            if sha(tx) != sha(rx):
                raise ScenarioError(f"echoed bytes differ: sent {sha(tx)}, got back {sha(rx)}")
            await finish(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from exc

    async def xfer(self, up: int, down: int, salt: int) -> None:
        stream = await self.open(f"XFER {up} {down}")
        what = f"XFER stream {stream.id} (up {up}, down {down})"
        tx, rx = hashlib.sha256(), hashlib.sha256()
        wm = self.report.meter(up, f"{what} sent")
        rm = self.report.meter(down, f"{what} received")

        async def receive() -> str:
            await read_n(stream, down, rx, rm)
            return await read_line(stream)

        try:
            _, line = await concurrently(
                write_payload(stream, up, self.p.seed, salt, tx, wm), receive()
            )
            want = f"{sha(tx)} {sha(rx)}"
            if line != want:
                raise ScenarioError(f"digest line {line!r}, want {want!r} (<their rx> <their tx>)")
            await finish(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from exc

    async def closer(self, stream: yamux.Stream, payload: int, n: int, salt: int) -> None:
        """Send payload, FIN, then -- after our own FIN -- read n bytes and the result line."""
        what = f"half-close closer stream {stream.id}"
        tx, rx = hashlib.sha256(), hashlib.sha256()
        try:
            await write_payload(stream, payload, self.p.seed, salt, tx,
                                self.report.meter(payload, f"{what} sent"))
            stream.close()
            await read_n(stream, n, rx, self.report.meter(n, f"{what} received after own FIN"))
            line = await read_line(stream)
            want = f"{payload} {sha(tx)} {sha(rx)}"
            if line != want:
                raise ScenarioError(f"result line {line!r}, want {want!r}")
            await expect_eof(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from exc

    async def drainer(self, stream: yamux.Stream, n: int, salt: int, expect_m: int) -> None:
        """Read to the peer's FIN, then send n bytes, the line ``<m> <rx sha> <tx sha>``, FIN."""
        what = f"half-close drainer stream {stream.id}"
        try:
            m, rx = await read_all(stream, self.report.meter(-1, f"{what} received"))
            if m != expect_m:
                raise ScenarioError(f"received {m} bytes before the peer's FIN, want {expect_m}")
            tx = hashlib.sha256()
            await write_payload(stream, n, self.p.seed, salt, tx,
                                self.report.meter(n, f"{what} sent after the peer's FIN"))
            write_line(stream, f"{m} {rx} {sha(tx)}")
            stream.close()
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from exc

    # -- scenarios

    async def sc_echo(self) -> None:
        self.report.notes["bytes"] = self.p.size
        await self.echo(self.p.size, 0)

    async def sc_parallel(self) -> None:
        rng = random.Random(self.p.seed)
        jobs = [(rng.randint(0, self.p.size), rng.randint(0, self.p.size))
                for _ in range(self.p.streams)]
        results = await asyncio.gather(
            *(self.xfer(up, down, i) for i, (up, down) in enumerate(jobs)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for exc in errors[:10]:
            self.report.fail(f"parallel: {exc}")
        self.report.notes.update(streams=len(jobs), bytes_both_ways=sum(u + d for u, d in jobs))
        if errors:
            raise ScenarioError(f"{len(errors)} of {len(jobs)} XFER streams failed")

    async def sc_bulk(self) -> None:
        self.report.notes.update(up=self.p.size, down=self.p.down)
        await self.xfer(self.p.size, self.p.down, 0)

    async def sc_halfclose(self) -> None:
        n = self.p.size
        await self.closer(await self.open(f"HALFCLOSE {n}"), n, n, 1)
        await self.drainer(await self.open(f"HALFCLOSE-REV {n}"), n, 2, expect_m=n)
        self.report.notes.update(closer_sent=n, drainer_sent=n)

    async def sc_rst(self) -> None:
        stream = await self.open("EXPECT-RST")
        await expect_line(stream, "READY")
        stream.reset()
        stream = await self.open("SEND-RST")
        try:
            await see_reset(stream)
        except ScenarioError as exc:
            raise ScenarioError(f"SEND-RST stream {stream.id}: {exc}") from exc
        await self.echo(self.p.size, 3)
        self.report.notes.update(reset_sent=1, reset_seen=1)

    async def sc_ping(self) -> None:
        k = self.p.count
        stream = await self.open(f"PING {k}")
        worst = 0.0
        for i in range(k):
            try:
                async with asyncio.timeout(self.p.write_timeout):
                    worst = max(worst, await self.session.ping())
            except (TimeoutError, yamux.YamuxError) as exc:
                raise ScenarioError(f"ping {i + 1} of {k}: {exc!r}") from exc
        await expect_line(stream, f"PINGED {k}")
        await finish(stream)
        if self.report.tap.recv.ping_req < k:
            raise ScenarioError(f"peer sent {self.report.tap.recv.ping_req} pings, want >= {k}")
        self.report.notes.update(pings=k, max_rtt_us=round(worst * 1e6))

    async def sc_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pings_during(self.report, "xfer"):
            await self.xfer(self.p.size, self.p.down, 0)
        self.report.notes["xfer_s"] = round(loop.time() - t0, 3)
        await asyncio.sleep(self.p.idle)
        await self.echo(1024, 1)
        if self.session.closed:
            raise ScenarioError(f"session ended: {self.session.close_reason!r}")
        check_keepalive(self.report)

    async def sc_goaway(self) -> None:
        s1 = await self.open()
        s2 = await self.open()
        # S1: we send Go Away; the Go passive's next open must fail.
        write_line(s1, "EXPECT-GOAWAY")
        self.session.go_away()
        write_line(s1, "SENT")
        result = await read_line(s1)
        if not result.startswith("OPEN-REFUSED "):
            raise ScenarioError(f"S1 (EXPECT-GOAWAY): peer reports {result!r} after our go away")
        await finish(s1)
        syn_after = self.report.tap.syn_after_our_goaway
        # S2: the Go passive sends Go Away; our next open must fail.
        write_line(s2, "SEND-GOAWAY")
        await expect_line(s2, "SENT")
        recv = self.report.tap.recv
        if recv.go_away < 1 or recv.go_away_code != 0 or not self.session.remote_go_away:
            raise ScenarioError(
                f"S2 (SEND-GOAWAY): got SENT but {recv.go_away} go away frames (last code "
                f"{recv.go_away_code}), session.remote_go_away={self.session.remote_go_away}"
            )
        how = await open_after_goaway(self.session)
        write_line(s2, f"OPEN-REFUSED {how}")
        if how == "ok":
            raise ScenarioError("S2 (SEND-GOAWAY): open after the peer's go away succeeded")
        await finish(s2)
        self.report.notes.update(peer_open_after_our_goaway=repr(result), our_open=how,
                                 syn_after_our_goaway=syn_after)

    async def sc_bigwindow(self) -> None:
        n = self.p.size
        stream = await self.open(f"BIGWRITE {n}")
        what = f"BIGWRITE stream {stream.id} (n {n}, window {self.p.window})"
        try:
            await expect_line(stream, "READY")
            buf = big_payload(self.p.seed, 0, n)
            stream.write(buf)  # ONE write call
            await stream.drain()
            await expect_line(stream, hashlib.sha256(buf).hexdigest())
            rx = hashlib.sha256()
            await read_n(stream, n, rx, self.report.meter(n, f"{what} received"))
            await expect_line(stream, sha(rx))
            await finish(stream)
        except (ScenarioError, yamux.YamuxError) as exc:
            raise ScenarioError(f"{what}: {exc}") from exc
        check_big_frames(self.report, n)

    async def sc_openstorm(self) -> None:
        n = self.p.streams
        results = await asyncio.gather(
            *(self.echo(self.p.size, i) for i in range(n)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for exc in errors[:10]:
            self.report.fail(f"openstorm: {exc}")
        if errors:
            raise ScenarioError(f"{len(errors)} of {n} streams failed")
        sent, recv = self.report.tap.sent, self.report.tap.recv
        if sent.rst + recv.rst:
            raise ScenarioError(f"resets on the wire: sent {sent.rst}, received {recv.rst}")
        self.report.notes.update(streams=n, backlog=self.p.backlog)

    async def sc_closebusy(self) -> None:
        loop = asyncio.get_running_loop()
        kinds: dict[str, list[yamux.Stream]] = {"HOLD": [], "FLOOD": [], "STALL": []}
        for _ in range(self.p.streams):
            for cmd, streams in kinds.items():
                stream = await self.open(cmd)
                await expect_line(stream, "READY")
                streams.append(stream)

        async def hold(stream: yamux.Stream) -> str:
            try:
                data = await stream.read(1024)
            except (yamux.YamuxError, ConnectionError) as exc:
                return f"error {type(exc).__name__}"
            if data:
                raise ScenarioError(f"HOLD stream {stream.id}: read returned {len(data)} bytes")
            return "EOF"

        async def stall(stream: yamux.Stream) -> str:
            total = 0
            try:
                while True:
                    data = payload_chunk(self.p.seed, 5, total, 64 << 10)
                    stream.write(data)
                    total += len(data)
                    await stream.drain()
            except (yamux.YamuxError, ConnectionError) as exc:
                return f"error {type(exc).__name__}"

        async def timed(coro: Awaitable[str]) -> tuple[str, float]:
            result = await coro
            return result, loop.time()

        pending = [asyncio.ensure_future(timed(hold(s))) for s in kinds["HOLD"]]
        pending += [asyncio.ensure_future(timed(stall(s))) for s in kinds["STALL"]]
        try:
            await asyncio.sleep(0.5)  # FLOOD and STALL exhaust their windows
            closed_at = loop.time()
            await self.session.close()
            async with asyncio.timeout(BUSY_LIMIT):
                results = await asyncio.gather(*pending)
        except TimeoutError:
            hung = sum(not t.done() for t in pending)
            raise ScenarioError(
                f"{hung} of our {len(pending)} pending reads/writes still hang "
                f"{BUSY_LIMIT}s after closing the session"
            ) from None
        finally:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        overruns = [window_overrun(self.report, s.id, ours=True) for s in kinds["STALL"]]
        overruns += [window_overrun(self.report, s.id, ours=False) for s in kinds["FLOOD"]]
        for overrun in filter(None, overruns):
            self.report.fail(f"closebusy: {overrun}")
        self.report.notes.update(
            busy_streams=3 * self.p.streams,
            pending_ops_ended=len(results),
            within_s=round(max(t for _, t in results) - closed_at, 3),
            outcomes=",".join(sorted(set(r for r, _ in results))),
        )


async def open_after_goaway(session: yamux.Session) -> str:
    """Try to open a stream after the peer's Go Away: "local", "rst" or "ok" (a failure)."""
    try:
        stream = await session.open_stream()
    except yamux.GoAwayError:
        return "local"
    try:
        async with asyncio.timeout(5):
            await stream.read(1)
    except yamux.StreamResetError:
        return "rst"
    except (TimeoutError, yamux.YamuxError):
        pass
    return "ok"


async def run_active(session: yamux.Session, report: Report) -> None:
    """Drive the scenario as yamux client, then close the session (after BYE)."""
    try:
        await Active(session, report).run()
    finally:
        await session.close()


# --------------------------------------------------------------------------- passive side


class Passive:
    """Python as yamux server: accepts every stream and obeys its command (mirror of passive.go)."""

    def __init__(self, session: yamux.Session, report: Report) -> None:
        self.session = session
        self.report = report
        self.p = report.params
        self.loop = asyncio.get_running_loop()
        self.handlers: set[asyncio.Task[None]] = set()
        self.bye_seen = False
        self.checked = False
        self.ended = asyncio.Event()
        self.end_at: float | None = None
        self.busy_ends: list[float] = []

    async def run(self) -> None:
        try:
            while True:
                try:
                    stream = await self.session.accept_stream()
                except yamux.SessionClosedError:
                    break
                except yamux.GoAwayError:
                    # yamux bug (see tests/test_interop.py::test_accept_after_remote_go_away):
                    # accept_stream raises once the PEER sent Go Away, although the peer
                    # may still open streams. No scenario opens any after it, so wait for
                    # the session's end instead.
                    self.report.notes["accept_after_remote_goaway"] = "GoAwayError"
                    await self.session.wait_closed()
                    break
                task = asyncio.ensure_future(self.serve(stream))
                self.handlers.add(task)
                task.add_done_callback(self.handlers.discard)
        finally:
            self.end_at = self.loop.time()
            self.ended.set()
            await self.session.close()
            await self._wait_handlers()
        if not self.bye_seen and self.p.scenario != "closebusy":
            self.report.fail("the session ended without BYE on the control stream")
        if not self.checked:
            self.check_served()

    async def _wait_handlers(self) -> None:
        if not self.handlers:
            return
        _, pending = await asyncio.wait(set(self.handlers), timeout=HANDLER_GRACE)
        if pending:
            self.report.fail(f"{len(pending)} stream handlers still running "
                             f"{HANDLER_GRACE}s after the session ended")
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def serve(self, stream: yamux.Stream) -> None:
        what = f"stream {stream.id}"
        try:
            line = await read_line(stream)
            what = f"{line} stream {stream.id}"
            cmd, *args = line.split(" ") if line else [""]
            if COMMAND_ARITY.get(cmd) != len(args) or not all(a.isdigit() for a in args):
                raise ScenarioError(f"unknown command line {line!r}")
            nums = [int(a) for a in args]
            await getattr(self, "cmd_" + cmd.lower().replace("-", "_"))(stream, *nums)
        except (ScenarioError, yamux.YamuxError, ConnectionError) as exc:
            self.report.fail(f"{what}: {exc}")
            stream.reset()
            return
        except Exception as exc:
            logger.exception("%s: handler failed", what)
            self.report.fail(f"{what}: unexpected {exc!r}")
            stream.reset()
            return
        if cmd != "BYE":
            self.report.served[cmd] += 1

    # -- commands

    async def cmd_bye(self, stream: yamux.Stream) -> None:
        others = {t for t in self.handlers if t is not asyncio.current_task()}
        if others:
            await asyncio.wait(others)
        self.check_served()
        self.bye_seen = self.checked = True
        verdict = "BYE OK"
        if self.report.failures:
            msg = "; ".join(self.report.failures).replace("\n", " ")
            verdict = "BYE FAIL " + (msg[:200] + "..." if len(msg) > 200 else msg)
        write_line(stream, verdict)
        stream.close()

    async def cmd_echo(self, stream: yamux.Stream, n: int) -> None:
        meter = self.report.meter(n, f"ECHO stream {stream.id} echoed")
        try:
            while meter.seen < n:
                data = await stream.read(min(n - meter.seen, READ_CHUNK))
                if not data:
                    raise ScenarioError(f"echoed {meter.seen} of {n} bytes, then EOF")
                stream.write(data)
                meter.seen += len(data)
                await stream.drain()
        except (yamux.YamuxError, ConnectionError) as exc:
            raise ScenarioError(f"echoed {meter.seen} of {n} bytes: {exc!r}") from exc
        stream.close()

    async def cmd_xfer(self, stream: yamux.Stream, up: int, down: int) -> None:
        tx, rx = hashlib.sha256(), hashlib.sha256()
        with pings_during(self.report, "xfer"):
            await concurrently(
                write_payload(stream, down, self.p.seed, stream.id, tx,
                              self.report.meter(down, f"XFER stream {stream.id} sent")),
                read_n(stream, up, rx, self.report.meter(up, f"XFER stream {stream.id} received")),
            )
        write_line(stream, f"{sha(rx)} {sha(tx)}")
        stream.close()

    async def cmd_halfclose(self, stream: yamux.Stream, n: int) -> None:
        """Drainer: read to the opener's FIN, then n bytes and the result line, FIN."""
        m, rx = await read_all(stream, self.report.meter(-1, f"HALFCLOSE stream {stream.id} rx"))
        if m != self.p.size:
            raise ScenarioError(f"received {m} bytes before the peer's FIN, want {self.p.size}")
        tx = hashlib.sha256()
        await write_payload(stream, n, self.p.seed, stream.id, tx,
                            self.report.meter(n, f"HALFCLOSE stream {stream.id} sent after FIN"))
        write_line(stream, f"{m} {rx} {sha(tx)}")
        stream.close()

    async def cmd_halfclose_rev(self, stream: yamux.Stream, n: int) -> None:
        """Closer: our payload, FIN, then read n bytes and the line after our own FIN; EOF."""
        p = self.p.size
        tx, rx = hashlib.sha256(), hashlib.sha256()
        sid = stream.id
        await write_payload(stream, p, self.p.seed, sid, tx,
                            self.report.meter(p, f"HALFCLOSE-REV stream {sid} sent"))
        stream.close()
        await read_n(stream, n, rx,
                     self.report.meter(n, f"HALFCLOSE-REV stream {sid} received after own FIN"))
        line = await read_line(stream)
        want = f"{p} {sha(tx)} {sha(rx)}"
        if line != want:
            raise ScenarioError(f"result line {line!r}, want {want!r}")
        await expect_eof(stream)

    async def cmd_expect_rst(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        await see_reset(stream)

    async def cmd_send_rst(self, stream: yamux.Stream) -> None:
        stream.reset()

    async def cmd_ping(self, stream: yamux.Stream, k: int) -> None:
        for i in range(k):
            try:
                async with asyncio.timeout(self.p.write_timeout):
                    await self.session.ping()
            except (TimeoutError, yamux.YamuxError) as exc:
                raise ScenarioError(f"our ping {i + 1} of {k}: {exc!r}") from exc
        write_line(stream, f"PINGED {k}")
        stream.close()

    async def cmd_expect_goaway(self, stream: yamux.Stream) -> None:
        await expect_line(stream, "SENT")
        if not self.session.remote_go_away:
            raise ScenarioError("got SENT, but session.remote_go_away is False")
        how = await open_after_goaway(self.session)
        write_line(stream, f"OPEN-REFUSED {how}" if how != "ok" else "OPEN-OK")
        if how == "ok":
            raise ScenarioError("could open a stream after the peer's go away")
        self.report.notes["our_open_after_peer_goaway"] = how
        stream.close()

    async def cmd_send_goaway(self, stream: yamux.Stream) -> None:
        self.session.go_away()
        write_line(stream, "SENT")
        line = await read_line(stream)
        if not line.startswith("OPEN-REFUSED "):
            raise ScenarioError(f"peer reports {line!r} after our go away, want OPEN-REFUSED")
        self.report.notes.update(peer_open_after_our_goaway=repr(line),
                                 syn_after_our_goaway=self.report.tap.syn_after_our_goaway)
        stream.close()

    async def cmd_bigwrite(self, stream: yamux.Stream, n: int) -> None:
        write_line(stream, "READY")
        rx = hashlib.sha256()
        await read_n(stream, n, rx, self.report.meter(n, f"BIGWRITE stream {stream.id} received"))
        write_line(stream, sha(rx))
        buf = big_payload(self.p.seed, stream.id, n)
        stream.write(buf)  # ONE write call
        write_line(stream, hashlib.sha256(buf).hexdigest())
        await stream.drain()
        check_big_frames(self.report, n)
        stream.close()

    def _busy_end(self) -> None:
        self.busy_ends.append(self.loop.time())

    async def cmd_hold(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        try:
            data = await stream.read(1024)
        except (yamux.YamuxError, ConnectionError):
            data = b""
        self._busy_end()
        if data:
            raise ScenarioError(f"HOLD read returned {len(data)} bytes, want the session's end")

    async def cmd_flood(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        total = 0
        try:
            while True:
                data = payload_chunk(self.p.seed, stream.id, total, 64 << 10)
                stream.write(data)
                total += len(data)
                await stream.drain()
        except (yamux.YamuxError, ConnectionError):
            pass
        self._busy_end()
        if overrun := window_overrun(self.report, stream.id, ours=True):
            raise ScenarioError(f"FLOOD: {overrun}")

    async def cmd_stall(self, stream: yamux.Stream) -> None:
        write_line(stream, "READY")
        await self.ended.wait()
        self._busy_end()
        if overrun := window_overrun(self.report, stream.id, ours=False):
            raise ScenarioError(f"STALL: {overrun}")

    # -- verdict

    def check_served(self) -> None:
        s, p, r = self.report.served, self.p, self.report

        def need(cmd: str, n: int, exact: bool = False) -> None:
            if s[cmd] < n or (exact and s[cmd] != n):
                r.fail(f"served {s[cmd]} {cmd} streams successfully, want {n}")

        sent, recv = r.tap.sent, r.tap.recv
        sc = p.scenario
        if sc == "echo":
            need("ECHO", 1)
        elif sc == "parallel":
            need("XFER", p.streams, exact=True)
        elif sc == "bulk":
            need("XFER", 1)
        elif sc == "halfclose":
            need("HALFCLOSE", 1)
            need("HALFCLOSE-REV", 1)
        elif sc == "rst":
            need("EXPECT-RST", 1)
            need("SEND-RST", 1)
            need("ECHO", 1)
        elif sc == "ping":
            need("PING", 1)
            if recv.ping_req < p.count:
                r.fail(f"the peer sent {recv.ping_req} ping requests, want >= {p.count}")
            r.notes["peer_pings"] = recv.ping_req
        elif sc == "keepalive":
            need("XFER", 1)
            need("ECHO", 1)
            check_keepalive(r)
        elif sc == "goaway":
            need("EXPECT-GOAWAY", 1)
            need("SEND-GOAWAY", 1)
        elif sc == "bigwindow":
            need("BIGWRITE", 1)
        elif sc == "openstorm":
            need("ECHO", p.streams, exact=True)
            if sent.rst + recv.rst:
                r.fail(f"resets on the wire: sent {sent.rst}, received {recv.rst}")
        elif sc == "closebusy":
            for cmd in ("HOLD", "FLOOD", "STALL"):
                need(cmd, p.streams, exact=True)
            end = self.end_at if self.end_at is not None else self.loop.time()
            worst = max((t - end for t in self.busy_ends), default=0.0)
            if worst > BUSY_LIMIT:
                r.fail(f"busy operations ended up to {worst:.3f}s after the session ended")
            r.notes.update(busy_ops_ended=len(self.busy_ends),
                           worst_after_session_end=round(worst, 3))
        r.notes["served"] = ",".join(f"{k}:{v}" for k, v in sorted(s.items()))


async def run_passive(session: yamux.Session, report: Report) -> None:
    """Serve the scenario as yamux server until the session ends; then the final checks."""
    await Passive(session, report).run()


# --------------------------------------------------------------------------- plumbing


class PeerListener:
    """Listens on 127.0.0.1:0 for the Go peer's one connection; it becomes a yamux session."""

    def __init__(self, *, client: bool, config: yamux.Config, tap: WireTap) -> None:
        self._client = client
        self._config = config
        self._tap = tap
        self._server: asyncio.Server | None = None
        self.accepted: asyncio.Future[yamux.Session] | None = None
        self.extra_connections = 0

    @property
    def addr(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def _protocol(self) -> asyncio.Protocol:
        assert self.accepted is not None
        if self.accepted.done():
            self.extra_connections += 1
            return _Refuse()
        session = yamux.Session(client=self._client, config=self._config)
        self.accepted.set_result(session)
        assert self._server is not None
        # One connection only; not closed right here: the transport being built attaches to it.
        asyncio.get_running_loop().call_soon(self._server.close)
        return self._tap.wrap(session.protocol())

    async def __aenter__(self) -> PeerListener:
        loop = asyncio.get_running_loop()
        self.accepted = loop.create_future()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self.accepted is not None
        self._server.close()
        if self.accepted.done() and not self.accepted.cancelled():
            await self.accepted.result().close()
        else:
            self.accepted.cancel()
        await self._server.wait_closed()


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


@dataclass
class Outcome:
    """Both verdicts of one scenario x role, and what a failure report needs."""

    params: Params
    py_role: str
    report: Report
    family: str = "go"
    """The peer's yamux family (interop/families.py); ``go_*`` fields hold its peer's output."""
    go: harness.Finished | None = None
    go_error: str | None = None
    """The harness's own failure (timeout, ...), with whatever Go printed."""
    py_error: BaseException | None = None
    py_traceback: str = ""
    wall_s: float = 0.0
    go_args: list[str] = field(default_factory=list)

    @property
    def go_role(self) -> str:
        return "server" if self.py_role == "client" else "client"

    @property
    def go_ok(self) -> bool:
        prefix = f"OK {self.params.scenario} {self.go_role} "
        return (self.go is not None and self.go.returncode == 0
                and self.go.ok_line is not None and self.go.ok_line.startswith(prefix))

    @property
    def py_ok(self) -> bool:
        return self.py_error is None and not self.report.failures

    @property
    def ok(self) -> bool:
        return self.go_ok and self.py_ok

    def go_detail(self, key: str) -> str | None:
        """A ``key=value`` of Go's OK line (Go quotes values with spaces: %q)."""
        line = self.go.ok_line if self.go is not None else None
        try:
            parts = shlex.split(line or "")
        except ValueError:
            parts = (line or "").split()
        for part in parts:
            k, sep, v = part.partition("=")
            if sep and k == key:
                return v
        return None

    def describe(self) -> str:
        p = self.params
        knobs = {k: v for k, v in dataclasses.asdict(p).items() if k != "scenario"}
        out = [
            f"=== scenario {p.scenario}: python yamux {self.py_role} vs {self.family} yamux-peer "
            f"-role {self.go_role}  ({'OK' if self.ok else 'FAILED'}, {self.wall_s:.2f}s)",
            f"knobs: {knobs}",
            f"{self.family} peer command: yamux-peer {' '.join(self.go_args)}",
            f"verdicts: go={'ok' if self.go_ok else 'FAILED'} "
            f"python={'ok' if self.py_ok else 'FAILED'}",
        ]
        if self.py_error is not None:
            out.append(f"python exception: {self.py_error!r}")
        out.append(self.report.describe())
        if self.go is not None:
            out += [f"go exit code {self.go.returncode}; OK line: {self.go.ok_line!r}",
                    "--- go stdout", self.go.stdout.rstrip(),
                    "--- go stderr (tail)", self.go.stderr[-6000:].rstrip()]
        if self.go_error:
            out += ["--- go harness error", self.go_error.rstrip()]
        if self.py_traceback:
            out += ["--- python traceback", self.py_traceback.rstrip()]
        return "\n".join(out)


async def run_against_go(scenario: str, py_role: str, **overrides: Any) -> Outcome:
    """:func:`run_against` the Go peer (hashicorp/yamux)."""
    return await run_against("go", scenario, py_role, **overrides)


async def run_against(family: str, scenario: str, py_role: str, **overrides: Any) -> Outcome:
    """Run one scenario: Python in ``py_role`` ("client" = active) against ``family``'s peer.

    Never raises for a scenario failure: look at ``Outcome.ok`` and ``describe()``.
    The peer (container or process) is removed before this returns, whatever happened.
    """
    if py_role not in ROLES:
        raise ValueError(f"py_role must be one of {ROLES}")
    fam = families.family(family)
    params = Params.for_scenario(scenario, **overrides)
    report = Report(scenario, py_role, params)
    outcome = Outcome(params, py_role, report, family)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with PeerListener(client=py_role == "client", config=params.config(),
                            tap=report.tap) as listener:
        assert listener.accepted is not None
        go = await asyncio.to_thread(
            fam.start_peer, outcome.go_role, listener.addr, scenario, **params.go_knobs()
        )
        outcome.go_args = list(go.args)
        go_exit = asyncio.ensure_future(go.await_exit(within=params.timeout + 30))
        try:
            await asyncio.wait({listener.accepted, go_exit}, timeout=60,
                               return_when=asyncio.FIRST_COMPLETED)
            if not listener.accepted.done():
                raise ScenarioError(f"the {family} peer did not connect"
                                    + (" (it exited)" if go_exit.done() else " within 60s"))
            session = report.session = listener.accepted.result()
            side = run_active if py_role == "client" else run_passive
            async with asyncio.timeout(params.timeout + 10):
                await side(session, report)
        except Exception as exc:  # reported in the outcome
            outcome.py_error = exc
            outcome.py_traceback = traceback.format_exc()
        finally:
            if listener.accepted.done() and not listener.accepted.cancelled():
                await listener.accepted.result().close()
            try:
                outcome.go = await asyncio.wait_for(asyncio.shield(go_exit), 30)
            except harness.HarnessError as exc:
                outcome.go_error = str(exc)
            except TimeoutError:
                outcome.go_error = f"{family} peer did not exit within 30s after our session ended"
            finally:
                if not go_exit.done():
                    await asyncio.to_thread(go.close)
                    with contextlib.suppress(BaseException):
                        await go_exit
                await asyncio.to_thread(go.close)
            if outcome.go is None and outcome.go_error is not None:
                out, err = go.output()
                outcome.go = harness.Finished(-1, out, err)
            if listener.extra_connections:
                report.fail(f"{listener.extra_connections} unexpected extra connections")
    outcome.wall_s = loop.time() - t0
    return outcome


def main(argv: list[str] | None = None) -> int:
    """``python -m interop.py_peer SCENARIO ROLE [--size N ...]`` for manual debugging."""
    ap = argparse.ArgumentParser(prog="python -m interop.py_peer")
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("role", choices=ROLES, help="Python's yamux role (client = active)")
    for knob in ("size", "down", "window", "streams", "backlog", "count"):
        ap.add_argument(f"--{knob}", type=int)
    ap.add_argument("--keepalive-interval", type=float)
    ap.add_argument("--family", choices=sorted(families.FAMILIES), default="go",
                    help="the peer's yamux implementation (default: go)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.WARNING)
    overrides = {k: v for k, v in vars(ns).items()
                 if k not in ("scenario", "role", "verbose", "family") and v is not None}
    outcome = asyncio.run(run_against(ns.family, ns.scenario, ns.role, **overrides))
    print(outcome.describe())
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
