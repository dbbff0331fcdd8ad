"""Secrets: how strong one is, reading one from a file, making one.

A secret proves a client to the relay (an HMAC, docs/protocol.md 2.4); a
recorded exchange lets anyone try guesses offline, as fast as they can compute
HMACs, so a secret must be out of reach of an exhaustive search: at least
``MIN_SECRET_BITS``. How many bits a given string holds cannot be known; the
estimate is an upper bound for a random string and is meant to be
conservative:

* the smallest usual alphabet that holds every character gives the bits per
  character: digits 3.3, hex 4, lowercase letters 4.7, letters and digits 5.95,
  base64 (``+/`` or ``-_``, ``=`` padding not counted) 6, printable ASCII 6.6;
  bytes that are not printable UTF-8 text 8 per byte;
* characters that repeat what came before count for nothing: a stretch of
  ``REPEAT`` or more characters seen earlier (``passwordpassword``), the same
  character again and again, and counting up or down (``abcdefgh``,
  ``12345678``), each cost one character.

So ``openssl rand -hex 16`` (32 hex digits) holds 128 bits and passes, and
``password``, ``passwordpassword`` and short hex do not. A phrase of words
is overrated by this estimate (words are not random letters): make secrets
with ``relay gen-secret`` or ``openssl rand -hex 32`` (256 bits).
"""

from __future__ import annotations

import math
import os
import secrets
import string
from pathlib import Path

from ..errors import RelayError

MIN_SECRET_BITS = 128
"""Weaker secrets are refused: a recorded exchange lets anyone guess them offline."""
GENERATED_BYTES = 32
"""``relay gen-secret``: 256 bits, as 64 hex digits."""
MAKE_ONE = "make one with `relay gen-secret` (or `openssl rand -hex 32`)"
REPEAT = 8
"""A repeated stretch this long counts as one character (a random string of 32 hex
digits has one with a chance of about 1 in 10 million)."""
EXAMINED = 256
"""Characters the estimate looks at (256 random digits are 850 bits)."""

_ALPHABETS: tuple[tuple[frozenset[str], int], ...] = tuple(
    (frozenset(chars), len(set(chars)))
    for chars in (
        string.digits,
        string.digits + "abcdef",
        string.digits + "ABCDEF",
        string.ascii_lowercase,
        string.ascii_uppercase,
        string.ascii_lowercase + string.digits,
        string.ascii_uppercase + string.digits,
        string.ascii_letters,
        string.ascii_letters + string.digits,
        string.ascii_letters + string.digits + "+/",
        string.ascii_letters + string.digits + "-_",
    )
)
_BASE64_PADDED = frozenset(string.ascii_letters + string.digits + "+/=")
_PRINTABLE = 95
"""Printable ASCII, space included: the alphabet of any other text."""


class SecretError(RelayError, ValueError):
    """A secret that cannot be used: too weak, or its file unreadable."""


def _alphabet_size(text: str) -> int:
    used = set(text)
    return next((size for chars, size in _ALPHABETS if used <= chars), _PRINTABLE)


def _repeat_at(text: str, i: int) -> int:
    """How long the stretch from ``i`` repeats an earlier one (which may overlap it, as
    in LZ77), if at least ``REPEAT``; else 0."""
    if i + REPEAT > len(text):
        return 0
    earlier = text.find(text[i : i + REPEAT], 0, i + REPEAT - 1)
    if earlier < 0:
        return 0
    length = REPEAT
    while i + length < len(text) and text[earlier + length] == text[i + length]:
        length += 1
    return length


def _run_at(text: str, i: int) -> int:
    """How many characters from ``i`` repeat one character or count up or down by one."""
    if i + 1 >= len(text):
        return 1
    step = ord(text[i + 1]) - ord(text[i])
    if abs(step) > 1:
        return 1
    end = i + 1
    while end < len(text) and ord(text[end]) - ord(text[end - 1]) == step:
        end += 1
    return end - i


def _new_characters(text: str) -> int:
    """The characters that count: each repeated stretch or run counts as one."""
    count = i = 0
    while i < len(text):
        count += 1
        skipped = max(_repeat_at(text, i), _run_at(text, i))
        i += skipped if skipped >= REPEAT else 1
    return count


def _text(secret: bytes) -> str | None:
    """Bytes that are printable UTF-8 text as that text; None for other bytes (random ones)."""
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def estimate_bits(secret: str | bytes) -> float:
    """How many bits of guessing ``secret`` holds, at most (see the module's rules)."""
    if isinstance(secret, str):
        text = secret
    else:
        as_text = _text(secret)
        if as_text is None:
            return 8.0 * _new_characters(secret[:EXAMINED].decode("latin-1"))
        text = as_text
    text = text[:EXAMINED]
    if set(text) <= _BASE64_PADDED:
        text = text.rstrip("=")
    return _new_characters(text) * math.log2(_alphabet_size(text))


def check_secret(secret: str | bytes) -> bytes:
    """The secret's bytes; SecretError if it is weaker than ``MIN_SECRET_BITS``."""
    data = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    bits = estimate_bits(secret)
    if bits < MIN_SECRET_BITS:
        raise SecretError(
            f"too weak: about {bits:.0f} bits (estimated from its length and characters), "
            f"a secret needs at least {MIN_SECRET_BITS}: {MAKE_ONE}"
        )
    return data


def read_secret_file(path: str | Path) -> bytes:
    """A secret from a file: its content without the trailing newline."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        return check_secret(text.rstrip(b"\r\n"))
    except SecretError as exc:
        raise SecretError(f"secret file {path}: {exc}") from None


def generate_secret() -> str:
    """A new secret of ``GENERATED_BYTES`` random bytes, as hex (``openssl rand -hex 32``)."""
    return secrets.token_hex(GENERATED_BYTES)


def write_secret_file(path: str | Path, secret: str) -> None:
    """Write ``secret`` and a newline to a new file only its owner may read (0600).

    Never overwrites: a secret file replaced by mistake locks its clients out.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.encode("ascii") + b"\n")
    finally:
        os.close(fd)
