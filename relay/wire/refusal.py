"""The relay's refusal line and its class (sans-IO; docs/protocol.md 2.5).

A refusal is one line, ``error: <reason>\\n``, as in the seed protocol (the Go
seed forwarder prints it). This relay appends one machine-readable tail that
says whether trying again can help::

    error: port 80 is outside the relay's port range 5000-5099; refusal=permanent
    error: relay is full: 100 sessions, the maximum (--max-sessions 100); refusal=retry
    error: too many failed registrations from 192.0.2.7; refusal=retry retry-after=42

The tail is the text after the line's last ``"; "`` when it is ``key=value``
tokens whose first key is ``refusal``; further keys a reader does not know are
ignored, so a later relay may add some. A line without a tail comes from an
older relay (or the Go one): a client treats it as ``retry``, unless its
reason starts with ``auth failed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, get_args

from .greeting import ERROR_PREFIX, MAX_GREETING
from .v2 import AUTH_FAILED

RefusalKind = Literal["permanent", "retry"]
"""``permanent``: the same configuration cannot succeed (wrong secret, unknown client,
port not allowed, a malformed response); ``retry``: a later try may (relay full,
source blocked for a while, port in use right now)."""
PERMANENT: Final = "permanent"
RETRY: Final = "retry"
KINDS: tuple[RefusalKind, ...] = get_args(RefusalKind)
_KIND_OF: dict[str, RefusalKind] = {kind: kind for kind in KINDS}
TAIL_SEPARATOR = "; "
_TEXT_ROOM = MAX_GREETING - len(ERROR_PREFIX) - 1
"""Characters between ``error: `` and the newline."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal as read off the wire (``parse_refusal``)."""

    reason: str
    """What a person reads: the line without ``error: ``, its tail and its newline."""
    kind: RefusalKind | None
    """None: the line had no class (an older relay)."""
    retry_after: int | None = None
    """Whole seconds the relay asks the client to wait (a ``retry`` only)."""

    @property
    def permanent(self) -> bool:
        """Whether the same configuration can never succeed: the class, or for a line
        without one, an authentication refusal of an older relay."""
        if self.kind is None:
            return self.reason.startswith(AUTH_FAILED)
        return self.kind == PERMANENT


def format_refusal(reason: str, kind: RefusalKind, retry_after: float | None = None) -> bytes:
    """The whole line: printable ASCII, at most ``MAX_GREETING`` bytes with its newline.

    ``retry_after`` (``retry`` only) is rounded up to whole seconds, at least 1. A reason
    too long for the line is cut, never the tail.
    """
    if kind not in KINDS:
        raise ValueError(f"a refusal is one of {', '.join(KINDS)}, not {kind!r}")
    tail = f"{TAIL_SEPARATOR}refusal={kind}"
    if retry_after is not None:
        if kind != RETRY:
            raise ValueError("only a retry refusal carries retry-after")
        tail += f" retry-after={max(1, math.ceil(retry_after))}"
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in reason)
    return ERROR_PREFIX + (text[: _TEXT_ROOM - len(tail)] + tail).encode("ascii") + b"\n"


def parse_refusal(line: bytes | str) -> Refusal:
    """The refusal in an error line, with or without its ``error: `` prefix and newline
    (so ``RelayRefusedError.reason`` will do). Never raises: a tail it cannot read is
    part of the reason."""
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    prefix = ERROR_PREFIX.decode("ascii")
    if text.startswith(prefix):
        text = text[len(prefix) :]
    head, separator, tail = text.rpartition(TAIL_SEPARATOR)
    if not separator:
        return Refusal(text, None)
    fields: dict[str, str] = {}
    for token in tail.split(" "):
        key, equals, value = token.partition("=")
        if not key or not equals:
            return Refusal(text, None)
        fields.setdefault(key, value)
    if next(iter(fields)) != "refusal":
        return Refusal(text, None)
    kind = _KIND_OF.get(fields["refusal"])
    seconds = fields.get("retry-after", "")
    retry_after = int(seconds) if seconds.isascii() and seconds.isdigit() else None
    return Refusal(head, kind, retry_after if kind == RETRY else None)
