"""One local service that a forwarder exposes, however it was given.

``relay forward 6379 ...`` (LOCAL_PORT), ``--service redis=6379:7201``, a
``[[forward.services]]`` table and ``relay.Service(6379, name="redis")`` are
all a ``Service``: each its own registration, public port and lease. A
service reached by name on the relay's shared port says how:
``--service blog=http:8080``, ``--service shop=tls:10.0.0.5:8443``,
``Service(8080, name="blog", route="http")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..net import format_endpoint
from ..wire.route import ROUTE_KINDS, RouteKind

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SERVICE = re.compile(
    r"(?P<name>[^=]+)=(?:(?P<route>http|tls):)?"
    r"(?:(?P<host>\[[^\]]+\]|[^:\[\]]*[^:\d\[\]][^:\[\]]*):)?"
    r"(?P<local>\d{1,5})(?::(?P<remote>\d{1,5}))?"
)


def check_name(name: str) -> str:
    """``name`` if it can name a service; ValueError with the reason otherwise.

    Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at
    most 64 characters: it appears in logs, error lines and the relay's lease store.
    """
    if not name:
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):
        raise ValueError(
            "may only contain letters, digits, '.', '_' and '-' and must start with a "
            "letter or digit"
        )
    return name


def _check_port(port: int, what: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what} {port!r} is not a port number (1-65535)")


@dataclass(frozen=True, slots=True)
class Service:
    """One local service to expose: its own registration, endpoint and lease."""

    local_port: int
    local_host: str | None = None
    """None: the forwarder's ``local_forward_host``."""
    name: str | None = None
    """Its lease on the relay (with a ``client_name``, one of that client's); also labels
    the output."""
    remote_port: int | None = None
    """Public port to ask the relay for (None: the leased one, or any)."""
    route: RouteKind | None = None
    """Reached by name on the relay's shared HTTP or TLS port instead of a port of its own."""

    def __post_init__(self) -> None:
        _check_port(self.local_port, "local port")
        if self.remote_port is not None:
            _check_port(self.remote_port, "remote port")
        if self.route is not None:
            if self.route not in ROUTE_KINDS:
                raise ValueError(f"route {self.route!r} is not one of {', '.join(ROUTE_KINDS)}")
            if self.remote_port is not None:
                raise ValueError("a service reached by name (route) has no remote port")
        if self.name is not None:
            try:
                check_name(self.name)
            except ValueError as exc:
                raise ValueError(f"service name {self.name!r} {exc}") from None

    @classmethod
    def parse(cls, text: str) -> Service:
        """``NAME=[LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]``, e.g. ``redis=6379:7201``, or
        ``NAME=http|tls:[LOCAL_HOST:]LOCAL_PORT`` for a service reached by name. (A local
        host called ``http`` or ``tls`` is given by its address.)"""
        match = _SERVICE.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not NAME=[LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT] or "
                f"NAME=http|tls:[LOCAL_HOST:]LOCAL_PORT, e.g. redis=6379, "
                f"web=10.0.0.5:80:7202 or blog=http:8080"
            )
        host = match.group("host")
        remote = match.group("remote")
        route = match.group("route")
        return cls(
            int(match.group("local")),
            host.strip("[]") if host else None,
            match.group("name"),
            None if remote is None else int(remote),
            None if route is None else next(kind for kind in ROUTE_KINDS if kind == route),
        )

    @property
    def local_endpoint(self) -> str:
        return format_endpoint(self.local_host or "?", self.local_port)

    @property
    def label(self) -> str:
        return self.name or self.local_endpoint
