"""Listening sockets: the bind address is resolved once, then every listener is numeric.

With no bind address the relay listens on every interface, IPv4 and IPv6, on
ONE socket (an IPv6 socket with IPV6_V6ONLY off) so that an OS-chosen public
port is the same for both families; asyncio's ``host=None`` would open one
socket per family, each with its own ephemeral port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

LISTEN_BACKLOG = 4096
"""Pending connections the kernel queues per listener (capped by net.core.somaxconn).

With asyncio's default of 100 a burst of clients overflows the queue, and each
dropped SYN costs its client a 1 s retransmit; while a listener pauses for want
of file descriptors (``relay.server.accept``) its clients wait here.
"""


@dataclass(frozen=True, slots=True)
class BindAddress:
    family: int
    host: str
    """Numeric address to bind."""
    dual_stack: bool = False
    """An IPv6 socket that accepts IPv4 too."""

    def listen(
        self, port: int, backlog: int = LISTEN_BACKLOG, *, reuse_port: bool = False
    ) -> socket.socket:
        """A bound, listening, non-blocking socket on ``port`` (0: the OS chooses).

        ``reuse_port``: SO_REUSEPORT, so that other sockets of this user with it may
        listen on the same port, and the kernel spreads new connections over them.

        Made with ``IPPROTO_TCP``, not 0: accepted sockets inherit it, and asyncio's own
        loop sets TCP_NODELAY only on sockets that say so (uvloop on every TCP socket);
        without it Nagle holds a small frame or answer back behind an unacknowledged one.
        """
        sock = self._bound(port, reuse_port)
        try:
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def reserve(self, port: int) -> socket.socket:
        """A socket bound to ``port`` with SO_REUSEPORT that does not listen: it keeps the
        port for the listeners of ``listen(port, reuse_port=True)`` (of other processes
        too) while none is open. ``port`` 0: one the OS picks, free for everyone."""
        if port == 0:
            with self._bound(0, False) as probe:
                port = int(probe.getsockname()[1])
        else:
            self._bound(port, False).close()  # EADDRINUSE if anyone has it, SO_REUSEPORT or not
        return self._bound(port, True)

    def _bound(self, port: int, reuse_port: bool) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.dual_stack:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((self.host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def is_loopback(self) -> bool:
        """Only this machine can connect (127.0.0.0/8, ::1)."""
        return not self.dual_stack and ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        if self.dual_stack:
            return "all interfaces (IPv4 and IPv6)"
        return f"[{self.host}]" if self.family == socket.AF_INET6 else self.host


def _ipv6_dual_stack_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
    except OSError:
        return False
    return True


def resolve_bind_address(host: str | None) -> BindAddress:
    """Resolve ``host`` (None or "": every interface) once; raises OSError if it cannot be."""
    if not host:
        if _ipv6_dual_stack_works():
            return BindAddress(socket.AF_INET6, "::", dual_stack=True)
        return BindAddress(socket.AF_INET, "0.0.0.0")
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return BindAddress(family, str(sockaddr[0]))


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def format_peer(peername: object) -> str:
    """A socket's ``peername`` as ``host:port`` for the log."""
    if not peername:
        return "unknown peer"
    host, port = peername[0], peername[1]  # type: ignore[index]
    return format_endpoint(str(host), int(port))


def peer_of(transport: asyncio.BaseTransport) -> str:
    return format_peer(transport.get_extra_info("peername"))


def describe_os_error(exc: BaseException) -> str:
    """Why a connect failed, in a few words (asyncio's "Connect call failed" says what, not why)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno).lower()} (errno {exc.errno})"
    if isinstance(exc, OSError) and isinstance(exc.__cause__, OSError):
        return describe_os_error(exc.__cause__)
    return str(exc) or type(exc).__name__


class Listener(Protocol):
    """A listener whose port can be read: ``asyncio.Server``, or the TLS control port's
    ``relay.server.tls_listener.TLSListener``."""

    @property
    def sockets(self) -> Sequence[socket.socket]:
        """Empty once closed."""


def listening_port(server: Listener | None) -> int:
    """The port ``server`` listens on; RuntimeError before it listens."""
    if server is None or not server.sockets:
        raise RuntimeError("the relay is not listening")
    return int(server.sockets[0].getsockname()[1])
