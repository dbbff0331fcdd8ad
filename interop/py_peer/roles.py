"""Per-stream roles of the scenarios, each written once and played by either side.

A half-close has a *closer* (sends, FINs, reads after its own FIN) and a *drainer* (reads to
the FIN, then answers): the active side is the closer in ``HALFCLOSE`` and the passive side
in ``HALFCLOSE-REV``. Likewise both sides may send Go Away or be refused after one, ping k
times, hold a read or write until the session dies, or send one big write.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import yamux

from .params import Params, ScenarioError
from .report import Report
from .streamio import (
    big_payload,
    concurrently,
    expect_eof,
    expect_line,
    payload_chunk,
    read_all,
    read_line,
    read_n,
    sha,
    write_line,
    write_payload,
)


async def transfer(
    stream: yamux.Stream, report: Report, what: str, *, send: int, receive: int, salt: int
) -> tuple[Any, Any]:
    """Send ``send`` pattern bytes while reading exactly ``receive``: (sent, received) digests."""
    p = report.params
    tx, rx = hashlib.sha256(), hashlib.sha256()
    await concurrently(
        write_payload(stream, send, p.seed, salt, tx, report.meter(send, f"{what} sent")),
        read_n(stream, receive, rx, report.meter(receive, f"{what} received")),
    )
    return tx, rx


async def closer(stream: yamux.Stream, report: Report, *, payload: int, n: int, salt: int) -> None:
    """Send payload, FIN, then -- after our own FIN -- read n bytes and the result line; EOF."""
    p = report.params
    what = f"half-close closer stream {stream.id}"
    tx, rx = hashlib.sha256(), hashlib.sha256()
    try:
        await write_payload(
            stream, payload, p.seed, salt, tx, report.meter(payload, f"{what} sent")
        )
        stream.close()
        await read_n(stream, n, rx, report.meter(n, f"{what} received after own FIN"))
        line = await read_line(stream)
        want = f"{payload} {sha(tx)} {sha(rx)}"
        if line != want:
            raise ScenarioError(f"result line {line!r}, want {want!r}")
        await expect_eof(stream)
    except ScenarioError as exc:
        raise ScenarioError(f"{what}: {exc}") from exc


async def drainer(
    stream: yamux.Stream, report: Report, *, n: int, salt: int, expect_m: int
) -> None:
    """Read to the peer's FIN (m bytes), then send n bytes, ``<m> <rx sha> <tx sha>``, FIN."""
    p = report.params
    what = f"half-close drainer stream {stream.id}"
    try:
        m, rx = await read_all(stream, report.meter(-1, f"{what} received"))
        if m != expect_m:
            raise ScenarioError(f"received {m} bytes before the peer's FIN, want {expect_m}")
        tx = hashlib.sha256()
        await write_payload(
            stream, n, p.seed, salt, tx, report.meter(n, f"{what} sent after the peer's FIN")
        )
        write_line(stream, f"{m} {rx} {sha(tx)}")
        stream.close()
    except ScenarioError as exc:
        raise ScenarioError(f"{what}: {exc}") from exc


async def ping_k(session: yamux.Session, params: Params, k: int, whose: str) -> float:
    """k pings one after the other, each answered within the write timeout: the worst RTT."""
    worst = 0.0
    for i in range(k):
        try:
            async with asyncio.timeout(params.write_timeout):
                worst = max(worst, await session.ping())
        except (TimeoutError, yamux.YamuxError) as exc:
            raise ScenarioError(f"{whose} ping {i + 1} of {k}: {exc!r}") from exc
    return worst


async def open_after_goaway(session: yamux.Session) -> str:
    """Try to open a stream after the peer's Go Away: "local", "rst" or "ok" (a failure)."""
    try:
        stream = await session.open_stream()
    except yamux.NoNewStreamsError:
        return "local"
    try:
        async with asyncio.timeout(5):
            await stream.read(1)
    except yamux.StreamResetError:
        return "rst"
    except (TimeoutError, yamux.YamuxError):
        pass
    return "ok"


async def send_goaway(session: yamux.Session, stream: yamux.Stream) -> str:
    """Go Away 0, then ``SENT``; the other side's report must be ``OPEN-REFUSED ...``."""
    session.go_away()
    write_line(stream, "SENT")
    line = await read_line(stream)
    if not line.startswith("OPEN-REFUSED "):
        raise ScenarioError(f"peer reports {line!r} after our go away, want OPEN-REFUSED")
    return line


async def refused_after_goaway(session: yamux.Session, stream: yamux.Stream, report: Report) -> str:
    """After the peer's ``SENT`` (its Go Away came first) our open must fail; report how."""
    await expect_line(stream, "SENT")
    recv = report.tap.recv
    if recv.go_away < 1 or recv.go_away_code != 0 or not session.remote_go_away:
        raise ScenarioError(
            f"got SENT but {recv.go_away} go away frames (last code {recv.go_away_code}), "
            f"session.remote_go_away={session.remote_go_away}"
        )
    how = await open_after_goaway(session)
    write_line(stream, f"OPEN-REFUSED {how}" if how != "ok" else "OPEN-OK")
    if how == "ok":
        raise ScenarioError("could open a stream after the peer's go away")
    return how


async def big_write(stream: yamux.Stream, params: Params, n: int, salt: int) -> str:
    """n pattern bytes in ONE write call (bigwindow), drained: their digest."""
    buf = big_payload(params.seed, salt, n)
    stream.write(buf)
    await stream.drain()
    return hashlib.sha256(buf).hexdigest()


async def read_until_end(stream: yamux.Stream) -> str:
    """HOLD: a read pending until the session dies; how it ended ("EOF" or "error <type>")."""
    try:
        data = await stream.read(1024)
    except (yamux.YamuxError, ConnectionError) as exc:
        return f"error {type(exc).__name__}"
    if data:
        raise ScenarioError(f"HOLD stream {stream.id}: read returned {len(data)} bytes")
    return "EOF"


async def write_until_error(stream: yamux.Stream, params: Params, salt: int) -> str:
    """FLOOD/STALL writer: write until a write fails (blocked once the window is used up)."""
    total = 0
    try:
        while True:
            data = payload_chunk(params.seed, salt, total, 64 << 10)
            stream.write(data)
            total += len(data)
            await stream.drain()
    except (yamux.YamuxError, ConnectionError) as exc:
        return f"error {type(exc).__name__}"
