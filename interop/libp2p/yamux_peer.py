"""The interop scenario peer (interop/SCENARIOS.md) on py-libp2p's yamux (``libp2p`` 0.8.1, trio).

Same command line and output as the Go ``yamux-peer``, so one harness drives every family::

    python yamux_peer.py -role client|server -addr HOST:PORT -scenario NAME [-listen] [knobs]

It runs in its own venv (interop/.venv-libp2p, made by scripts/install-test-deps.sh): py-libp2p
pulls in many packages the project must not depend on. It imports nothing from this repository.

py-libp2p's ``Yamux`` wants a "secured connection" (libp2p's security layer sits below the
muxer); yamux here runs on the bare TCP connection, as in the relay's seed protocol, so
:class:`PlainConn` hands it libp2p's own ``TrioTCPStream`` with the three extra attributes it asks
for. The roles: the yamux client is ACTIVE (opens, drives, verifies), the server PASSIVE.

What this peer cannot do (SCENARIOS.md, "Other yamux families"): ``goaway`` (it closes the
session on any Go Away), ``keepalive`` (no keepalive setting), on-demand pings (it pings only to
measure RTT, 0.5 s after start and every 30 s: ``PING`` supports k <= 1) and window grants on
SYN/ACK (its window starts at 256 KiB and tunes itself).
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

SCENARIOS = (
    "echo",
    "parallel",
    "bulk",
    "halfclose",
    "rst",
    "ping",
    "keepalive",
    "goaway",
    "bigwindow",
    "openstorm",
    "closebusy",
)
UNSUPPORTED = {
    "goaway": "py-libp2p closes the session on any Go Away",
    "keepalive": "py-libp2p has no keepalive setting",
}
CHUNK = 256 * 1024
PATTERN_LEN = (1 << 20) + 7
BUSY_LIMIT = 5.0
HANDLER_GRACE = 10.0
ARITY = {
    "ECHO": 1,
    "XFER": 2,
    "HALFCLOSE": 1,
    "HALFCLOSE-REV": 1,
    "EXPECT-RST": 0,
    "SEND-RST": 0,
    "PING": 1,
    "BIGWRITE": 1,
    "HOLD": 0,
    "FLOOD": 0,
    "STALL": 0,
    "BYE": 0,
}


class ScenarioError(Exception):
    """A check failed; the message says what was seen and expected."""


# --------------------------------------------------------------------------- options


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)(I?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[2].upper()]


def parse_duration(text: str) -> float:
    """Go durations as the harness passes them ("100000us", "1.5s", "100ms"), in seconds."""
    m = re.fullmatch(r"([\d.]+)(us|µs|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return float(m[1]) * {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m[2]]


def parse_options(argv: list[str]) -> dict[str, Any]:
    raw: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        m = re.fullmatch(r"--?([a-z-]+)(?:=(.*))?", arg)
        if not m:
            raise ValueError(f"unexpected argument {arg!r}")
        boolean = m[1] in ("listen", "yamux-log")
        raw[m[1]] = m[2] if m[2] is not None else ("true" if boolean else next(it))
    sc = raw.get("scenario", "")
    if raw.get("role") not in ("client", "server") or not raw.get("addr") or sc not in SCENARIOS:
        raise ValueError("usage: yamux_peer.py -role client|server -addr HOST:PORT -scenario NAME")
    backlog = int(raw.get("backlog", 256))
    size_default = {
        "parallel": 8 << 20,
        "bulk": 1 << 30,
        "rst": 64 << 10,
        "goaway": 64 << 10,
        "keepalive": 64 << 20,
        "openstorm": 32,
    }.get(sc, 1 << 20)
    window = parse_size(raw.get("window", "16MiB" if sc == "bigwindow" else "256KiB"))
    if sc == "bigwindow":
        size_default = window - (64 << 10)
    size = parse_size(raw["size"]) if "size" in raw else size_default
    streams_default = {"parallel": 100, "openstorm": 5 * backlog, "closebusy": 4}.get(sc, 1)
    return {
        "role": raw["role"],
        "addr": raw["addr"],
        "scenario": sc,
        "listen": raw.get("listen") == "true",
        "size": size,
        "down": parse_size(raw["down"]) if "down" in raw else size,
        "window": window,
        "backlog": backlog,
        "streams": int(raw.get("streams") or streams_default),
        "count": int(raw.get("count") or (5 if sc == "ping" else 1)),
        "seed": int(raw.get("seed", 1)),
        "idle": parse_duration(raw.get("idle", "1s")),
        "write_timeout": parse_duration(raw.get("write-timeout", "10s")),
        "timeout": parse_duration(raw.get("timeout", "120s")),
        "linger": parse_duration(raw.get("linger", "2s")),
    }


# --------------------------------------------------------------------------- bytes

_pattern = b""


def init_pattern(seed: int) -> None:
    global _pattern
    half = random.Random(seed).randbytes(PATTERN_LEN)
    _pattern = half + half


def payload_chunk(salt: int, pos: int, n: int) -> bytes:
    off = (salt * 7919 + pos) % PATTERN_LEN
    return _pattern[off : off + min(n, PATTERN_LEN)]


def big_payload(salt: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += payload_chunk(salt, len(out), n - len(out))
    return bytes(out)


class Meter:
    """A transfer's progress, reported on failure."""

    all: ClassVar[list[Meter]] = []

    def __init__(self, name: str, expected: int) -> None:
        self.name, self.expected, self.seen = name, expected, 0
        Meter.all.append(self)

    @classmethod
    def unfinished(cls) -> list[str]:
        return [
            f"{m.name}: seen {m.seen} of {m.expected} bytes"
            for m in cls.all
            if m.expected >= 0 and m.seen != m.expected
        ][:20]


