"""The relay's control port: plain TCP or TLS, the seed protocol or a challenge first.

On a TLS relay each connection counts as a pending registration from accept
on (``relay.server.tls_listener``); a seed relay hands each connection to the
registration at once (``SeedProtocol``), a v2 relay challenges first
(``relay.server.challenge``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from ..net import LISTEN_BACKLOG
from ..options import RelayOptions
from .admission import Admission
from .tls_listener import TLSListener


async def listen(
    sock: socket.socket,
    options: RelayOptions,
    admission: Admission,
    protocol: Callable[[], asyncio.Protocol],
) -> asyncio.Server | TLSListener:
    """Serve the control port on ``sock``: plain TCP, or TLS with each connection counted
    from accept on."""
    if options.ssl is None:
        return await asyncio.get_running_loop().create_server(
            protocol, sock=sock, backlog=LISTEN_BACKLOG
        )
    listener = TLSListener(
        sock,
        options.ssl,
        timeout=options.handshake_timeout,
        admission=admission,
        protocol_factory=protocol,
        log=admission.log,
    )
    listener.start()
    return listener


class SeedProtocol(asyncio.Protocol):
    """A new connection on a seed relay's control port; it is handed over to yamux at once."""

    def __init__(self, registration_made: Callable[[asyncio.Transport], None]) -> None:
        self._registration_made = registration_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._registration_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        """Only reached by a refused connection that is being closed: ignore."""

    def eof_received(self) -> bool:
        return False
