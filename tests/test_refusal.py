"""The refusal line's machine-readable tail (relay/wire/refusal.py, docs/protocol.md 2.5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.wire.greeting import MAX_GREETING
from relay.wire.refusal import KINDS, Refusal, RefusalKind, format_refusal, parse_refusal

PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


@given(PRINTABLE, st.sampled_from(KINDS), st.none() | st.integers(1, 10**9))
def test_round_trip(reason: str, kind: RefusalKind, retry_after: int | None) -> None:
    if kind == "permanent":
        retry_after = None
    line = format_refusal(reason, kind, retry_after)
    assert line.startswith(b"error: ")
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert parse_refusal(line) == Refusal(reason, kind, retry_after)
    # What a client holds after the greeting parser took the prefix off: the same.
    assert parse_refusal(line[len(b"error: ") : -1].decode()) == parse_refusal(line)


@given(st.binary(max_size=2000))
def test_any_line_parses_without_raising(line: bytes) -> None:
    refusal = parse_refusal(line)
    assert refusal.kind in (*KINDS, None)
    assert refusal.retry_after is None or refusal.kind == "retry"


@given(st.text(max_size=3000), st.sampled_from(KINDS))
def test_the_line_is_bounded_and_keeps_its_tail(reason: str, kind: RefusalKind) -> None:
    line = format_refusal(reason, kind)
    assert len(line) <= MAX_GREETING
    assert all(0x20 <= byte <= 0x7E for byte in line[:-1])
    assert parse_refusal(line).kind == kind


def test_the_documented_examples() -> None:
    assert format_refusal("auth failed: wrong secret", "permanent") == (
        b"error: auth failed: wrong secret; refusal=permanent\n"
    )
    assert format_refusal("too many failed registrations", "retry", 41.2) == (
        b"error: too many failed registrations; refusal=retry retry-after=42\n"
    )
    assert format_refusal("bad\nline\x00", "retry") == b"error: bad?line?; refusal=retry\n"
    with pytest.raises(ValueError, match="only a retry"):
        format_refusal("auth failed: wrong secret", "permanent", 5)
    with pytest.raises(ValueError, match="permanent, retry"):
        format_refusal("x", "later")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Older relays and the Go relay: no class; "auth failed" is permanent.
        (b"error: auth failed: wrong secret\n", Refusal("auth failed: wrong secret", None)),
        (
            b"error: no free port in range 5000-5001",
            Refusal("no free port in range 5000-5001", None),
        ),
        # A "; " in the reason that is not a tail stays in the reason.
        (b"error: a; b=c", Refusal("a; b=c", None)),
        (b"error: a; refusal", Refusal("a; refusal", None)),
        (b"error: a; ", Refusal("a; ", None)),
        # Unknown keys after the class are ignored; an unknown class is no class.
        (b"error: x; refusal=retry later=1 retry-after=3", Refusal("x", "retry", 3)),
        (b"error: x; refusal=soon", Refusal("x", None)),
        (b"error: x; refusal=permanent retry-after=3", Refusal("x", "permanent")),
        (b"error: x; refusal=retry retry-after=-1", Refusal("x", "retry")),
        ("x; refusal=retry retry-after=\u00b2", Refusal("x", "retry")),
    ],
)
def test_parse(line: bytes | str, expected: Refusal) -> None:
    assert parse_refusal(line) == expected


@pytest.mark.parametrize(
    ("refusal", "permanent"),
    [
        (Refusal("auth failed: wrong secret", None), True),
        (Refusal("relay is full", None), False),
        (Refusal("auth failed: blocked", "retry"), False),
        (Refusal("port 80 is outside the relay's port range", "permanent"), True),
    ],
)
def test_permanent(refusal: Refusal, permanent: bool) -> None:
    assert refusal.permanent is permanent