class Conn:
    """One py-libp2p yamux stream with buffered reads (lines, exact counts, EOF, reset)."""

    def __init__(self, stream: YamuxStream) -> None:
        self.stream = stream
        self.id = stream.stream_id
        self.buf = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.read(CHUNK)
        except EOFError:  # MuxedStreamEOF
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at EOF; MuxedStreamReset on a reset."""
        while not self.buf:
            if not await self._fill():
                return b""
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_n(self, n: int, digest: Any, meter: Meter) -> None:
        got = 0
        try:
            while got < n:
                data = await self.read(n - got)
                if not data:
                    raise ScenarioError(f"short read: got {got} of {n} bytes, then EOF")
                digest.update(data)
                got += len(data)
                meter.seen = got
        except MuxedStreamReset as exc:
            raise ScenarioError(f"short read: got {got} of {n} bytes: {exc!r}") from exc

    async def read_all(self, meter: Meter) -> tuple[int, str]:
        digest = hashlib.sha256()
        while data := await self.read(CHUNK):
            digest.update(data)
            meter.seen += len(data)
        return meter.seen, digest.hexdigest()

    async def read_line(self) -> str:
        while (nl := self.buf.find(b"\n")) < 0:
            if len(self.buf) > 256:
                raise ScenarioError("line longer than 256 bytes")
            try:
                more = await self._fill()
            except MuxedStreamReset as exc:
                raise ScenarioError(f"reading a line: {exc!r}") from exc
            if not more:
                raise ScenarioError(f"reading a line: EOF after {bytes(self.buf)!r}")
        line = bytes(self.buf[:nl]).decode("latin-1")
        del self.buf[: nl + 1]
        return line

    async def expect_line(self, want: str) -> None:
        got = await self.read_line()
        if got != want:
            raise ScenarioError(f"expected line {want!r}, got {got!r}")

    async def expect_eof(self) -> None:
        extra = 0
        while data := await self.read(CHUNK):
            extra += len(data)
        if extra:
            raise ScenarioError(f"expected EOF, got {extra} extra bytes first")

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except Exception as exc:
            raise ScenarioError(f"write failed: {exc!r}") from exc

    async def write_line(self, line: str) -> None:
        await self.write(line.encode("latin-1") + b"\n")

    async def write_payload(self, n: int, salt: int, digest: Any, meter: Meter) -> None:
        pos = 0
        while pos < n:
            data = payload_chunk(salt, pos, min(CHUNK, n - pos))
            digest.update(data)
            await self.write(data)
            pos += len(data)
            meter.seen = pos

    async def close_write(self) -> None:
        await self.stream.close()

    async def see_reset(self) -> None:
        """A read must fail with a reset (EOF is a failure); then a write must fail too."""
        got = 0
        try:
            while data := await self.read(CHUNK):
                got += len(data)
        except MuxedStreamReset:
            pass
        else:
            raise ScenarioError(f"read ended with EOF after {got} bytes, expected a stream reset")
        try:
            await self.stream.write(b"x")
        except Exception:
            return
        raise ScenarioError("write after the reset succeeded")


async def concurrently(*fns: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run at once; the first failure cancels the others (trio nursery) and is raised."""
    results: list[Any] = [None] * len(fns)

    async def one(i: int) -> None:
        results[i] = await fns[i]()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(fns)):
                nursery.start_soon(one, i)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return results


