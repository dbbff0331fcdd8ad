"""Reading and writing a yamux stream the way the scenarios need: exact counts, lines, EOF,
resets, seeded payloads and their digests."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable
from typing import Any

import yamux

from .params import CHUNK, MAX_LINE, PATTERN_LEN, READ_CHUNK, ScenarioError
from .report import Meter

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
