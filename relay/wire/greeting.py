"""The registration greeting: the one line the relay sends before both sides switch to yamux.

Wire format (byte for byte what the Go relay of the same design sends):

* success: the public port in decimal followed by a newline, e.g. ``b"4532\\n"``;
* refusal: ``b"error: <reason>\\n"`` and the relay closes the connection (the
  reason ends with its class: ``relay.wire.refusal``).

The registering side sends nothing before the line; everything after the
newline is already yamux. The relay is the yamux client, the registered side
the yamux server (``relay.client.registering`` speaks this side).
"""

from __future__ import annotations

import re

from ..errors import RegistrationError, RelayRefusedError

MAX_GREETING = 1024
"""Longest greeting line accepted, newline included (a port line is at most 6 bytes)."""
ERROR_PREFIX = b"error: "
_PORT_LINE = re.compile(rb"[0-9]{1,5}")


def port_line(port: int) -> bytes:
    """The greeting for a successful registration."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return b"%d\n" % port


def excerpt(data: bytes | bytearray) -> str:
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
    got = excerpt(line + b"\n")
    raise RegistrationError(
        f"expected a port line (decimal digits and a newline), got {got}; is this a relay?"
    )


def plausible_prefix(data: bytes) -> bool:
    """Could ``data`` (no newline yet) still become a valid greeting?"""
    if data[:1].isdigit():
        return len(data) <= 5 and data.isdigit()
    n = min(len(data), len(ERROR_PREFIX))
    return data[:n] == ERROR_PREFIX[:n]