def sha(digest: Any) -> str:
    return str(digest.hexdigest())


# --------------------------------------------------------------------------- peer


class PlainConn(TrioTCPStream):
    """libp2p's TCP stream, with what Yamux asks of a secured connection (no security here)."""

    def __init__(self, stream: trio.SocketStream, initiator: bool) -> None:
        super().__init__(stream)
        self.is_initiator = initiator

    def get_transport_addresses(self) -> list[Any]:
        return []

    def get_connection_type(self) -> Any:
        return None


class Peer:
    def __init__(self, o: dict[str, Any], muxer: Yamux, nursery: trio.Nursery) -> None:
        self.o = o
        self.muxer = muxer
        self.nursery = nursery
        self.failures: list[str] = []
        self.details: list[str] = []
        self.served: Counter[str] = Counter()

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def note(self, key: str, value: object) -> None:
        self.details.append(f"{key}={value}")

    async def open(self, cmd: str = "") -> Conn:
        try:
            c = Conn(await self.muxer.open_stream())
        except Exception as exc:
            raise ScenarioError(f"open stream for {cmd!r}: {exc!r}") from exc
        if cmd:
            await c.write_line(cmd)
        return c


# --------------------------------------------------------------------------- active


async def finish(c: Conn) -> None:
    await c.expect_eof()
    await c.close_write()


async def echo(p: Peer, n: int, salt: int) -> None:
    c = await p.open(f"ECHO {n}")
    tx, rx = hashlib.sha256(), hashlib.sha256()
    await concurrently(
        lambda: c.write_payload(n, salt, tx, Meter(f"ECHO stream {c.id} sent", n)),
        lambda: c.read_n(n, rx, Meter(f"ECHO stream {c.id} echoed back", n)),
    )
    if sha(tx) != sha(rx):
        raise ScenarioError(f"ECHO stream {c.id}: echoed bytes differ")
    await finish(c)


async def xfer(p: Peer, up: int, down: int, salt: int) -> None:
    c = await p.open(f"XFER {up} {down}")
    what = f"XFER stream {c.id} (up {up}, down {down})"
    tx, rx = hashlib.sha256(), hashlib.sha256()

    async def receive() -> str:
        await c.read_n(down, rx, Meter(f"{what} received", down))
        return await c.read_line()

    _, line = await concurrently(
        lambda: c.write_payload(up, salt, tx, Meter(f"{what} sent", up)), receive
    )
    if line != f"{sha(tx)} {sha(rx)}":
        raise ScenarioError(f"{what}: digest line {line!r} does not match")
    await finish(c)


