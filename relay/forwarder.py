"""The forwarder, ``relay --localForwardPort=6379 <host> <port>``.

Registers with the relay (``relay.api``), prints the public endpoint
``HOST:PORT`` alone on a line of stdout, and for every relayed stream dials the
local service and pipes bytes both ways (``relay.pipe``). A local service that
is down resets that stream only. When the relay connection ends it reconnects
with exponential backoff and jitter and prints the new endpoint.

Against a registration-v2 relay it answers the challenge with ``secret``,
asks for ``public_port``, and with ``proxy_protocol`` (1 or 2) it asks for the
public client's address and sends it to the local service as a PROXY protocol
header before the first byte.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yamux

from .api import RelayedServer, start_server
from .errors import RegistrationError
from .handshake import AuthenticationError
from .net import describe_os_error, format_endpoint
from .pipe import SocketEnd, pipe
from .proxy_protocol import ProxyAddresses, header

logger = logging.getLogger("relay.forwarder")
connections_logger = logging.getLogger("relay.connections")

DEFAULT_LOCAL_HOST = "127.0.0.1"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_RECONNECT_DELAY = 1.0
DEFAULT_RECONNECT_MAX_DELAY = 30.0


class Backoff:
    """Exponential backoff with jitter: ``initial`` doubling up to ``maximum``, each +-20 %."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.2) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return min(self.maximum, base * random.uniform(1 - self.jitter, 1 + self.jitter))

    def reset(self) -> None:
        self.attempt = 0


def _print_endpoint(endpoint: str) -> None:
    sys.stdout.write(endpoint + "\n")
    sys.stdout.flush()


@dataclass
class Forwarder:
    """Expose ``local_host:local_port`` through the relay at ``relay_host:relay_port``."""

    relay_host: str
    relay_port: int
    local_port: int
    local_host: str = DEFAULT_LOCAL_HOST
    reconnect: bool = True
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    yamux_config: yamux.Config | None = None
    secret: str | bytes | None = None
    name: str | None = None
    public_port: int | None = None
    """Ask the relay for this public port (registration v2)."""
    ssl: ssl.SSLContext | None = None
    tls_server_name: str | None = None
    """The name the relay's certificate must carry (default: ``relay_host``)."""
    proxy_protocol: int | None = None
    """Send a PROXY protocol header of this version (1 or 2) to the local service."""
    on_endpoint: Callable[[str], None] = field(default=_print_endpoint)
    """Called with ``HOST:PORT`` after every successful registration (default: print it)."""
    server: RelayedServer | None = field(default=None, init=False)

    @property
    def relay_endpoint(self) -> str:
        return format_endpoint(self.relay_host, self.relay_port)

    @property
    def local_endpoint(self) -> str:
        return format_endpoint(self.local_host, self.local_port)

    async def run(self) -> int:
        """Serve until cancelled; returns 1 when the relay is lost and reconnecting is off."""
        backoff = Backoff(self.reconnect_delay, self.reconnect_max_delay)
        while True:
            try:
                server = await start_server(
                    self._forward, self.relay_host, self.relay_port,
                    config=self.yamux_config, connect_timeout=self.connect_timeout,
                    secret=self.secret, name=self.name, public_port=self.public_port,
                    client_address=self.proxy_protocol is not None, ssl=self.ssl,
                    **({"server_hostname": self.tls_server_name}
                       if self.ssl is not None and self.tls_server_name else {}),
                )
            except AuthenticationError as exc:
                logger.error("relay %s: %s (check --secret / RELAY_SECRET)",
                             self.relay_endpoint, exc)
            except RegistrationError as exc:
                logger.error("relay %s: %s", self.relay_endpoint, exc)
            except (OSError, TimeoutError) as exc:
                logger.error("cannot reach the relay at %s: %s", self.relay_endpoint,
                             describe_os_error(exc))
            else:
                backoff.reset()
                self.server = server
                try:
                    logger.info("public endpoint %s forwards to %s",
                                server.public_endpoint, self.local_endpoint)
                    if self.proxy_protocol is not None and not server.client_address:
                        logger.warning(
                            "the relay does not send client addresses (seed protocol); the "
                            "PROXY v%d headers to %s will not name the client",
                            self.proxy_protocol, self.local_endpoint)
                    self.on_endpoint(server.public_endpoint)
                    await server.wait_closed()
                    reason = server.close_reason  # before close(), which clears it
                finally:
                    self.server = None
                    server.close()
                    await server.wait_closed()
                logger.warning("lost the relay at %s: %s; public endpoint %s is gone",
                               self.relay_endpoint, reason, server.public_endpoint)
            if not self.reconnect:
                return 1
            delay = backoff.next_delay()
            logger.info("reconnecting to %s in %.2f s", self.relay_endpoint, delay)
            await asyncio.sleep(delay)

    async def _forward(self, stream: yamux.Stream, _writer: yamux.Stream) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        client: ProxyAddresses | None = stream.get_extra_info("client_address")
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, end = await loop.create_connection(SocketEnd, self.local_host, self.local_port)
        except (OSError, TimeoutError) as exc:
            reason = (f"no answer within {self.connect_timeout:g} s"
                      if isinstance(exc, TimeoutError) else describe_os_error(exc))
            logger.warning("stream %d: local service %s is unreachable (%s); resetting the stream",
                           stream.id, self.local_endpoint, reason)
            stream.reset()
            return
        logger.debug("stream %d: connected to %s%s", stream.id, self.local_endpoint,
                     f" for {format_endpoint(*client.source)}" if client else "")
        if self.proxy_protocol is not None and end.transport is not None:
            end.transport.write(header(self.proxy_protocol, client))
        result = await pipe(end, stream)
        connections_logger.info(
            "stream %d to %s closed: %d bytes to the relay, %d to the service%s", stream.id,
            self.local_endpoint, result.sent, result.received,
            f" ({result.error})" if result.error else "",
            extra={"stream": stream.id, "local": self.local_endpoint, "bytes_in": result.received,
                   "bytes_out": result.sent, "duration": round(time.monotonic() - started, 6),
                   "reason": str(result.error) if result.error else "closed"})
