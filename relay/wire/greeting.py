"""The registration greeting: the one line the relay sends before both sides switch to yamux.

Wire format (byte for byte what the Go relay of the same design sends):

* success: the public port in decimal followed by a newline, e.g. ``b"4532\\n"``;
* refusal: ``b"error: <reason>\\n"`` and the relay closes the connection.

The registering side sends nothing before the line; everything after the
newline is already yamux. The relay is the yamux client, the registered side
the yamux server.
"""

from __future__ import annotations

import asyncio
import logging
import re

import yamux

from ..errors import RegistrationError as RegistrationError  # re-exported: old import path
from ..errors import RelayClosedError as RelayClosedError
from ..errors import RelayRefusedError as RelayRefusedError

logger = logging.getLogger("relay.protocol")

MAX_GREETING = 1024
"""Longest greeting line accepted, newline included (a port line is at most 6 bytes)."""
ERROR_PREFIX = b"error: "
_PORT_LINE = re.compile(rb"[0-9]{1,5}")
_MAX_ERROR_TEXT = MAX_GREETING - len(ERROR_PREFIX) - 1


def port_line(port: int) -> bytes:
    """The greeting for a successful registration."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return b"%d\n" % port


def error_line(reason: str) -> bytes:
    """The greeting for a refusal: printable ASCII on one line, bounded in length."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in reason)[:_MAX_ERROR_TEXT]
    return ERROR_PREFIX + text.encode("ascii") + b"\n"


def _excerpt(data: bytes | bytearray) -> str:
    text = repr(bytes(data[:40]))
    return text + ("..." if len(data) > 40 else "")


def parse_greeting(line: bytes) -> int:
    """The port of a greeting line (without its newline); raise RegistrationError otherwise."""
    if line.startswith(ERROR_PREFIX):
        raise RelayRefusedError(line[len(ERROR_PREFIX) :].decode("ascii", "replace"))
    if _PORT_LINE.fullmatch(line):
        port = int(line)
        if 1 <= port <= 65535:
            return port
    got = _excerpt(line + b"\n")
    raise RegistrationError(
        f"expected a port line (decimal digits and a newline), got {got}; is this a relay?"
    )


def _plausible_prefix(data: bytes) -> bool:
    """Could ``data`` (no newline yet) still become a valid greeting?"""
    if data[:1].isdigit():
        return len(data) <= 5 and data.isdigit()
    n = min(len(data), len(ERROR_PREFIX))
    return data[:n] == ERROR_PREFIX[:n]


class GreetingProtocol(asyncio.Protocol):
    """The registering side's protocol until the port line arrives.

    On the newline it switches the transport to a yamux server session at once
    (no byte can slip between the two protocols) and resolves ``result`` with
    ``(session, public_port)``; anything else fails ``result`` with
    RegistrationError and closes the connection.
    """

    def __init__(self, config: yamux.Config | None = None) -> None:
        self._config = config
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.result: asyncio.Future[tuple[yamux.Session, int]] = (
            asyncio.get_running_loop().create_future()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.result.done():
            return
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline < 0:
            if len(self._buffer) >= MAX_GREETING or not _plausible_prefix(bytes(self._buffer)):
                self._fail(
                    RegistrationError(
                        f"expected a port line (decimal digits and a newline), got "
                        f"{_excerpt(self._buffer)}; is this a relay?"
                    )
                )
            return
        line = bytes(self._buffer[:newline])
        rest = bytes(self._buffer[newline + 1 :])
        self._buffer.clear()
        self._line_received(line, rest)

    def _line_received(self, line: bytes, rest: bytes) -> None:
        """A greeting line arrived (``rest``: what followed it); subclasses answer challenges."""
        try:
            port = parse_greeting(line)
        except RegistrationError as exc:
            self._fail(exc)
            return
        self._registered(port, rest)

    def _registered(self, port: int, rest: bytes) -> None:
        assert self.transport is not None
        session = yamux.Session.attach(
            self.transport, client=False, config=self._config, initial_data=rest
        )
        self.result.set_result((session, port))

    def eof_received(self) -> bool:
        self._fail(
            RelayClosedError(
                "the relay closed the connection before sending a port line"
                + (f" (it sent {_excerpt(self._buffer)})" if self._buffer else "")
            )
        )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(RelayClosedError(f"connection to the relay lost before the port line{reason}"))

    def _fail(self, error: RegistrationError) -> None:
        if not self.result.done():
            self.result.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """Drop the connection, and the session if one was attached (e.g. on a timeout)."""
        if self.transport is not None:
            self.transport.abort()
        if not self.result.done():
            self.result.cancel()