async def closer(c: Conn, payload: int, n: int, salt: int) -> None:
    tx, rx = hashlib.sha256(), hashlib.sha256()
    await c.write_payload(payload, salt, tx, Meter(f"closer stream {c.id} sent", payload))
    await c.close_write()
    await c.read_n(n, rx, Meter(f"closer stream {c.id} received after own FIN", n))
    line = await c.read_line()
    if line != f"{payload} {sha(tx)} {sha(rx)}":
        raise ScenarioError(f"closer stream {c.id}: result line {line!r} does not match")
    await c.expect_eof()


async def drainer(c: Conn, n: int, salt: int, expect_m: int) -> None:
    m, rx = await c.read_all(Meter(f"drainer stream {c.id} received", -1))
    if m != expect_m:
        raise ScenarioError(f"drainer stream {c.id}: received {m} bytes, want {expect_m}")
    tx = hashlib.sha256()
    await c.write_payload(n, salt, tx, Meter(f"drainer stream {c.id} sent after FIN", n))
    await c.write_line(f"{m} {rx} {sha(tx)}")
    await c.close_write()


async def many(p: Peer, what: str, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run every job at once; report up to 10 failures and fail if any job failed."""
    errors: list[BaseException] = []

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)
    for exc in errors[:10]:
        p.fail(f"{what}: {exc}")
    if errors:
        raise ScenarioError(f"{len(errors)} of {len(jobs)} {what} streams failed")


async def sc_echo(p: Peer) -> None:
    await echo(p, p.o["size"], 0)


async def sc_parallel(p: Peer) -> None:
    rng = random.Random(p.o["seed"])
    sizes = [
        (rng.randint(0, p.o["size"]), rng.randint(0, p.o["size"])) for _ in range(p.o["streams"])
    ]
    await many(
        p, "XFER", [lambda u=u, d=d, i=i: xfer(p, u, d, i) for i, (u, d) in enumerate(sizes)]
    )
    p.note("streams", len(sizes))


async def sc_bulk(p: Peer) -> None:
    await xfer(p, p.o["size"], p.o["down"], 0)


async def sc_halfclose(p: Peer) -> None:
    n = p.o["size"]
    await closer(await p.open(f"HALFCLOSE {n}"), n, n, 1)
    await drainer(await p.open(f"HALFCLOSE-REV {n}"), n, 2, n)


async def sc_rst(p: Peer) -> None:
    c = await p.open("EXPECT-RST")
    await c.expect_line("READY")
    await c.stream.reset()
    c = await p.open("SEND-RST")
    await c.see_reset()
    await echo(p, p.o["size"], 3)


async def sc_ping(p: Peer) -> None:
    c = await p.open(f"PING {p.o['count']}")
    await c.expect_line(f"PINGED {p.o['count']}")
    await finish(c)
    await wait_own_ping(p)


async def sc_bigwindow(p: Peer) -> None:
    n = p.o["size"]
    c = await p.open(f"BIGWRITE {n}")
    await c.expect_line("READY")
    buf = big_payload(0, n)
    await c.write(buf)  # ONE write call; py-libp2p cuts it into 64 KiB frames
    await c.expect_line(hashlib.sha256(buf).hexdigest())
    rx = hashlib.sha256()
    await c.read_n(n, rx, Meter(f"BIGWRITE stream {c.id} received", n))
    await c.expect_line(sha(rx))
    await finish(c)


async def sc_openstorm(p: Peer) -> None:
    await many(p, "ECHO", [lambda i=i: echo(p, p.o["size"], i) for i in range(p.o["streams"])])
    p.note("streams", p.o["streams"])


async def sc_closebusy(p: Peer) -> None:
    kinds: dict[str, list[Conn]] = {"HOLD": [], "FLOOD": [], "STALL": []}
    for _ in range(p.o["streams"]):
        for cmd, conns in kinds.items():
            c = await p.open(cmd)
            await c.expect_line("READY")
            conns.append(c)
    ended: list[float] = []

    async def hold(c: Conn) -> None:
        try:
            data = await c.read(1024)
        except MuxedStreamReset:
            data = b""
        ended.append(trio.current_time())
        if data:
            raise ScenarioError(f"HOLD stream {c.id}: read returned data")

    async def stall(c: Conn) -> None:
        pos = 0
        try:
            while True:
                await c.write(payload_chunk(5, pos, 65536))
                pos += 65536
        except ScenarioError:
            ended.append(trio.current_time())

    async def close_abruptly() -> None:
        await trio.sleep(0.5)
        p.note("closed_at", round(trio.current_time(), 3))
        await p.muxer.secured_conn.close()  # abrupt, like the Go active (no Go Away)

    with trio.move_on_after(0.5 + BUSY_LIMIT) as scope:
        await many(
            p,
            "busy",
            [
                *(lambda c=c: hold(c) for c in kinds["HOLD"]),
                *(lambda c=c: stall(c) for c in kinds["STALL"]),
                close_abruptly,
            ],
        )
    if scope.cancelled_caught:
        raise ScenarioError(f"pending reads/writes still hang {BUSY_LIMIT}s after the close")
    p.note("pending_ops_ended", len(ended))


async def wait_own_ping(p: Peer) -> None:
    """py-libp2p pings once, 0.5 s after start, to measure the RTT; wait for its pong.

    (Its RTT value itself is not reported: a pong that beats the bookkeeping of the send
    time gives a nonsense RTT of "now - 0".)
    """
    with trio.move_on_after(p.o["write_timeout"]):
        # Polled: py-libp2p offers no event for it (its _ping_event is replaced per probe).
        while p.muxer.rtt() == 0:  # noqa: ASYNC110
            await trio.sleep(0.05)
    if p.muxer.rtt() == 0:
        raise ScenarioError("py-libp2p's own RTT ping got no pong")
    p.note("own_ping", "answered")


ACTIVE = {name[3:]: fn for name, fn in globals().items() if name.startswith("sc_")}


async def run_active(p: Peer) -> None:
    sc = p.o["scenario"]
    if sc in UNSUPPORTED:
        raise ScenarioError(f"not supported: {UNSUPPORTED[sc]}")
    ctl = None if sc == "closebusy" else await p.open()
    await ACTIVE[sc](p)
    if ctl is None:
        return
    await ctl.write_line("BYE")
    verdict = await ctl.read_line()
    if verdict != "BYE OK":
        raise ScenarioError(f"the passive side reports: {verdict!r}")
    await finish(ctl)
    await p.muxer.close()  # Go Away 0, then closes the connection


# --------------------------------------------------------------------------- passive


class Passive:
    def __init__(self, p: Peer) -> None:
        self.p = p
        self.handlers: dict[Conn, trio.Event] = {}
        self.bye_seen = self.checked = False
        self.ended = trio.Event()
        self.end_at: float | None = None
        self.busy_ends: list[float] = []

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await self.p.muxer.accept_stream()
                except MuxedConnUnavailable:
                    break
                c = Conn(stream)  # type: ignore[arg-type]
                self.handlers[c] = trio.Event()
                nursery.start_soon(self.serve, c)
            self.end_at = trio.current_time()
            self.ended.set()
            with trio.move_on_after(HANDLER_GRACE):
                for done in list(self.handlers.values()):
                    await done.wait()
            if any(not e.is_set() for e in self.handlers.values()):
                self.p.fail(f"stream handlers still running {HANDLER_GRACE}s after the end")
                nursery.cancel_scope.cancel()
        if not self.bye_seen and self.p.o["scenario"] != "closebusy":
            self.p.fail("the session ended without BYE on the control stream")
        if not self.checked:
            self.check_served()

    async def serve(self, c: Conn) -> None:
        what, cmd = f"stream {c.id}", ""
        try:
            line = await c.read_line()
            what = f"{line} stream {c.id}"
            cmd, *args = line.split(" ")
            if ARITY.get(cmd) != len(args) or not all(a.isdigit() for a in args):
                raise ScenarioError(f"unknown or unsupported command line {line!r}")
            await getattr(self, "cmd_" + cmd.lower().replace("-", "_"))(c, *map(int, args))
            if cmd != "BYE":
                self.p.served[cmd] += 1
        except (ScenarioError, MuxedStreamReset) as exc:
            self.p.fail(f"{what}: {exc}")
            await c.stream.reset()
        finally:
            self.handlers[c].set()

    async def cmd_bye(self, c: Conn) -> None:
        for other, done in list(self.handlers.items()):
            if other is not c:
                await done.wait()
        self.check_served()
        self.bye_seen = self.checked = True
        verdict = "BYE OK"
        if self.p.failures:
            verdict = "BYE FAIL " + "; ".join(self.p.failures).replace("\n", " ")[:200]
        await c.write_line(verdict)
        await c.close_write()

    async def cmd_echo(self, c: Conn, n: int) -> None:
        m = Meter(f"ECHO stream {c.id} echoed", n)
        while m.seen < n:
            data = await c.read(n - m.seen)
            if not data:
                raise ScenarioError(f"echoed {m.seen} of {n} bytes, then EOF")
            await c.write(data)
            m.seen += len(data)
        await c.close_write()

    async def cmd_xfer(self, c: Conn, up: int, down: int) -> None:
        tx, rx = hashlib.sha256(), hashlib.sha256()
        await concurrently(
            lambda: c.write_payload(down, c.id, tx, Meter(f"XFER stream {c.id} sent", down)),
            lambda: c.read_n(up, rx, Meter(f"XFER stream {c.id} received", up)),
        )
        await c.write_line(f"{sha(rx)} {sha(tx)}")
        await c.close_write()

    async def cmd_halfclose(self, c: Conn, n: int) -> None:
        m, rx = await c.read_all(Meter(f"HALFCLOSE stream {c.id} received", -1))
        if m != self.p.o["size"]:
            want = self.p.o["size"]
            raise ScenarioError(f"received {m} bytes before the peer's FIN, want {want}")
        tx = hashlib.sha256()
        await c.write_payload(n, c.id, tx, Meter(f"HALFCLOSE stream {c.id} sent after FIN", n))
        await c.write_line(f"{m} {rx} {sha(tx)}")
        await c.close_write()

    async def cmd_halfclose_rev(self, c: Conn, n: int) -> None:
        await closer(c, self.p.o["size"], n, c.id)

    async def cmd_expect_rst(self, c: Conn) -> None:
        await c.write_line("READY")
        await c.see_reset()

    async def cmd_send_rst(self, c: Conn) -> None:
        await c.stream.reset()

    async def cmd_ping(self, c: Conn, k: int) -> None:
        if k > 1:
            raise ScenarioError(f"PING {k}: py-libp2p has no ping API (one RTT probe only)")
        if k:
            await wait_own_ping(self.p)
        await c.write_line(f"PINGED {k}")
        await c.close_write()

    async def cmd_bigwrite(self, c: Conn, n: int) -> None:
        await c.write_line("READY")
        rx = hashlib.sha256()
        await c.read_n(n, rx, Meter(f"BIGWRITE stream {c.id} received", n))
        await c.write_line(sha(rx))
        buf = big_payload(c.id, n)
        await c.write(buf)  # ONE write call
        await c.write_line(hashlib.sha256(buf).hexdigest())
        await c.close_write()

    async def cmd_hold(self, c: Conn) -> None:
        await c.write_line("READY")
        try:
            data = await c.read(1024)
        except MuxedStreamReset:
            data = b""
        self.busy_ends.append(trio.current_time())
        if data:
            raise ScenarioError(f"HOLD read returned {len(data)} bytes, want the session's end")

    async def cmd_flood(self, c: Conn) -> None:
        await c.write_line("READY")
        pos = 0
        try:
            while True:
                await c.write(payload_chunk(c.id, pos, 65536))
                pos += 65536
        except ScenarioError:
            pass
        self.busy_ends.append(trio.current_time())

    async def cmd_stall(self, c: Conn) -> None:
        await c.write_line("READY")
        await self.ended.wait()
        self.busy_ends.append(trio.current_time())

    def check_served(self) -> None:
        s, o = self.p.served, self.p.o

        def need(cmd: str, n: int, exact: bool = False) -> None:
            if s[cmd] < n or (exact and s[cmd] != n):
                self.p.fail(f"served {s[cmd]} {cmd} streams successfully, want {n}")

        sc = o["scenario"]
        wanted = {
            "echo": [("ECHO", 1)],
            "bulk": [("XFER", 1)],
            "ping": [("PING", 1)],
            "halfclose": [("HALFCLOSE", 1), ("HALFCLOSE-REV", 1)],
            "rst": [("EXPECT-RST", 1), ("SEND-RST", 1), ("ECHO", 1)],
            "bigwindow": [("BIGWRITE", 1)],
        }
        for cmd, n in wanted.get(sc, []):
            need(cmd, n)
        if sc == "parallel":
            need("XFER", o["streams"], exact=True)
        elif sc == "openstorm":
            need("ECHO", o["streams"], exact=True)
        elif sc == "closebusy":
            for cmd in ("HOLD", "FLOOD", "STALL"):
                need(cmd, o["streams"], exact=True)
            end = self.end_at if self.end_at is not None else trio.current_time()
            worst = max((t - end for t in self.busy_ends), default=0.0)
            if worst > BUSY_LIMIT:
                self.p.fail(f"busy operations ended up to {worst:.3f}s after the session ended")
            self.p.note("busy_ops_ended", len(self.busy_ends))
        self.p.note("served", ",".join(f"{k}:{v}" for k, v in sorted(s.items())))


# --------------------------------------------------------------------------- main


async def connect(o: dict[str, Any]) -> trio.SocketStream:
    host, _, port = o["addr"].rpartition(":")
    if o["listen"]:
        listeners = await trio.open_tcp_listeners(int(port), host=host)
        sockname = listeners[0].socket.getsockname()
        print(f"LISTENING {sockname[0]}:{sockname[1]}", flush=True)
        stream = await listeners[0].accept()
        for listener in listeners:
            await listener.aclose()
        return stream
    deadline = trio.current_time() + 10
    while True:
        try:
            return await trio.open_tcp_stream(host, int(port))
        except OSError:
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.05)


async def amain(o: dict[str, Any]) -> Peer:
    sock = await connect(o)
    active = o["role"] == "client"
    muxer = Yamux(PlainConn(sock, active), ID(b"relay-interop"), is_initiator=active)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(muxer.start)
        await muxer.event_started.wait()
        p = Peer(o, muxer, nursery)
        try:
            if active:
                await run_active(p)
            else:
                await Passive(p).run()
        except ScenarioError as exc:
            p.fail(str(exc))
        finally:
            if not muxer.is_closed:
                with trio.move_on_after(o["linger"]):
                    await muxer.close()
            nursery.cancel_scope.cancel()
    return p


def main(argv: list[str]) -> int:
    try:
        o = parse_options(argv)
    except (ValueError, StopIteration) as exc:
        print(exc, file=sys.stderr)
        return 2
    init_pattern(o["seed"])
    start = time.monotonic()
    prefix = f"FAIL {o['scenario']} {o['role']}: "
    try:
        p = trio.run(_with_deadline, o)
    except TimeoutError:
        print(prefix + f"timeout after {o['timeout']}s", file=sys.stderr)
        for m in Meter.unfinished():
            print(prefix + f"pending {m}", file=sys.stderr)
        return 3
    if p.failures:
        for f in p.failures:
            print(prefix + f, file=sys.stderr)
        for m in Meter.unfinished():
            print(prefix + f"unfinished {m}", file=sys.stderr)
        return 1
    details = " ".join(p.details)
    print(
        f"OK {o['scenario']} {o['role']} "
        f"elapsed={time.monotonic() - start:.3f}s {details}".rstrip(),
        flush=True,
    )
    return 0


async def _with_deadline(o: dict[str, Any]) -> Peer:
    with trio.fail_after(o["timeout"]):
        return await amain(o)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
