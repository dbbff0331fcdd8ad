"""Services by name on the relay's shared ports, as registration v2 carries them.

A relay with ``--domain`` and ``--http-port`` / ``--tls-port`` offers the
features ``route-http`` / ``route-tls`` in its challenge; a client that wants
its service reached by name (``Host`` on the HTTP port, SNI on the TLS port)
answers ``route=http`` or ``route=tls``, and instead of a port line the relay
replies with the shared port and the host name the service got::

    80 blog.tunnel.example.com

after which both sides speak yamux as usual (docs/protocol.md 2.10).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import RegistrationError
from .greeting import MAX_GREETING, excerpt

RouteKind = Literal["http", "tls"]
"""``http``: routed by the Host of the first request; ``tls``: by the ClientHello's SNI."""
ROUTE_KINDS: tuple[RouteKind, ...] = get_args(RouteKind)
DEFAULT_PORTS: dict[RouteKind, int] = {"http": 80, "tls": 443}
"""The ports a URL leaves out."""
_ROUTE_LINE = re.compile(rb"([0-9]{1,5}) ([a-z0-9._-]{1,253})")


def feature(kind: RouteKind) -> str:
    """The challenge's feature that offers ``route=kind``."""
    return f"route-{kind}"


def route_line(port: int, host: str) -> bytes:
    """The relay's reply to a routed registration: the shared port and the host name."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return b"%d %s\n" % (port, host.encode("ascii"))


def parse_route_line(line: bytes) -> tuple[int, str]:
    """``(port, host)`` of a route line (without its newline); RegistrationError otherwise."""
    match = _ROUTE_LINE.fullmatch(line)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        got = excerpt(line + b"\n")
        raise RegistrationError(
            f"expected the shared port and the host name of a routed service (e.g. "
            f"'80 blog.tunnel.example.com'), got {got}"
        )
    return int(match.group(1)), match.group(2).decode("ascii")


def plausible_route_prefix(data: bytes) -> bool:
    """Could ``data`` (no newline yet) still become a route line?"""
    return len(data) < MAX_GREETING and all(32 <= byte < 127 for byte in data)


def url(kind: RouteKind, host: str, port: int) -> str:
    """Where public clients reach a routed service: ``http://HOST/`` or ``https://HOST/``
    (a TLS route is usually HTTPS; other TLS protocols take the host and port from it)."""
    scheme = "http" if kind == "http" else "https"
    shown = host if port == DEFAULT_PORTS[kind] else f"{host}:{port}"
    return f"{scheme}://{shown}/"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a service reached by name is: the kind and port of a shared port, its host."""

    kind: RouteKind
    host: str
    port: int

    def line(self) -> bytes:
        """The relay's reply to the registration, in place of the port line."""
        return route_line(self.port, self.host)

    @property
    def url(self) -> str:
        return url(self.kind, self.host, self.port)
