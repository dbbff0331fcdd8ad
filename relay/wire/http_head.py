"""The host an HTTP/1.x request is for, read from its head as it arrives (sans-IO).

A connection on the relay's HTTP port goes to the service its first request
names: the authority of an absolute-form target (``GET http://blog.../``),
else the one ``Host`` header (RFC 9112 3.2). ``HostReader.feed`` takes the
bytes in any pieces and returns the host once the head is complete, ``None``
while it needs more; a head it cannot route raises ``HeadError`` with the
status to answer: 400 (malformed, no host, several Host headers, not HTTP/1.x)
or 431 (no end of head within ``MAX_HEAD`` bytes). The bytes themselves are
not changed or consumed: the relay passes them all on to the service.

Later requests on the same connection (keep-alive) go to the same service,
whatever their Host says: the relay routes connections, not requests.
"""

from __future__ import annotations

import html
import re

from ..errors import RelayError
from .hostname import normal_host

MAX_HEAD = 16 * 1024
"""Bytes of a request head at most, up to and including its empty line."""
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_HTTP1 = re.compile(rb"HTTP/1\.[0-9]")
_ABSOLUTE = re.compile(rb"https?://([^/?#]*)", re.I)
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_WHOLE_HEAD = re.compile(
    rb"(?P<method>" + _TCHAR + rb"+) (?P<target>[\x21-\x7e]+) HTTP/1\.[0-9]\r\n"
    rb"(?:" + _TCHAR + rb"+:[^\r\n]*\r\n)*\r\n"
)
"""A plain head in one piece, every line ending in CRLF: the common case, checked at once."""
_HOST_LINE = re.compile(rb"^host:([^\r\n]*)\r$", re.I | re.M)
REASONS = {
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HeadError(RelayError, ValueError):
    """A request head the relay cannot route; ``status`` is the HTTP answer, ``str()`` why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _bad(reason: str) -> HeadError:
    return HeadError(400, reason)


def host_of_authority(authority: bytes, where: str) -> str:
    """The host of ``host[:port]`` (a Host header, or the authority of a target)."""
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        raise _bad(f"{where} is not ASCII") from None
    text = text.rpartition("@")[2]  # userinfo, allowed in an absolute-form target
    if not text:
        raise _bad(f"{where} is empty: no name to route by")
    if text.startswith("["):
        raise _bad(f"{where} {text[:64]!r} is an address, not a name to route by")
    host, colon, port = text.rpartition(":")
    if not colon:
        host = text
    elif not port.isdigit() and port:
        raise _bad(f"{where} {text[:64]!r} has a bad port")
    try:
        return normal_host(host)
    except ValueError as exc:
        raise _bad(f"{where} {text[:64]!r}: {exc}") from None


class HostReader:
    """Reads one request head, in pieces, until it knows the host (``feed``)."""

    def __init__(self) -> None:
        self._partial = bytearray()
        """The line being received, without its newline."""
        self._offset = 0
        """Bytes of the complete lines so far."""
        self._started = False
        """The request line was read."""
        self._target_host: str | None = None
        self._hosts: list[bytes] = []
        """Host header values (at most two: two are an error already)."""
        self.host: str | None = None
        """Set once the head is complete."""

    def feed(self, data: bytes) -> str | None:
        """The host once the head is complete, else None; HeadError if it cannot be routed.

        The same bytes give the same answer however they are split."""
        if self.host is not None:
            return self.host
        if not self._offset and not self._partial:
            end = data.find(b"\r\n\r\n")
            if 0 <= end <= MAX_HEAD - 4 and _WHOLE_HEAD.fullmatch(data, 0, end + 4):
                self.host = self._whole(data[: end + 4])
                return self.host
        if self._partial:
            if b"\n" not in data:  # a line in many pieces: no copy of the whole per piece
                if self._offset + len(self._partial) + len(data) > MAX_HEAD:
                    raise self._too_large()
                self._partial += data
                return None
            data = bytes(self._partial) + data
            self._partial.clear()
        # Only the first MAX_HEAD bytes of the head matter: a line that ends later is a 431.
        lines = data[: MAX_HEAD + 1 - self._offset].split(b"\n")
        rest = lines.pop()
        offset = self._offset
        for line in lines:
            offset += len(line) + 1
            if offset > MAX_HEAD:
                raise self._too_large()
            if self._line(line[:-1] if line.endswith(b"\r") else line):
                return self.host
        if offset + len(rest) > MAX_HEAD:
            raise self._too_large()
        self._offset = offset
        self._partial += rest
        return None

    def _whole(self, head: bytes) -> str:
        """The host of a head ``_WHOLE_HEAD`` matched: what the line by line reading says
        of it, in a few calls."""
        target = head[: head.index(b"\r\n")].split(b" ")[1]
        absolute = _ABSOLUTE.match(target)
        if absolute is not None:
            self._target_host = host_of_authority(absolute.group(1), "the request target")
        self._hosts = [value.strip(b" \t") for value in _HOST_LINE.findall(head)]
        if len(self._hosts) > 1:
            raise _bad("more than one Host header")
        return self._decide()

    def _too_large(self) -> HeadError:
        return HeadError(431, f"the request head is longer than {MAX_HEAD} bytes")

    def _line(self, line: bytes) -> bool:
        """Take one line of the head; True once the head is complete (``host`` is set)."""
        if not self._started:
            if line:  # empty lines before the request line are ignored (RFC 9112 2.2)
                self._request_line(line)
            return False
        if not line:
            self.host = self._decide()
            return True
        if line[:1] in (b" ", b"\t"):
            raise _bad("a header line is folded (obsolete line folding)")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _bad(f"malformed header line {line[:40]!r}")
        if name.lower() == b"host":
            self._hosts.append(value.strip(b" \t"))
            if len(self._hosts) > 1:
                raise _bad("more than one Host header")
        return False

    def _request_line(self, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
            raise _bad(f"not an HTTP request line: {line[:40]!r}")
        if not _HTTP1.fullmatch(parts[2]):
            raise _bad(
                f"{parts[2][:16].decode('ascii', 'replace')!r} is not HTTP/1.x (HTTP/2 and "
                f"later reach a service by name through the TLS port)"
            )
        absolute = _ABSOLUTE.match(parts[1])
        if absolute is not None:
            self._target_host = host_of_authority(absolute.group(1), "the request target")
        self._started = True

    def _decide(self) -> str:
        if self._target_host is not None:  # RFC 9112 3.2.2: the target's authority wins
            return self._target_host
        if not self._hosts:
            raise _bad("the request has no Host header: no name to route by")
        return host_of_authority(self._hosts[0], "the Host header")


def error_response(status: int, detail: str, relay: str) -> bytes:
    """A complete HTTP/1.1 answer with a small page from the relay (named ``relay``), for
    a request that reaches no service; the relay closes the connection after it."""
    reason = REASONS[status]
    body = (
        f"<!doctype html>\n<title>{status} {reason}</title>\n<h1>{status} {reason}</h1>\n"
        f"<p>{html.escape(detail)}</p>\n<hr><p>relay at {html.escape(relay)}</p>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nServer: relay\r\n"
        f"Content-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
