"""The frame layout: one construct definition, a struct fast path proven equal to it, a decoder.

``HEADER`` is the single definition of the wire format. ``encode_header`` and
``FrameDecoder`` use ``struct`` because they run once per frame on the hot path;
``tests/test_frame.py`` proves with hypothesis that both agree with ``HEADER``
byte for byte and value for value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import construct as c

from .const import HEADER_SIZE, PROTOCOL_VERSION, Flag, FrameType
from .errors import ProtocolError

HEADER = c.Struct(
    "version" / c.Const(PROTOCOL_VERSION, c.Int8ub),
    "type" / c.Enum(c.Int8ub, FrameType),
    "flags" / c.FlagsEnum(c.Int16ub, Flag),
    "stream_id" / c.Int32ub,
    "length" / c.Int32ub,
)
"""version u8 (always 0), type u8, flags u16, stream id u32, length u32; big-endian."""

_HEADER_STRUCT = struct.Struct(">BBHII")
_pack_header = _HEADER_STRUCT.pack
_unpack_header = _HEADER_STRUCT.unpack_from
_TYPES = tuple(FrameType)
_DATA = FrameType.DATA
_DATA_CODE = int(FrameType.DATA)


class Frame(NamedTuple):
    """A decoded frame. ``body`` is non-empty only for Data frames.

    ``flags`` is a plain int (compare with ``Flag`` members): IntFlag arithmetic
    on every frame cost a measurable share of the relay's CPU.
    """

    type: FrameType
    flags: int
    stream_id: int
    length: int
    body: bytes = b""


def encode_header(type_: int, flags: int, stream_id: int, length: int) -> bytes:
    """Pack a header exactly as ``HEADER.build`` would (see the property test)."""
    return _pack_header(PROTOCOL_VERSION, type_, flags, stream_id, length)


def encode_frame(frame: Frame) -> bytes:
    """Header followed by body; for tests and control frames, not the data path."""
    return encode_header(frame.type, frame.flags, frame.stream_id, frame.length) + frame.body


def parse_header(header: bytes | bytearray, offset: int = 0) -> tuple[FrameType, int, int, int]:
    """Validate and unpack one 12-byte header; errors name the field and its value."""
    version, type_, flags, stream_id, length = _unpack_header(header, offset)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"invalid frame header: version={version}, expected {PROTOCOL_VERSION}")
    if type_ >= len(_TYPES):
        raise ProtocolError(f"invalid frame header: type={type_} is not a known frame type")
    return _TYPES[type_], flags, stream_id, length


class FrameDecoder:
    """Turns bytes in any chunking into frames.

    Bodies are copied out of the input once (a slice); a body split across
    chunks is collected in parts and joined once complete.
    """

    __slots__ = ("_body_missing", "_body_parts", "_header_buf", "_max_body", "_pending")

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._header_buf = bytearray()
        self._pending: tuple[FrameType, int, int, int] | None = None
        self._body_parts: list[bytes] = []
        self._body_missing = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._header_buf) + sum(map(len, self._body_parts))

    def lone_data(self, data: bytes) -> int | None:
        """The stream id if ``data`` is exactly one whole Data frame with a body and no
        flags and nothing is buffered before it, else None (then ``feed`` it).

        The frame itself is left to the caller (``data[HEADER_SIZE:]`` is its body):
        the direct path for the common case of one small message per read.
        """
        end = len(data)
        if end <= HEADER_SIZE or self._header_buf or self._pending is not None:
            return None
        fields: tuple[int, int, int, int, int] = _unpack_header(data)
        version, type_, flags, stream_id, length = fields
        if (
            type_ != _DATA_CODE
            or flags
            or version != PROTOCOL_VERSION
            or length != end - HEADER_SIZE
            or length > self._max_body
        ):
            return None
        return stream_id

    def _check_length(self, header: tuple[FrameType, int, int, int]) -> None:
        if header[0] is _DATA and header[3] > self._max_body:
            raise ProtocolError(
                f"invalid frame header: length={header[3]} exceeds the maximum body "
                f"of {self._max_body} bytes (stream {header[2]})"
            )

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Frame]:
        """Yield every frame completed by ``data``; raise ProtocolError at the first bad header.

        Frames before the bad header are yielded first, so nothing already
        received is lost to an error further on.
        """
        if type(data) is not bytes:
            data = bytes(data)
        pos = 0
        end = len(data)
        while pos < end:
            if self._pending is not None:
                take = min(self._body_missing, end - pos)
                self._body_parts.append(data[pos : pos + take])
                pos += take
                self._body_missing -= take
                if self._body_missing:
                    return
                type_, flags, stream_id, length = self._pending
                self._pending = None
                body = b"".join(self._body_parts)
                self._body_parts.clear()
                yield Frame(type_, flags, stream_id, length, body)
                continue
            if self._header_buf or end - pos < HEADER_SIZE:
                take = min(HEADER_SIZE - len(self._header_buf), end - pos)
                self._header_buf += data[pos : pos + take]
                pos += take
                if len(self._header_buf) < HEADER_SIZE:
                    return
                header = parse_header(self._header_buf)
                self._header_buf.clear()
            else:
                header = parse_header(data, pos)
                pos += HEADER_SIZE
            self._check_length(header)
            type_, flags, stream_id, length = header
            if type_ is not _DATA or length == 0:
                yield Frame(type_, flags, stream_id, length)
            elif end - pos >= length:
                yield Frame(type_, flags, stream_id, length, data[pos : pos + length])
                pos += length
            else:
                self._pending = header
                self._body_missing = length
