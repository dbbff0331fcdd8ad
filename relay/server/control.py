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

from yamux.ratelimit import RateLimitedLog

from ..options import RelayOptions
from .accept import ProtocolListener
from .admission import Admission
from .places import Place
from .request import SEED, RegistrationRequest
from .tls_listener import TLSListener


def listen(
    sock: socket.socket,
    options: RelayOptions,
    admission: Admission,
    protocol: Callable[[Place | None], asyncio.Protocol],
    accept_log: RateLimitedLog,
) -> ProtocolListener | TLSListener:
    """Serve the control port on ``sock``: plain TCP, or TLS with each connection counted
    from accept on; either way accepted as every port is (``relay.server.accept``), and
    ``accept_log`` says when accept() fails. ``protocol(place)``: the control protocol of
    a connection, with the admission place it holds already (after its TLS handshake) or
    None."""
    listener: ProtocolListener | TLSListener
    if options.ssl is None:
        listener = ProtocolListener(
            sock, lambda: protocol(None), what="the control port", log=accept_log
        )
    else:
        listener = TLSListener(
            sock,
            options.ssl,
            timeout=options.tls_handshake_timeout,
            admission=admission,
            protocol_factory=protocol,
            log=admission.log,
            accept_log=accept_log,
        )
    listener.start()
    return listener


class SeedProtocol(asyncio.Protocol):
    """A new connection on a seed relay's control port; it is handed over to yamux at once."""

    def __init__(
        self,
        registration_made: Callable[[asyncio.Transport, RegistrationRequest, Place | None], None],
        place: Place | None = None,
    ) -> None:
        self._registration_made = registration_made
        self._place = place
        """The place it holds already (after a TLS handshake), or None."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._registration_made(transport, SEED, self._place)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        """Only reached by a refused connection that is being closed: ignore."""

    def eof_received(self) -> bool:
        return False
