"""A wire tap between the session and its socket: frames counted per direction.

It mirrors the Go peer's tap (interop/go/yamux-peer/tap.go): frames by type, flags, Data
payload bytes per stream, the largest Data frame, pings, Go Away, window grants. Headers are
parsed with the project's codec (``yamux.frame.parse_header``), never by hand.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yamux.const import HEADER_SIZE, Flag, FrameType
from yamux.errors import ProtocolError
from yamux.frame import parse_header


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
            k = min(HEADER_SIZE - len(self._header), n - i)
            self._header += view[i : i + k]
            i += k
            if len(self._header) < HEADER_SIZE:
                return
            try:
                self._count(*parse_header(self._header))
            except ProtocolError:  # bad version or type: counted, the session reports it
                self.stats.invalid += 1
            self._header.clear()

    def _count(self, type_: FrameType, flags: int, stream_id: int, length: int) -> None:
        s = self.stats
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

    def wrap(self, transport: asyncio.Transport) -> asyncio.Transport:
        """The transport to attach the session to: it counts what goes by either way."""
        return _TapTransport(transport, self)  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"sent: {self.sent}\nrecv: {self.recv}"


class _TapTransport:
    """Delegates to the real transport, counting what the session writes; the protocol
    the session sets gets its bytes through a _TapProtocol, which counts what it reads."""

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

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self._inner.set_protocol(_TapProtocol(protocol, self._tap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TapProtocol(asyncio.Protocol):
    """Sits between the transport and the session's protocol."""

    def __init__(self, inner: asyncio.Protocol, tap: WireTap) -> None:
        self._inner = inner
        self._tap = tap

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
