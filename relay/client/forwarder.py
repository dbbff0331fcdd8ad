"""The forwarder, ``relay --localForwardPort=6379 <host> <port>``.

Registers with the relay (``relay.client.api``), prints the public endpoint
``HOST:PORT`` alone on a line of stdout, and for every relayed stream dials the
local service and pipes bytes both ways (``relay.pipe``). A local service that
is down resets that stream only. When the relay connection ends it reconnects
with exponential backoff and jitter and prints the new endpoint: the loop is
the Python API's (``RelayedServer``), the delays ``relay.client.reconnect``'s. One
forwarder can expose several services (``Service``), each its own registration.

Against a registration-v2 relay it answers the challenge with ``secret``,
sends each service's name (the relay keeps its public port for it: a lease)
and requested port, and with ``proxy_protocol`` (1 or 2) it asks for the
public client's address and sends it to the local service as a PROXY protocol
header before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial

import yamux

from ..net import describe_os_error, format_endpoint
from ..pipe import SocketEnd, pipe
from ..server.leases import check_name
from ..stats import Traffic
from ..wire.proxy_header import ProxyAddresses, header
from .api import RelayedServer
from .reconnect import DEFAULT_RECONNECT_DELAY, DEFAULT_RECONNECT_MAX_DELAY

logger = logging.getLogger("relay.forwarder")
connections_logger = logging.getLogger("relay.connections")

DEFAULT_LOCAL_HOST = "127.0.0.1"
DEFAULT_CONNECT_TIMEOUT = 10.0
_SERVICE = re.compile(
    r"(?P<name>[^=]+)=(?:(?P<host>\[[^\]]+\]|[^:\[\]]*[^:\d\[\]][^:\[\]]*):)?"
    r"(?P<local>\d{1,5})(?::(?P<remote>\d{1,5}))?"
)


def _check_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} {port} is not a port number (1-65535)")
    return port


@dataclass(frozen=True, slots=True)
class Service:
    """One local service a forwarder exposes: its own registration, endpoint and lease."""

    local_port: int
    local_host: str = DEFAULT_LOCAL_HOST
    name: str | None = None
    """Identity for the relay's lease (with auth, per client); also labels the output."""
    remote_port: int | None = None
    """Public port to ask the relay for (None: the leased one, or any)."""

    def __post_init__(self) -> None:
        _check_port(self.local_port, "local port")
        if self.remote_port is not None:
            _check_port(self.remote_port, "remote port")
        if self.name is not None:
            check_name(self.name, "service name")

    @classmethod
    def parse(cls, text: str, default_host: str = DEFAULT_LOCAL_HOST) -> Service:
        """``NAME=[LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]``, e.g. ``redis=6379:7201``."""
        match = _SERVICE.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not NAME=[LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT], e.g. redis=6379 "
                f"or web=10.0.0.5:80:7202"
            )
        host = match.group("host") or default_host
        remote = match.group("remote")
        return cls(
            int(match.group("local")),
            host.strip("[]"),
            match.group("name"),
            None if remote is None else int(remote),
        )

    @property
    def local_endpoint(self) -> str:
        return format_endpoint(self.local_host, self.local_port)

    @property
    def label(self) -> str:
        return self.name or self.local_endpoint


async def _first_of(
    waits: list[Coroutine[None, None, object]], when: str, limit: float | None = None
) -> None:
    """``asyncio.wait`` on coroutines that cancels (and reaps) what is still pending."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=limit, return_when=when)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def print_endpoint(line: str) -> None:
    """The forwarder's stdout: one line per endpoint, nothing else. A closed stdout
    (``relay ... | head -1``) is logged once, not fatal."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: stdout was closed
        logger.warning(
            "cannot print the endpoint to stdout (%s); forwarding goes on and "
            "endpoints are only logged from now on",
            exc,
            extra={"endpoint": line},
        )
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # later writes and the exit flush succeed
            os.close(devnull)


