"""The server name (SNI) of a TLS ClientHello, read as it arrives (sans-IO).

A connection on the relay's TLS port goes to the service named in the
``server_name`` extension (RFC 6066 3) of its ClientHello. The relay never
terminates TLS: it reads the records of the first handshake message, however
they are split into records (RFC 8446 5.1 lets a ClientHello span several)
and reads, takes the name, and passes every byte on unchanged.

``ServerNameReader.feed`` returns the name once the ClientHello is complete,
``None`` while it needs more; otherwise it raises ``ClientHelloError`` with
the alert to send: ``decode_error`` for what is not a well-formed ClientHello
of at most ``MAX_CLIENT_HELLO`` bytes, ``unrecognized_name`` for one without a
usable host name. ``alert_record`` makes the fatal alert record.
"""

from __future__ import annotations

import struct

from ..errors import RelayError
from .hostname import normal_host

MAX_CLIENT_HELLO = 16 * 1024
"""Bytes of a ClientHello at most (its handshake header included); a real one is under 2 KiB,
a post-quantum key share included."""
MAX_RECORD = 1 << 14
"""The largest plaintext record fragment (RFC 8446 5.1)."""
RECORD_HANDSHAKE = 22
RECORD_ALERT = 21
HANDSHAKE_CLIENT_HELLO = 1
EXTENSION_SERVER_NAME = 0
NAME_TYPE_HOST = 0
ALERT_DECODE_ERROR = 50
ALERT_INTERNAL_ERROR = 80
ALERT_UNRECOGNIZED_NAME = 112
_RECORD = struct.Struct("!BHH")
_EXTENSION = struct.Struct("!HH")


class ClientHelloError(RelayError, ValueError):
    """A first flight the relay cannot route; ``alert`` is the TLS alert to answer with."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert


def _malformed(reason: str) -> ClientHelloError:
    return ClientHelloError(ALERT_DECODE_ERROR, reason)


def alert_record(alert: int) -> bytes:
    """A fatal alert (level 2) in a plaintext TLS record, as a server sends before any key."""
    return _RECORD.pack(RECORD_ALERT, 0x0303, 2) + bytes((2, alert))


class ServerNameReader:
    """Reads TLS records until the ClientHello is complete (``feed``)."""

    def __init__(self) -> None:
        self._records = bytearray()
        """Received bytes not yet taken as whole records."""
        self._handshake = bytearray()
        """The fragments of the first handshake message so far."""
        self.server_name: str | None = None

    def feed(self, data: bytes) -> str | None:
        """The server name once the ClientHello is complete, else None; ClientHelloError if
        it cannot be routed. The same bytes give the same answer however they are split."""
        if self.server_name is not None:
            return self.server_name
        self._records += data
        while len(self._records) >= _RECORD.size:
            kind, version, length = _RECORD.unpack_from(self._records)
            if kind != RECORD_HANDSHAKE:
                raise _malformed(f"the first record is of type {kind}, not a handshake: not TLS")
            if version >> 8 != 3:
                raise _malformed(f"record version {version:#06x} is not TLS")
            if not 0 < length <= MAX_RECORD:
                raise _malformed(f"a handshake record of {length} bytes")
            if len(self._records) < _RECORD.size + length:
                return None
            fragment = self._records[_RECORD.size : _RECORD.size + length]
            del self._records[: _RECORD.size + length]
            self._handshake += fragment
            name = self._client_hello()
            if name is not None:
                self.server_name = name
                return name
        return None

    def _client_hello(self) -> str | None:
        """The server name if the ClientHello is complete in ``_handshake``, else None."""
        if len(self._handshake) < 4:
            return None
        if self._handshake[0] != HANDSHAKE_CLIENT_HELLO:
            raise _malformed(f"the first handshake message is of type {self._handshake[0]}")
        length = int.from_bytes(self._handshake[1:4], "big")
        if 4 + length > MAX_CLIENT_HELLO:
            raise _malformed(f"a ClientHello of {length} bytes (at most {MAX_CLIENT_HELLO})")
        if len(self._handshake) < 4 + length:
            return None
        return server_name(bytes(self._handshake[4 : 4 + length]))


def _length(data: bytes, at: int, size: int, what: str) -> tuple[int, int]:
    """The ``size``-byte length at ``at`` and where its vector starts; the vector must fit."""
    start = at + size
    if start > len(data):
        raise _malformed(f"the ClientHello ends inside its {what}")
    length = int.from_bytes(data[at:start], "big")
    if start + length > len(data):
        raise _malformed(f"the ClientHello ends inside its {what}")
    return length, start


def server_name(body: bytes) -> str:
    """The host name of a ClientHello body (RFC 8446 4.1.2, RFC 6066 3).

    Plain index arithmetic: this runs once for every connection on the TLS port."""
    length, at = _length(body, 2 + 32, 1, "session id")
    if length > 32:
        raise _malformed("a session id longer than 32 bytes")
    length, at = _length(body, at + length, 2, "cipher suites")
    if not length or length % 2:
        raise _malformed("malformed cipher suites")
    length, at = _length(body, at + length, 1, "compression methods")
    if not length:
        raise _malformed("no compression method")
    at += length
    if at == len(body):
        raise ClientHelloError(ALERT_UNRECOGNIZED_NAME, "the ClientHello has no extensions (SNI)")
    length, at = _length(body, at, 2, "extensions")
    end = at + length
    if end != len(body):
        raise _malformed("bytes after the extensions")
    seen: set[int] = set()
    found: bytes | None = None
    while at < end:
        if at + 4 > end:
            raise _malformed("the ClientHello ends inside an extension")
        kind, length = _EXTENSION.unpack_from(body, at)
        at += 4
        if at + length > end:
            raise _malformed("the ClientHello ends inside an extension")
        if kind in seen:
            raise _malformed(f"extension {kind} twice")
        seen.add(kind)
        if kind == EXTENSION_SERVER_NAME:
            found = _host_name(body[at : at + length])
        at += length
    if found is None:
        raise ClientHelloError(
            ALERT_UNRECOGNIZED_NAME, "the ClientHello names no server (no SNI): no name to route by"
        )
    try:
        return normal_host(found.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ClientHelloError(
            ALERT_UNRECOGNIZED_NAME, f"the server name {found[:64]!r} is not a host name: {exc}"
        ) from None


def _host_name(extension: bytes) -> bytes:
    """The host_name of a server_name extension's ServerNameList."""
    length, at = _length(extension, 0, 2, "server name list")
    if at + length != len(extension) or not length:
        raise _malformed("malformed server name list")
    host: bytes | None = None
    while at < len(extension):
        kind = extension[at]
        length, at = _length(extension, at + 1, 2, "server name")
        if kind == NAME_TYPE_HOST:
            if host is not None or not length:
                raise _malformed("a server name list with two or empty host names")
            host = extension[at : at + length]
        at += length
    if host is None:
        raise ClientHelloError(ALERT_UNRECOGNIZED_NAME, "the server name list has no host name")
    return host
