"""The forwarder, ``relay --localForwardPort=6379 <host> <port>``.

Registers with the relay (``relay.client.register``), prints the public endpoint
``HOST:PORT`` alone on a line of stdout, and for every relayed stream dials the
local service and pipes bytes both ways (``relay.pipe``). A local service that
is down resets that stream only. When the relay connection ends it reconnects
with exponential backoff and jitter and prints the new endpoint: the loop is
the Python API's (``RelayedServer``), the delays ``relay.client.reconnect``'s. One
forwarder can expose several services (``relay.Service``), each its own registration.

Against a registration-v2 relay it answers the challenge with ``secret``,
sends each service's name (the relay keeps its public port for it: a lease)
and its ``remote_port``, and with ``proxy_protocol`` (1 or 2) it asks for the
public client's address and sends it to the local service as a PROXY protocol
header before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import yamux

from ..net import describe_os_error, format_endpoint
from ..ops.logs import EventDict, log_later
from ..options import ForwardOptions, OptionError, Service
from ..options.declare import takes_options
from ..pipe import PipeResult, SocketEnd, Splice, splice, wait_pipe
from ..server.interface import Readiness
from ..stats import Traffic
from ..wire.proxy_header import ProxyAddresses, header
from .relayed_server import RelayedServer
from .relays import RelayAddress, relay_addresses, relayed_server

logger = logging.getLogger("relay.forwarder")
connections_logger = logging.getLogger("relay.connections")

EXIT_LOST = 1
"""``run()`` when a relay session is lost and reconnecting is off."""
EXIT_REFUSED = 78
"""``run()`` after a permanent refusal: sysexits' EX_CONFIG, which a systemd unit's
``RestartPreventExitStatus=78`` keeps from being restarted into the same refusal."""


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


class Forwarder:
    """Expose local services through the relay at ``relay_host:relay_port``.

    ``services``: each a ``Service``, or a local port. ``options`` and the
    keywords are ``ForwardOptions``; ``name`` and ``remote_port`` belong to the
    one service given here (the ``LOCAL_PORT`` of ``relay forward``), and
    ``service`` adds more, each its own registration. After each registration
    ``on_endpoint(line)`` gets the endpoint line, which by default is printed:
    ``HOST:PORT`` alone with one service (the seed's output), ``NAME HOST:PORT``
    with several.
    """

    _loop: asyncio.AbstractEventLoop
    """Set by ``run``: the streams' handlers need it, and asking is a system call (getpid)."""

    @takes_options(ForwardOptions)
    def __init__(
        self,
        relay_host: str,
        relay_port: int,
        *services: Service | int,
        options: ForwardOptions | None = None,
        on_endpoint: Callable[[str], object] = print_endpoint,
        **keywords: Any,
    ) -> None:
        checked = ForwardOptions.build(options, **keywords).with_files_read()
        if checked.client_address is None:
            checked = dataclasses.replace(
                checked, client_address=checked.proxy_protocol is not None
            )
        self.options = checked
        """For every registration: files already read, one TLS context for all."""
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.on_endpoint = on_endpoint
        self.services = _services(services, checked)
        self.yamux_config = checked.session_config()
        """Every session's settings: with auto-tuning one window budget for all of them."""
        self.servers: list[RelayedServer] = []
        """One per service and relay while running."""
        self.relays: list[RelayAddress] = []
        """The relays registered with (``relays`` adds to the one given): set by ``run``."""
        self._placed: list[tuple[Service, RelayedServer]] = []
        self.traffic = {service: Traffic() for service in self.services}
        """Per service, for metrics: socket -> stream is from the local service."""
        self.local_failures = dict.fromkeys(self.services, 0)
        """Per service: streams reset because the local service could not be reached."""
        self.draining = False

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

    def servers_of(self, service: Service) -> list[RelayedServer]:
        """The servers of ``service``, one per relay (none while not running)."""
        return [server for owner, server in self._placed if owner is service]

    def readiness(self) -> Readiness:
        """Ready while every service is registered with at least one of its relays, until
        the drain starts."""
        if self.draining:
            return Readiness(False, "draining")
        relays = ", ".join(relay.endpoint for relay in self.relays) or self.relay_endpoint
        waiting = [
            service.label
            for service in self.services
            if not any(server.is_serving() for server in self.servers_of(service))
        ]
        if not self.servers or waiting:
            return Readiness(
                False,
                f"not registered with the relay at {relays}: "
                + ", ".join(waiting or (s.label for s in self.services)),
            )
        return Readiness(True, f"registered with the relay at {relays}")

    async def run(self) -> int:
        """Serve until cancelled. Returns when a service stops on every relay:
        ``EXIT_REFUSED`` after a permanent refusal (the other services stop too: the
        configuration needs a fix), ``EXIT_LOST`` when its relay sessions are lost and
        reconnecting is off."""
        self._loop = asyncio.get_running_loop()
        self.relays = await relay_addresses((self.relay_host, self.relay_port), self.options.relays)
        self._placed = [
            (service, self._server(service, relay))
            for service in self.services
            for relay in self.relays
        ]
        self.servers = [server for _, server in self._placed]
        try:
            # Services that ask for a port register first: otherwise one without could be
            # handed that port by the relay's round robin a moment before (and lease it).
            asking = [srv for svc, srv in self._placed if svc.remote_port is not None]
            for server in asking:
                await server.start(retry=True)
            if asking and len(asking) < len(self.servers):
                await _first_of(
                    [server.wait_endpoint() for server in asking],
                    asyncio.ALL_COMPLETED,
                    self.options.connect_timeout,
                )
            for server in self.servers:
                if server not in asking:
                    await server.start(retry=True)
            await _first_of(
                [self._lost(service) for service in self.services], asyncio.FIRST_COMPLETED
            )
            refused = any(server.refusal is not None for server in self.servers)
            return EXIT_REFUSED if refused else EXIT_LOST
        finally:
            for server in self.servers:
                server.close()
            for server in self.servers:
                await server.wait_closed()
            self.servers = []
            self._placed = []

    async def _lost(self, service: Service) -> None:
        """Until every relay of ``service`` is lost for good (reconnecting is off)."""
        for server in self.servers_of(service):
            await server.wait_closed()

    def _server(self, service: Service, relay: RelayAddress) -> RelayedServer:
        proxy_protocol = self.options.proxy_protocol

        def registered(endpoint: str) -> None:
            logger.info("public endpoint %s forwards to %s", endpoint, service.local_endpoint)
            if proxy_protocol is not None and not server.client_address:
                logger.warning(
                    "the relay does not send client addresses (seed protocol); the PROXY v%d "
                    "headers to %s will not name the client",
                    proxy_protocol,
                    service.local_endpoint,
                )
            self.on_endpoint(endpoint if len(self.services) == 1 else f"{service.name} {endpoint}")

        server = relayed_server(
            # A partial, not a closure: one coroutine less per stream.
            partial(self._forward, service, self.traffic[service]),
            relay,
            dataclasses.replace(
                self.options,
                name=service.name,
                remote_port=service.remote_port,
                route=service.route,
            ),
            on_endpoint=registered,
            config=self.yamux_config,
        )
        return server

    async def _forward(
        self, service: Service, traffic: Traffic, stream: yamux.Stream, _writer: yamux.Stream
    ) -> None:
        if self.draining:
            stream.reset()
            return
        loop = self._loop
        timeout = self.options.connect_timeout
        started = time.monotonic()
        client: ProxyAddresses | None = stream.get_extra_info("client_address")
        local = service.local_endpoint
        proxy_protocol = self.options.proxy_protocol
        dial = _Dial(
            stream,
            traffic,
            loop.create_future(),
            header(proxy_protocol, client) if proxy_protocol is not None else b"",
        )
        task = asyncio.current_task(loop)
        assert task is not None
        timer = loop.call_later(timeout, dial.expire, task)
        try:
            await loop.create_connection(
                partial(SocketEnd, dial.connected),
                service.local_host or self.options.local_forward_host,
                service.local_port,
            )
        except (OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not dial.timed_out(task):
                dial.abort()
                raise
            reason = f"no answer within {timeout:g} s" if dial.expired else describe_os_error(exc)
            logger.warning(
                "stream %d: local service %s is unreachable (%s); resetting the stream",
                stream.id,
                local,
                reason,
            )
            dial.abort()
            stream.reset()
            self.local_failures[service] += 1
            return
        finally:
            timer.cancel()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "stream %d: connected to %s%s",
                stream.id,
                local,
                f" for {format_endpoint(*client.source)}" if client else "",
            )
        assert dial.pipe is not None
        assert dial.result is not None
        result = dial.result
        try:
            await wait_pipe(dial.pipe, dial.done)
        finally:
            traffic.closed(result)
        if connections_logger.isEnabledFor(logging.INFO):
            log_later(
                connections_logger,
                _closed_line,
                stream.id,
                local,
                result.sent,
                result.received,
                result.error,
                time.monotonic() - started,
            )


def _closed_line(
    stream_id: int,
    local: str,
    sent: int,
    received: int,
    error: BaseException | None,
    duration: float,
) -> tuple[str, EventDict]:
    """The per-stream line (built with the next ones, see ``relay.ops.logs``)."""
    message = (
        f"stream {stream_id} to {local} closed: {sent} bytes to the relay, "
        f"{received} to the service" + (f" ({error})" if error else "")
    )
    return message, {
        "stream": stream_id,
        "local": local,
        "bytes_in": received,
        "bytes_out": sent,
        "duration": round(duration, 6),
        "reason": str(error) if error else "closed",
    }


class _Dial:
    """One stream's connection to its local service: the pipe starts from the socket's
    ``connection_made`` (no task wake-up before the first bytes go through), and the
    connect is bounded by one timer that cancels the dialing task."""

    __slots__ = ("done", "expired", "header", "pipe", "result", "stream", "traffic")

    def __init__(
        self, stream: yamux.Stream, traffic: Traffic, done: asyncio.Future[None], header: bytes
    ) -> None:
        self.stream = stream
        self.traffic = traffic
        self.done = done
        self.header = header
        """The PROXY protocol header to send before anything else (b"": none)."""
        self.pipe: Splice | None = None
        self.result: PipeResult | None = None
        self.expired = False

    def connected(self, end: SocketEnd) -> None:
        if self.header and end.transport is not None:
            end.transport.write(self.header)
        self.result = self.traffic.opened()
        self.pipe = splice(end, self.stream, self.done, self.result)

    def expire(self, task: asyncio.Task[None]) -> None:
        self.expired = True
        task.cancel()

    def timed_out(self, task: asyncio.Task[None]) -> bool:
        """The cancellation that stopped the connect was ours alone (as asyncio.timeout)."""
        return self.expired and task.uncancel() == 0

    def abort(self) -> None:
        """The connect failed or was cancelled after the socket connected: end the pipe."""
        if self.pipe is not None:
            self.pipe.fail(ConnectionAbortedError("connecting to the local service failed"))
        if self.result is not None:
            self.traffic.closed(self.result)


def _services(given: Sequence[Service | int], options: ForwardOptions) -> list[Service]:
    """The services to expose: those given, with ``name``/``remote_port`` for the only one,
    then ``options.service``; each with its local host."""
    services = [Service(s) if isinstance(s, int) else s for s in given]
    own = [name for name in ("name", "remote_port", "route") if getattr(options, name) is not None]
    if own:
        if len(services) != 1:
            raise OptionError(
                own[0],
                "{name}, {remote_port} and {route} apply to a single service given on its own; "
                "several services each bring theirs ({service} NAME=LOCAL_PORT[:REMOTE_PORT] "
                "or NAME=http:LOCAL_PORT)",
            )
        only = services[0]
        services[0] = dataclasses.replace(
            only,
            name=options.name or only.name,
            remote_port=options.remote_port or only.remote_port,
            route=options.route or only.route,
        )
    services += options.service
    services = [
        s if s.local_host else dataclasses.replace(s, local_host=options.local_forward_host)
        for s in services
    ]
    if not services:
        raise ValueError("a forwarder needs at least one service")
    names = [s.name for s in services if s.name is not None]
    if len(names) != len(set(names)):
        raise ValueError(f"service names must differ, got {', '.join(names)}")
    if len(services) > 1 and len(names) != len(services):
        raise ValueError("with several services, each needs a name")
    if options.client_name is None and any(s.route and s.name is None for s in services):
        raise ValueError("a service reached by name (route) needs a name")
    return services