@dataclass
class Forwarder:
    """Expose local services through the relay at ``relay_host:relay_port``.

    ``local_port`` (with ``local_host``, ``name``, ``remote_port``) is the one
    service of ``relay --localForwardPort``; ``services`` adds more, each its
    own registration. After each registration ``on_endpoint(line)`` gets the
    endpoint line, which by default is printed: ``HOST:PORT`` alone with one
    service (the seed's output), ``NAME HOST:PORT`` with several.
    """

    relay_host: str
    relay_port: int
    local_port: int | None = None
    local_host: str = DEFAULT_LOCAL_HOST
    name: str | None = None
    remote_port: int | None = None
    services: list[Service] = field(default_factory=list)
    reconnect: bool = True
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    yamux_config: yamux.Config | None = None
    secret: str | bytes | None = None
    client_name: str | None = None
    """Our client name at a v2 relay (selects the secret of its auth file): ``name=`` on
    the wire, with each service's own name as ``service=``, so that each keeps its own
    lease; without it each service's own name is ``name=``."""
    ssl: ssl.SSLContext | None = None
    tls_server_name: str | None = None
    """The name the relay's certificate must carry (default: ``relay_host``)."""
    proxy_protocol: int | None = None
    """Send a PROXY protocol header of this version (1 or 2) to the local service."""
    require_v2: bool = False
    """Refuse a seed relay instead of registering in seed mode (``start_server``)."""
    on_endpoint: Callable[[str], object] = print_endpoint
    servers: list[RelayedServer] = field(default_factory=list, init=False)
    """One per service while running."""
    traffic: dict[Service, Traffic] = field(default_factory=dict, init=False)
    """Per service, for metrics: socket -> stream is from the local service."""
    local_failures: dict[Service, int] = field(default_factory=dict, init=False)
    """Per service: streams reset because the local service could not be reached."""
    draining: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.local_port is not None:
            self.services = [
                Service(self.local_port, self.local_host, self.name, self.remote_port),
                *self.services,
            ]
        if not self.services:
            raise ValueError("a forwarder needs at least one service")
        names = [s.name for s in self.services if s.name is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"service names must differ, got {', '.join(names)}")
        if len(self.services) > 1 and len(names) != len(self.services):
            raise ValueError("with several services, each needs a name")
        self.traffic = {service: Traffic() for service in self.services}
        self.local_failures = dict.fromkeys(self.services, 0)

    def drain(self) -> None:
        """Reset every new stream from now on (the relay resets its public connection) and
        stop reconnecting; streams in flight go on. Closing the sessions then sends Go Away.

        Resetting rather than sending Go Away now keeps the streams in flight alive with
        every relay: the seed relay ends a session at the registered side's Go Away."""
        self.draining = True
        for server in self.servers:
            server.reconnect = False

    @property
    def relay_endpoint(self) -> str:
        return format_endpoint(self.relay_host, self.relay_port)

    async def run(self) -> int:
        """Serve until cancelled; returns 1 when a relay session is lost and reconnecting is off."""
        self.servers = [self._server(service) for service in self.services]
        try:
            # Services that ask for a port register first: otherwise one without could be
            # handed that port by the relay's round robin a moment before (and lease it).
            asking = [
                srv
                for srv, svc in zip(self.servers, self.services, strict=True)
                if svc.remote_port is not None
            ]
            for server in asking:
                await server.start(retry=True)
            if asking and len(asking) < len(self.servers):
                await _first_of(
                    [server.wait_endpoint() for server in asking],
                    asyncio.ALL_COMPLETED,
                    self.connect_timeout,
                )
            for server in self.servers:
                if server not in asking:
                    await server.start(retry=True)
            await _first_of(
                [server.wait_closed() for server in self.servers], asyncio.FIRST_COMPLETED
            )
            return 1
        finally:
            for server in self.servers:
                server.close()
            for server in self.servers:
                await server.wait_closed()
            self.servers = []

    def _server(self, service: Service) -> RelayedServer:
        def registered(endpoint: str) -> None:
            logger.info("public endpoint %s forwards to %s", endpoint, service.local_endpoint)
            if self.proxy_protocol is not None and not server.client_address:
                logger.warning(
                    "the relay does not send client addresses (seed protocol); the PROXY v%d "
                    "headers to %s will not name the client",
                    self.proxy_protocol,
                    service.local_endpoint,
                )
            self.on_endpoint(endpoint if len(self.services) == 1 else f"{service.name} {endpoint}")

        server = RelayedServer(
            # A partial, not a closure: one coroutine less per stream.
            partial(self._forward, service, self.traffic[service]),
            self.relay_host,
            self.relay_port,
            reconnect=self.reconnect,
            on_endpoint=registered,
            config=self.yamux_config,
            connect_timeout=self.connect_timeout,
            reconnect_delay=self.reconnect_delay,
            reconnect_max_delay=self.reconnect_max_delay,
            secret=self.secret,
            name=self.client_name or service.name,
            service=service.name if self.client_name else None,
            public_port=service.remote_port,
            client_address=self.proxy_protocol is not None,
            ssl=self.ssl,
            require_v2=self.require_v2,
            **(
                {"server_hostname": self.tls_server_name}
                if self.ssl is not None and self.tls_server_name
                else {}
            ),
        )
        return server

    async def _forward(
        self, service: Service, traffic: Traffic, stream: yamux.Stream, _writer: yamux.Stream
    ) -> None:
        if self.draining:
            stream.reset()
            return
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        client: ProxyAddresses | None = stream.get_extra_info("client_address")
        local = service.local_endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, end = await loop.create_connection(
                    SocketEnd, service.local_host, service.local_port
                )
        except (OSError, TimeoutError) as exc:
            reason = (
                f"no answer within {self.connect_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else describe_os_error(exc)
            )
            logger.warning(
                "stream %d: local service %s is unreachable (%s); resetting the stream",
                stream.id,
                local,
                reason,
            )
            stream.reset()
            self.local_failures[service] += 1
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "stream %d: connected to %s%s",
                stream.id,
                local,
                f" for {format_endpoint(*client.source)}" if client else "",
            )
        if self.proxy_protocol is not None and end.transport is not None:
            end.transport.write(header(self.proxy_protocol, client))
        result = traffic.opened()
        try:
            await pipe(end, stream, result)
        finally:
            traffic.closed(result)
        if connections_logger.isEnabledFor(logging.INFO):
            connections_logger.info(
                "stream %d to %s closed: %d bytes to the relay, %d to the service%s",
                stream.id,
                local,
                result.sent,
                result.received,
                f" ({result.error})" if result.error else "",
                extra={
                    "stream": stream.id,
                    "local": local,
                    "bytes_in": result.received,
                    "bytes_out": result.sent,
                    "duration": round(time.monotonic() - started, 6),
                    "reason": str(result.error) if result.error else "closed",
                },
            )
