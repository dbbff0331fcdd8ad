"""The relay's shared HTTP and TLS ports: each connection is routed by the name it asks for.

A connection on ``--http-port`` is read until its first request head is
complete (``relay.wire.http_head``), one on ``--tls-port`` until its
ClientHello is (``relay.wire.client_hello``); the host name found leads to a
registered session (``relay.server.routes``). From then on it is a public
connection of that session exactly as if it had arrived on the session's own
port (``relay.server.public``: its limits, the PROXY header, the idle
timeout), and the bytes read so far are the first the service gets,
unchanged: TLS is never terminated here.

A connection that names no service gets an answer from the relay, never from a
service: an HTTP error page (400 malformed or no Host, 404 unknown name, 408
too slow, 431 head over 16 KiB) or a fatal TLS alert (``unrecognized_name``,
``decode_error``), then the relay closes it after a short linger that lets
the client read the answer. Until it is routed a connection holds a place among
``--max-connections`` unrouted ones and a slot of its source's share of them
(``--max-connections-per-source``), and has ``--route-timeout`` seconds.

With ``--workers`` every worker listens on the shared ports (SO_REUSEPORT), and
the kernel gives a connection to any of them. A name another worker holds
(``Routes.elsewhere``) is handed to that worker with the bytes read so far
(``Elsewhere.send``, the socket's descriptor on the line between the two), and
that worker routes it as if it had read them itself (``SharedPorts.take``); a
name nobody is known to hold is asked of the supervisor once (a registration
may be newer than its broadcast) before the answer is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import BindAddress, format_peer, listening_port
from ..options import RelayOptions
from ..pipe import SocketEnd
from ..stats import RelayStats
from ..wire.client_hello import (
    ALERT_DECODE_ERROR,
    ALERT_INTERNAL_ERROR,
    ALERT_UNRECOGNIZED_NAME,
    ClientHelloError,
    ServerNameReader,
    alert_record,
)
from ..wire.http_head import HeadError, HostReader, error_response
from ..wire.route import RouteKind
from ..wire.v2 import FEATURES
from .accept import ProtocolListener
from .elsewhere import Elsewhere, Handed
from .limits import Slot, SourceSlots, share, source_of
from .routes import Routes
from .session import RegisteredSession

logger = logging.getLogger("relay.routing")

LINGER = 2.0
"""Seconds a refused connection may keep sending (discarded) after its answer, so that
closing with unread bytes does not reset the answer away before the client reads it."""
_LINGER_RESET = struct.pack("ii", 1, 0)
ALERTS = {
    ALERT_UNRECOGNIZED_NAME: "unrecognized_name",
    ALERT_DECODE_ERROR: "decode_error",
    ALERT_INTERNAL_ERROR: "internal_error",
}


Accept = Callable[[RegisteredSession, SocketEnd, bytes], None]
"""Takes a routed connection on as a public connection of a session, with the bytes read
to route it (``relay.server.public.PublicConnections.accept_routed``)."""


class SharedPorts:
    """The listeners of the shared ports and their connections until each is routed."""

    def __init__(
        self,
        options: RelayOptions,
        accept: Accept,
        stats: RelayStats,
        accept_log: RateLimitedLog,
    ) -> None:
        assert options.domain is not None
        self.routes = Routes(options.domain)
        """Where each host name leads (the ports are set by ``start``)."""
        self.accept = accept
        self.stats = stats
        self.accept_log = accept_log
        """Where the listeners say that accept() fails (shared by the relay's listeners)."""
        self.timeout = options.route_timeout
        self.max_unrouted = options.max_connections
        self.unrouted: dict[Peek, float] = {}
        """Connections being read, oldest first, each with its deadline (loop time)."""
        self.lingering: set[Peek] = set()
        """Refused connections, closing after their answer."""
        self._sweep: asyncio.TimerHandle | None = None
        """One timer for every deadline: when the oldest connection's is due."""
        self.sources = SourceSlots(
            share(options.max_connections_per_source, options.max_connections)
        )
        self.log = RateLimitedLog(logger)
        """Lines any stranger can trigger: one budget per kind of refusal."""
        self._wanted: dict[RouteKind, int] = {}
        if options.http_port is not None:
            self._wanted["http"] = options.http_port
        if options.tls_port is not None:
            self._wanted["tls"] = options.tls_port
        self._listeners: list[ProtocolListener] = []
        self.elsewhere: Elsewhere | None = None
        """The other workers (set by a worker's process; None: a single relay)."""
        self._tasks = yamux.TaskOwner(logger)
        """Questions to the supervisor, and connections handed here being set up."""
        self.closed = False
        """Closed: a connection whose transport is made only now is dropped."""

    @property
    def features(self) -> frozenset[str]:
        """What the relay's challenge offers: every v2 relay's, and routes to the ports."""
        return self.routes.features | frozenset(FEATURES)

    async def start(self, bind: BindAddress, *, reuse_port: bool = False) -> None:
        """Bind and listen on every shared port (OSError if one cannot be had); ``reuse_port``:
        alongside the other workers."""
        try:
            for kind, port in self._wanted.items():
                listener = ProtocolListener(
                    bind.listen(port, reuse_port=reuse_port),
                    lambda kind=kind: Peek(self, kind),  # type: ignore[misc]
                    what=f"the shared {kind.upper()} port",
                    log=self.accept_log,
                )
                self._listeners.append(listener)
                listener.start()
                self.routes.ports[kind] = listening_port(listener)
        except BaseException:
            self.close()
            raise
        logger.info(
            "Serving names under %s: %s",
            self.routes.domain,
            "; ".join(
                f"{kind.upper()} on port {port} (by {'Host' if kind == 'http' else 'SNI'})"
                for kind, port in self.routes.ports.items()
            ),
            extra={"domain": self.routes.domain},
        )

    def stop_listening(self) -> None:
        """Take no new connection (a drain); those being routed go on."""
        for listener in self._listeners:
            listener.close()

    def close(self) -> None:
        self.closed = True
        self.stop_listening()
        for peek in [*self.unrouted, *self.lingering]:
            peek.abort()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._tasks.cancel()
        self.log.summary(logging.INFO, "shared ports")

    async def wait_closed(self) -> None:
        for listener in self._listeners:
            await listener.wait_closed()
        await self._tasks.wait()

    def ask(self, peek: Peek, host: str) -> None:
        """Ask the supervisor which worker holds ``host``; ``peek`` waits, not reading."""
        self._tasks.spawn(self._asked(peek, host), name="relay-route-ask")

    async def _asked(self, peek: Peek, host: str) -> None:
        assert self.elsewhere is not None
        try:
            async with asyncio.timeout(self.timeout):  # by then ``peek`` timed out anyway
                worker = await self.elsewhere.where(peek.kind, host)
        except TimeoutError:
            return
        if peek in self.unrouted:  # not timed out, gone or closed meanwhile
            peek.heard(host, worker)

    def take(self, kind: RouteKind, host: str, early: bytes, sock: socket.socket) -> None:
        """A connection another worker accepted for ``host``, with what it read of it."""
        if self.closed:  # this worker is stopping: its own connections end too
            sock.close()
            return
        handed = Handed(host, early)
        self._tasks.spawn(self._take(kind, handed, sock), name="relay-route-take")

    async def _take(self, kind: RouteKind, handed: Handed, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: Peek(self, kind, handed), sock
            )
        except OSError as exc:  # the client left already: nothing to answer
            sock.close()
            self.log.log(logging.INFO, "take", "cannot take a handed connection: %s", exc)

    @property
    def held(self) -> int:
        """Places of unrouted connections in use (``--max-connections``)."""
        return len(self.unrouted) + len(self.lingering)

    def watch(self, peek: Peek) -> None:
        """Give ``peek`` until the route timeout to name its service."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self.unrouted[peek] = deadline
        if self._sweep is None:
            self._sweep = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Answer the connections whose time is up; wait for the next deadline. (One timer
        for all: a timer per connection would cost every connection a heap entry.)"""
        self._sweep = None
        now = asyncio.get_running_loop().time()
        while self.unrouted:
            peek, deadline = next(iter(self.unrouted.items()))
            if deadline > now:
                self._sweep = asyncio.get_running_loop().call_at(deadline, self._expire)
                return
            del self.unrouted[peek]
            peek.timed_out()


class Peek(asyncio.Protocol):
    """One connection on a shared port until it is routed or answered."""

    __slots__ = (
        "_answered",
        "_linger",
        "_slot",
        "handed",
        "kind",
        "peername",
        "ports",
        "reader",
        "received",
        "transport",
    )

    def __init__(self, ports: SharedPorts, kind: RouteKind, handed: Handed | None = None) -> None:
        self.ports = ports
        self.kind = kind
        self.reader: HostReader | ServerNameReader = (
            HostReader() if kind == "http" else ServerNameReader()
        )
        self.received: list[bytes] = []
        """Everything read so far: the service gets it first."""
        self.transport: asyncio.Transport | None = None
        self.peername: object = None
        self._slot: Slot | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._answered = False
        self.handed = handed
        """Handed on by the worker that read it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peername = transport.get_extra_info("peername")
        ports = self.ports
        if ports.closed:
            transport.close()
            return
        if self.handed is not None:  # its place was held in the worker that read it
            self.received = [self.handed.early]
            self._route(self.handed.host)
            return
        source = source_of(self.peername)
        if ports.held >= ports.max_unrouted:
            self._drop("routing_full", f"{ports.held} connections are being routed")
            return
        self._slot = ports.sources.acquire(source)
        if self._slot is None:
            self._drop(
                "routing_per_source",
                f"{ports.sources.held(source)} connections from {source} are being routed "
                f"(--max-connections-per-source {ports.sources.limit})",
            )
            return
        ports.watch(self)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # lingering: what it still sends is discarded
        self.received.append(data)
        try:
            host = self.reader.feed(data)
        except HeadError as exc:
            self._refuse(exc.status, str(exc))
            return
        except ClientHelloError as exc:
            self._refuse(exc.alert, str(exc))
            return
        if host is not None:
            self._route(host)

    def eof_received(self) -> bool:
        if not self._answered:
            self._refuse(400, "the connection ended before it named a service")
        self._close()  # the client sends no more: the answer goes out, then the close
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def abort(self) -> None:
        """Drop the connection (the relay is closing)."""
        self._done()
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------ outcomes
    def _route(self, host: str) -> None:
        ports = self.ports
        session = ports.routes.find(self.kind, host)
        if session is not None:
            self._to_session(session)
        elif ports.elsewhere is None or self.handed is not None:
            self._unknown(host)
        elif (worker := ports.routes.where(self.kind, host)) is not None:
            self._hand_off(worker, host)
        else:  # maybe registered in another worker just now: ask before the 404
            assert self.transport is not None
            self.transport.pause_reading()
            ports.ask(self, host)

    def heard(self, host: str, worker: int | None) -> None:
        """The supervisor says which other worker holds ``host`` (None: none)."""
        assert self.transport is not None
        session = self.ports.routes.find(self.kind, host)
        if session is None and worker is not None:
            self._hand_off(worker, host)
            return
        self.transport.resume_reading()
        if session is None:
            self._unknown(host)
        else:
            self._to_session(session)

    def _unknown(self, host: str) -> None:
        if self.kind == "http":
            self._refuse(404, f"no service is registered as {host} on this relay")
        else:
            self._refuse(ALERT_UNRECOGNIZED_NAME, f"no service is registered as {host}")

    def _hand_off(self, worker: int, host: str) -> None:
        """Pass the connection to ``worker``, which holds ``host``; this worker lets go."""
        ports, transport = self.ports, self.transport
        assert ports.elsewhere is not None
        assert transport is not None
        early = b"".join(self.received)
        try:
            ports.elsewhere.send(worker, self.kind, host, early, transport.get_extra_info("socket"))
        except OSError as exc:
            transport.resume_reading()
            self._refuse(
                503 if self.kind == "http" else ALERT_INTERNAL_ERROR,
                f"worker {worker}, which holds {host}, cannot take it now: {exc}",
                label="route_handoff_failed",
            )
            return
        ports.stats.connections_handed += 1
        self._done()
        self.received = []
        transport.abort()

    def _to_session(self, session: RegisteredSession) -> None:
        transport = self.transport
        assert transport is not None
        self._done()
        # The connection goes on as one of the session's own port would: the bytes read
        # here go with its stream's SYN; what arrives until the stream is open is kept by
        # the SocketEnd (``EARLY_DATA_PAUSE`` at most).
        end = SocketEnd()
        end.transport = transport
        transport.set_protocol(end)
        first = b"".join(self.received)
        self.received = []
        self.ports.accept(session, end, first)

    def _refuse(self, answer: int, reason: str, label: str | None = None) -> None:
        """Answer (an HTTP status or a TLS alert), then linger and close; ``label``: what it
        counts as, a fault of the relay's (by default the answer, the client's)."""
        assert self.transport is not None
        self._answered = True
        self.received = []
        key = label or f"{self.kind}_{answer if self.kind == 'http' else ALERTS[answer]}"
        self.ports.stats.connections_refused[label or f"route_{key}"] += 1
        self.ports.log.log(
            logging.INFO if label is None else logging.WARNING,
            key,
            "%s port: refusing a connection from %s: %s",
            self.kind.upper(),
            format_peer(self.peername),
            reason,
            extra={"peer": format_peer(self.peername), "reason": reason},
        )
        if self.kind == "http":
            self.transport.write(error_response(answer, reason, self.ports.routes.domain))
        else:
            self.transport.write(alert_record(answer))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.ports.unrouted.pop(self, None)
        self.ports.lingering.add(self)
        self._linger = asyncio.get_running_loop().call_later(LINGER, self._close)

    def timed_out(self) -> None:
        """No name within the route timeout (``SharedPorts`` took it off its list)."""
        timeout = self.ports.timeout
        if self.kind == "http":
            self._refuse(408, f"no complete request head within {timeout:g} s")
            return
        self.ports.log.log(
            logging.INFO,
            "tls_timeout",
            "TLS port: closing a connection from %s: no ClientHello within %g s",
            format_peer(self.peername),
            timeout,
        )
        self.ports.stats.connections_refused["route_tls_timeout"] += 1
        self._close()

    def _drop(self, key: str, reason: str) -> None:
        assert self.transport is not None
        self.ports.stats.connections_refused[key] += 1
        self.ports.log.log(
            logging.WARNING,
            key,
            "%s port: refusing a connection from %s: %s",
            self.kind.upper(),
            format_peer(self.peername),
            reason,
        )
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset, as for the refusals of a service's own port
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.transport.abort()

    def _close(self) -> None:
        self._done()
        if self.transport is not None:
            self.transport.close()

    def _done(self) -> None:
        """Give back what it holds (once)."""
        self.ports.unrouted.pop(self, None)
        self.ports.lingering.discard(self)
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
