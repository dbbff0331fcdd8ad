"""The frame codec: the struct fast path against the construct definition, and the decoder.

``HEADER`` (construct) is the single definition of the wire layout; ``encode_header``
and ``parse_header`` are hand-written ``struct`` code. These properties prove the
two agree, and that ``FrameDecoder`` turns any chunking of a byte stream into the
same frames and fails only with ProtocolError.
"""

from __future__ import annotations

import construct as c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import yamux
from yamux import ProtocolError
from yamux.const import HEADER_SIZE, Flag, FrameType
from yamux.frame import HEADER, Frame, FrameDecoder, encode_frame, encode_header, parse_header

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BODY = 4096
PATTERN = bytes(range(256)) * (MAX_BODY // 256 + 1)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
frame_types = st.sampled_from(list(FrameType))
known_flags = st.integers(0, 0xF)


@st.composite
def frames(draw: st.DrawFn, max_body: int = MAX_BODY) -> Frame:
    """Any frame the protocol allows: Data carries a body of ``length`` bytes, others none."""
    type_ = draw(frame_types)
    flags = Flag(draw(u16))
    stream_id = draw(u32)
    if type_ is FrameType.DATA:
        body = draw(
            st.one_of(
                st.binary(max_size=min(max_body, 64)),
                st.builds(
                    lambda n, start: PATTERN[start : start + n],
                    st.integers(0, max_body),
                    st.integers(0, 255),
                ),
            )
        )
        return Frame(type_, flags, stream_id, len(body), body)
    return Frame(type_, flags, stream_id, draw(u32))


frame_lists = st.lists(frames(), max_size=12)


def encode_all(items: list[Frame]) -> bytes:
    return b"".join(encode_frame(f) for f in items)


def decode_chunks(chunks: list[bytes], max_body: int = MAX_BODY) -> list[Frame]:
    decoder = FrameDecoder(max_body)
    out: list[Frame] = []
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            out.append(frame)
    assert decoder.buffered == 0
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


# --------------------------------------------------------------- header codec
@SETTINGS
@given(type_=frame_types, flags=u16, stream_id=u32, length=u32)
def test_encode_header_equals_construct_build(
    type_: FrameType, flags: int, stream_id: int, length: int
) -> None:
    """The struct fast path writes exactly the bytes the construct definition builds."""
    built = HEADER.build(
        {"version": 0, "type": int(type_), "flags": flags, "stream_id": stream_id, "length": length}
    )
    encoded = encode_header(type_, flags, stream_id, length)
    assert encoded == built
    assert len(encoded) == HEADER_SIZE


@SETTINGS
@given(type_=frame_types, flags=known_flags, stream_id=u32, length=u32)
def test_parse_header_equals_construct_parse(
    type_: FrameType, flags: int, stream_id: int, length: int
) -> None:
    """parse_header reads every valid header as construct's HEADER.parse does."""
    raw = HEADER.build(
        {
            "type": type_.name,
            "flags": {f.name: bool(flags & f) for f in Flag if f},
            "stream_id": stream_id,
            "length": length,
        }
    )
    parsed = HEADER.parse(raw)
    got_type, got_flags, got_id, got_length = parse_header(raw)
    assert got_type is type_
    assert int(parsed.type) == got_type
    assert str(parsed.type) == got_type.name
    for flag in (Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST):
        assert parsed.flags[flag.name] == bool(got_flags & flag)
    assert int(got_flags) == flags
    assert (got_id, got_length) == (parsed.stream_id, parsed.length) == (stream_id, length)


@SETTINGS
@given(type_=frame_types, flags=u16, stream_id=u32, length=u32, prefix=st.binary(max_size=20))
def test_parse_header_round_trips_encode_header_at_any_offset(
    type_: FrameType, flags: int, stream_id: int, length: int, prefix: bytes
) -> None:
    """All 16 flag bits survive (unknown ones too), wherever the header starts."""
    raw = prefix + encode_header(type_, flags, stream_id, length)
    assert parse_header(raw, len(prefix)) == (type_, flags, stream_id, length)


def test_known_header_bytes() -> None:
    """One fixed vector: the layout is big-endian version, type, flags, id, length."""
    raw = encode_header(FrameType.WINDOW_UPDATE, Flag.ACK | Flag.RST, 1234, 4321)
    assert raw == bytes.fromhex("00 01 000a 000004d2 000010e1")
    assert parse_header(raw) == (FrameType.WINDOW_UPDATE, Flag.ACK | Flag.RST, 1234, 4321)


def test_protocol_constants_match_the_spec() -> None:
    assert [int(t) for t in FrameType] == [0, 1, 2, 3]
    assert (Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST) == (1, 2, 4, 8)
    assert [int(c) for c in yamux.GoAwayCode] == [0, 1, 2]
    assert HEADER_SIZE == 12
    assert HEADER.sizeof() == HEADER_SIZE


# -------------------------------------------------------------------- decoder
@SETTINGS
@given(items=frame_lists)
def test_decoder_round_trips_any_sequence_of_frames(items: list[Frame]) -> None:
    """Many frames in one chunk come out as they went in, bodies included."""
    assert decode_chunks([encode_all(items)]) == items


@SETTINGS
@given(
    items=frame_lists,
    cuts=st.lists(st.integers(0, 12 * (MAX_BODY + 12)), max_size=30),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_decoder_handles_any_split(items: list[Frame], cuts: list[int], kind: type) -> None:
    """Split anywhere (inside headers, inside bodies, across frames): the same frames."""
    chunks = split_at(encode_all(items), cuts)
    assert decode_chunks([kind(c) for c in chunks]) == items


@SETTINGS
@given(items=st.lists(frames(max_body=200), max_size=6))
def test_decoder_one_byte_at_a_time(items: list[Frame]) -> None:
    data = encode_all(items)
    assert decode_chunks([data[i : i + 1] for i in range(len(data))]) == items


def construct_header(chunk: bytes) -> c.Container | None:
    """The header at the start of ``chunk`` as HEADER parses it, with ``flags`` as the
    whole 16-bit field (unknown bits too); None if HEADER rejects it."""
    try:
        header = HEADER.parse(chunk[:HEADER_SIZE])
    except c.ConstructError:
        return None
    offset = sum(field.sizeof() for field in HEADER.subcons[:2])
    flags_field = HEADER.subcons[2]
    assert flags_field.name == "flags"
    header.flags = flags_field.subcon.subcon.parse(chunk[offset:])  # the FlagsEnum's integer
    return header


plain_data_frames = st.builds(
    lambda stream_id, body: Frame(FrameType.DATA, 0, stream_id, len(body), body),
    u32,
    st.binary(max_size=MAX_BODY + 1),
)
"""Data frames without flags, the direct path's case (a body of 0 or MAX_BODY + 1 is not)."""


@SETTINGS
@given(
    items=st.lists(st.one_of(frames(), plain_data_frames), min_size=1, max_size=3),
    garbage=st.binary(max_size=20),
    held=st.binary(max_size=30),
)
def test_lone_data_is_exactly_one_data_frame_as_construct_reads_it(
    items: list[Frame], garbage: bytes, held: bytes
) -> None:
    """``lone_data`` says "one whole Data frame, no flags, with a body" exactly when
    construct's HEADER parses the chunk so, with nothing before or after it and nothing
    held; the frame it stands for is what ``feed`` yields."""
    for chunk in (encode_all(items), encode_all(items) + garbage, garbage):
        decoder = FrameDecoder(MAX_BODY)
        got = decoder.lone_data(chunk)
        expected = None
        header = construct_header(chunk)
        if (
            header is not None
            and header.type == FrameType.DATA.name
            and header.flags == 0
            and 0 < header.length == len(chunk) - HEADER_SIZE <= MAX_BODY
        ):
            expected = header.stream_id
        assert got == expected
        if got is not None:
            assert list(decoder.feed(chunk)) == [
                Frame(FrameType.DATA, 0, got, len(chunk) - HEADER_SIZE, chunk[HEADER_SIZE:])
            ]
        busy = FrameDecoder(MAX_BODY)
        list(busy.feed(held[: HEADER_SIZE - 1]))  # a partial header is held
        if busy.buffered:
            assert busy.lone_data(chunk) is None


def test_decoder_buffered_counts_incomplete_frame() -> None:
    decoder = FrameDecoder(MAX_BODY)
    data = encode_frame(Frame(FrameType.DATA, Flag.NONE, 3, 10, b"0123456789"))
    assert list(decoder.feed(data[:5])) == []
    assert decoder.buffered == 5
    assert list(decoder.feed(data[5:15])) == []
    assert decoder.buffered == 3
    assert list(decoder.feed(data[15:])) == [Frame(FrameType.DATA, Flag.NONE, 3, 10, b"0123456789")]
    assert decoder.buffered == 0


def test_body_of_exactly_the_maximum_is_accepted_and_non_data_length_is_unbounded() -> None:
    """Only Data bodies are bounded; a window update may carry any 32-bit delta."""
    body = bytes(MAX_BODY)
    items = [
        Frame(FrameType.DATA, Flag.SYN, 1, MAX_BODY, body),
        Frame(FrameType.WINDOW_UPDATE, Flag.NONE, 1, 0xFFFFFFFF),
        Frame(FrameType.PING, Flag.SYN, 0, 0xFFFFFFFF),
        Frame(FrameType.GO_AWAY, Flag.NONE, 0, 7),
    ]
    assert decode_chunks([encode_all(items)]) == items


@SETTINGS
@given(chunks=st.lists(st.binary(min_size=1, max_size=64), max_size=20))
def test_random_garbage_raises_only_protocol_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(32)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, Frame)
                if frame.type is FrameType.DATA:
                    assert len(frame.body) == frame.length <= 32
    except ProtocolError:
        pass


def bad_header(kind: str, value: int) -> bytes:
    if kind == "version":
        return bytes([value]) + encode_header(FrameType.DATA, 0, 1, 0)[1:]
    if kind == "type":
        return bytes([0, value]) + encode_header(FrameType.DATA, 0, 1, 0)[2:]
    return encode_header(FrameType.DATA, 0, 1, value)


bad_fields = st.one_of(
    st.tuples(st.just("version"), st.integers(1, 255)),
    st.tuples(st.just("type"), st.integers(4, 255)),
    st.tuples(st.just("length"), st.integers(MAX_BODY + 1, 0xFFFFFFFF)),
)


@SETTINGS
@given(field=bad_fields)
def test_bad_header_error_names_field_and_value(field: tuple[str, int]) -> None:
    name, value = field
    with pytest.raises(ProtocolError, match=rf"\b{name}={value}\b"):
        list(FrameDecoder(MAX_BODY).feed(bad_header(name, value)))
    if name != "length":  # the body limit belongs to the decoder, not the header
        with pytest.raises(ProtocolError, match=rf"\b{name}={value}\b"):
            parse_header(bad_header(name, value))


@pytest.mark.parametrize(("name", "value"), [("version", 1), ("type", 4), ("length", MAX_BODY + 1)])
def test_bad_header_errors_fixed_examples(name: str, value: int) -> None:
    with pytest.raises(ProtocolError, match=rf"{name}={value}\b"):
        list(FrameDecoder(MAX_BODY).feed(bad_header(name, value)))


@SETTINGS
@given(
    items=frame_lists,
    field=bad_fields,
    cuts=st.lists(st.integers(0, 12 * (MAX_BODY + 12)), max_size=8),
    trailing=st.binary(max_size=40),
)
def test_frames_before_a_bad_header_are_still_yielded(
    items: list[Frame], field: tuple[str, int], cuts: list[int], trailing: bytes
) -> None:
    """Everything complete before the bad header comes out, in whatever chunking."""
    data = encode_all(items) + bad_header(*field) + trailing
    decoder = FrameDecoder(MAX_BODY)
    got: list[Frame] = []
    with pytest.raises(ProtocolError, match=rf"\b{field[0]}={field[1]}\b"):
        feed_into(decoder, split_at(data, cuts), got)
    assert got == items


def feed_into(decoder: FrameDecoder, chunks: list[bytes], out: list[Frame]) -> None:
    """Collect frames as they are yielded, so those before an error are kept."""
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            out.append(frame)
