"""The relay server, ``relay <localport>``.

Each connection to the control port registers a service: the relay opens a
public listener for it, sends the port line (see ``relay.protocol``), and
switches the connection to a yamux session in the client role. Every public
connection then becomes one stream on that session, piped both ways by
``relay.pipe``.

With a secret, an auth file or ``protocol="v2"`` the relay first challenges
(``relay.registration``, docs/protocol.md) and allocates only for a checked
response, honouring its ``RegistrationRequest`` (requested port, the client's
allowed ports, the client address at the start of each stream).

A registration is confirmed when the registered side answers a yamux ping
within ``handshake_timeout``; garbage ends the session at once (protocol
error), silence at the timeout. Whenever a session ends, for whatever reason,
its public listener is closed at once and its public connections are reset, so
the port is free again. What a stranger can make the relay allocate is bounded:
``max_sessions`` registrations (each one listener), ``max_connections`` public
connections per session, and per stream the yamux window; ``relay.limits`` adds
per-source shares of those and the idle timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl as ssl_module
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial

import yamux
from yamux.ratelimit import RateLimitedLog

from .auth import Authenticator, FailureLimiter, watch_auth_file
from .leases import DEFAULT_LEASE_TTL, Identity, LeaseStore
from .limits import IdleWatch, Limits, SourceSlots, share, source_of
from .net import (
    LISTEN_BACKLOG,
    BindAddress,
    format_endpoint,
    listening_port,
    resolve_bind_address,
)
from .pipe import PipeResult, SocketEnd, pipe
from .ports import DEFAULT_MAX_NAME_LEASES, PortAllocator, PortRefusedError, PortRequest
from .protocol import error_line, port_line
from .proxy_protocol import addresses_of, v2_header
from .registration import ChallengeProtocol, RegistrationRequest
from .registration import logger as registration_logger
from .stats import RelayStats, Traffic

logger = logging.getLogger("relay.server")
connections_logger = logging.getLogger("relay.connections")

DEFAULT_MAX_SESSIONS = 100
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
LEASE_REFRESH_INTERVAL = 60.0
"""Seconds between saving "still in use" for the leases of registered sessions (at most)."""
DEFAULT_MAX_PENDING = 1000
"""Most control connections between accept and a checked v2 response."""
PROTOCOLS = ("yamux", "v2")
"""``yamux``: the seed protocol, port line first (the Go design); ``v2``: registration v2,
the relay challenges first (docs/protocol.md)."""


REPLACE_PING_TIMEOUT = 2.0
"""A registration whose identity already has a session pings that session this long: an
answer refuses the newcomer (two processes with one name), silence replaces the old one
(its owner reconnected after a network blip the relay has not noticed yet)."""


def port_request(request: RegistrationRequest | None) -> PortRequest:
    """What the port policy needs of a registration: its identity, port and allowance.

    The identity is the client name: authenticated (a secret or the auth file),
    then with the port it asks for (a client's services each ask for their
    own), or, without authentication, only claimed; seed and nameless
    registrations have none and get no lease.
    """
    if request is None:
        return PortRequest()
    identity = None
    if request.client is not None:
        identity = (Identity(client=request.client, port=request.requested_port)
                    if request.authenticated else Identity(name=request.client))
    return PortRequest(identity, request.requested_port, request.allowed_ports)


def _peer(transport: asyncio.BaseTransport) -> str:
    return _format_peer(transport.get_extra_info("peername"))


def _format_peer(peername: object) -> str:
    if not peername:
        return "unknown peer"
    host, port = peername[0], peername[1]  # type: ignore[index]
    return format_endpoint(str(host), int(port))


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a task's exception as seen (its owner reports the session's end instead)."""
    if not task.cancelled():
        task.exception()


def describe_end(reason: BaseException | None) -> str:
    """Why a session ended, for the log."""
    if reason is None:
        return "closed"
    if isinstance(reason, yamux.ProtocolError):
        return f"yamux protocol error: {reason} (not a yamux peer?)"
    return str(reason)


@dataclass(eq=False)
class _Registration:
    id: int
    peer: str
    public_port: int
    sock: socket.socket
    session: yamux.Session
    source: str
    sources: SourceSlots
    """Public connections per source."""
    request: RegistrationRequest | None = None
    identity: Identity | None = None
    listener: asyncio.Server | None = None
    task: asyncio.Task[None] | None = None
    handshake: asyncio.Task[float] | None = None
    connections: yamux.TaskOwner = field(default_factory=lambda: yamux.TaskOwner(logger))
    log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(logger))
    """Lines the session's peers can trigger (refused public connections, ...)."""
    confirmed: bool = False
    ending: bool = False
    end_reason: str | None = None
    traffic: Traffic = field(default_factory=Traffic)
    connection_task_name: str = field(init=False, default="")
    """The name of each public connection's task."""

    def __post_init__(self) -> None:
        self.connection_task_name = f"relay-public-{self.id}"

    def log_fields(self) -> dict[str, object]:
        """The stable log fields of this session (see ``relay.logs.FIELDS``)."""
        fields: dict[str, object] = {"session": self.id, "peer": self.peer,
                                     "public_port": self.public_port}
        if self.request is not None and self.request.client is not None:
            fields["client"] = self.request.client
        return fields


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A registered session as seen from outside (``RelayServer.sessions``)."""

    id: int
    peer: str
    public_port: int
    confirmed: bool
    connections: int
    since: float = 0.0
    """Unix time of the registration."""
    bytes_in: int = 0
    """From the public clients, connections still open included."""
    bytes_out: int = 0
    streams: int = 0
    rtt: float | None = None
    """Seconds of the last keepalive (or handshake) ping."""
    stalls: int = 0
    """Times a stream paused its public connection because the peer's window was full."""
    client: str | None = None
    """The client's name (registration v2); None for a seed-protocol registration."""


class _ControlProtocol(asyncio.Protocol):
    """A new connection on the control port; it is handed over to yamux at once."""

    def __init__(self, relay: RelayServer) -> None:
        self._relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._relay._registration_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        """Only reached by a refused connection that is being closed: ignore."""

    def eof_received(self) -> bool:
        return False


class RelayServer:
    """``relay <port>`` as an object: ``await start()``, then ``close()`` / ``wait_closed()``.

    ``port`` is the control port (0: the OS chooses; see ``.port`` after start).
    ``host`` is the bind address of the control port and of every public
    listener (None: every interface, IPv4 and IPv6). ``port_range`` (low, high)
    restricts public ports; None lets the OS choose. ``state_dir`` keeps the
    port leases across relay restarts (None: in memory) and implies
    registration v2; a lease unused for ``lease_ttl`` seconds ends (see
    ``relay.leases`` and ``relay.ports``).

    ``protocol="v2"``, or any of ``secret`` / ``auth_clients`` / ``auth``, makes
    the relay challenge every control connection first (registration v2, see
    docs/protocol.md): nothing is allocated before the response is checked.
    ``ssl`` wraps the control port (and so all relayed traffic) in TLS.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str | None = None,
        port_range: tuple[int, int] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        yamux_config: yamux.Config | None = None,
        limits: Limits | None = None,
        protocol: str = "yamux",
        secret: str | bytes | None = None,
        auth_clients: dict[str, object] | None = None,
        auth: Authenticator | None = None,
        ssl: ssl_module.SSLContext | None = None,
        auth_failures: FailureLimiter | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        state_dir: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        max_name_leases: int = DEFAULT_MAX_NAME_LEASES,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if auth is None and (secret is not None or auth_clients):
            auth = Authenticator(secret=secret, clients=auth_clients)  # type: ignore[arg-type]
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        if port_range is not None:
            low, high = port_range
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"port_range must be 1 <= low <= high <= 65535, got {port_range}")
        if max_sessions < 1 or max_connections < 1:
            raise ValueError("max_sessions and max_connections must be at least 1")
        self._requested_port = port
        self.host = host
        self.port_range = port_range
        self.max_sessions = max_sessions
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.yamux_config = yamux_config or yamux.Config()
        self.limits = limits or Limits()
        self._registering = SourceSlots(
            share(self.limits.max_pending_registrations_per_source, max_sessions))
        self._connections_per_source = share(self.limits.max_connections_per_source,
                                             max_connections)
        self._idle = IdleWatch(self.limits.idle_timeout, self._idle_connection)
        self._log = RateLimitedLog(logger)
        """Lines any stranger can trigger: refused and failed registrations."""
        self._challenge_log = RateLimitedLog(registration_logger)
        """Refused v2 registrations: a stranger must not be able to write our log."""
        self.auth = auth
        # Leases are kept per name, which only registration v2 carries: a state dir, like
        # authentication, turns it on.
        self.protocol = "v2" if auth is not None or state_dir is not None else protocol
        self.ssl = ssl
        self.auth_failures = auth_failures or FailureLimiter()
        self.max_pending = max_pending
        self._pending: set[ChallengeProtocol] = set()
        self._auth_watch: asyncio.Task[None] | None = None
        self.state_dir = state_dir
        self.lease_ttl = lease_ttl
        self.max_name_leases = max_name_leases
        self._bind: BindAddress | None = None
        self._control: asyncio.Server | None = None
        self._ports: PortAllocator | None = None
        self._lease_refresh: asyncio.Task[None] | None = None
        self._replacements: set[asyncio.Task[None]] = set()
        self._registrations: dict[int, _Registration] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._serving: asyncio.Future[None] | None = None
        self.stats = RelayStats()
        """Counters for metrics (``relay.metrics``)."""
        self.draining = False

    # ----------------------------------------------------------------- public
    async def start(self) -> None:
        """Bind the control port and start accepting registrations."""
        loop = asyncio.get_running_loop()
        self._bind = resolve_bind_address(self.host)
        leases = LeaseStore.open(self.state_dir, self.lease_ttl)
        try:
            sock = self._bind.listen(self._requested_port)
            try:
                self._control = await loop.create_server(
                    self._control_protocol, sock=sock, backlog=LISTEN_BACKLOG, ssl=self.ssl,
                    ssl_handshake_timeout=self.handshake_timeout if self.ssl else None,
                )
            except BaseException:
                sock.close()
                raise
        except BaseException:
            leases.close()
            raise
        self._ports = PortAllocator(self._bind, self.port_range, leases, self.max_name_leases)
        self._lease_refresh = loop.create_task(self._refresh_leases(), name="relay-leases")
        self._serving = loop.create_future()
        if self.auth is not None and self.auth.auth_file is not None:
            self._auth_watch = loop.create_task(
                watch_auth_file(self.auth, self._revoke), name="relay-auth-file")
        logger.info("Serving relay requests on port %d", self.port,
                    extra={"control_port": self.port})
        if self.auth is None and not self._bind.is_loopback():
            logger.warning(
                "the relay listens on %s without authentication: anyone who can reach port %d "
                "gets a public port (use --secret or --auth-file)", self._bind, self.port)
        logger.debug(
            "bound to %s; %s; at most %d sessions of %d connections each; "
            "registration %s%s%s", self._bind, self._ports.describe(),
            self.max_sessions, self.max_connections, self.protocol,
            f", {self.auth!r}" if self.auth else "", ", TLS" if self.ssl else "",
        )

    @property
    def port(self) -> int:
        """The control port."""
        return listening_port(self._control)

    @property
    def sessions(self) -> list[SessionInfo]:
        return [
            SessionInfo(r.id, r.peer, r.public_port, r.confirmed, len(r.connections),
                        since=r.traffic.since, bytes_in=r.traffic.bytes_in,
                        bytes_out=r.traffic.bytes_out, streams=r.session.num_streams,
                        rtt=r.session.last_rtt, stalls=r.traffic.stalls,
                        client=r.request.client if r.request else None)
            for r in self._registrations.values()
        ]

    async def serve_forever(self) -> None:
        """Run until cancelled (then close) or until ``close()``."""
        if self._serving is None:
            await self.start()
        assert self._serving is not None
        try:
            await asyncio.shield(self._serving)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def close(self) -> None:
        """Stop accepting registrations and end every session (Go Away, then close)."""
        if self._closing:
            return
        self._closing = True
        self._idle.close()
        self._log.summary(logging.WARNING, "relay")
        self._challenge_log.summary(logging.WARNING, "relay")
        if self._control is not None:
            self._control.close()
        if self._lease_refresh is not None:
            self._lease_refresh.cancel()
        for task in self._replacements:
            task.cancel()
        for gate in list(self._pending):
            gate.abort()
        if self._auth_watch is not None:
            self._auth_watch.cancel()
        for reg in list(self._registrations.values()):
            if reg.ending:  # already cleaning up; let it finish
                continue
            reg.end_reason = reg.end_reason or "relay shutting down"
            if reg.task is not None:
                reg.task.cancel()
        if self._serving is not None and not self._serving.done():
            self._serving.set_result(None)

    def drain(self) -> None:
        """Stop taking registrations and public connections at once, and send Go Away to
        every session; connections in flight go on (``relay.drain`` waits for them)."""
        if self.draining or self._closing:
            return
        self.draining = True
        if self._control is not None:
            self._control.close()
        for reg in self._registrations.values():
            self._stop_listening(reg)
            reg.session.go_away()

    async def wait_idle(self) -> None:
        """Until no public connection is open (for a drain)."""
        while busy := [r.traffic for r in self._registrations.values()
                       if r.traffic.open_connections]:
            await busy[0].wait_idle()

    def _stop_listening(self, reg: _Registration) -> None:
        if reg.listener is not None:
            reg.listener.close()

    async def wait_closed(self) -> None:
        if self._control is not None:
            await self._control.wait_closed()
        if self._auth_watch is not None:
            await asyncio.wait([self._auth_watch])
        while self._registrations:
            regs = list(self._registrations.values())
            tasks = [r.task for r in regs if r.task is not None and not r.task.done()]
            if tasks:
                await asyncio.wait(tasks)
            for reg in regs:  # a task cancelled before it ever ran did not clean up
                await self._end(reg)
        if self._lease_refresh is not None:
            await asyncio.wait([self._lease_refresh])
        if self._replacements:
            await asyncio.wait(self._replacements)
        if self._ports is not None:
            self._ports.leases.close()

    async def __aenter__(self) -> RelayServer:
        if self._serving is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # ----------------------------------------------------------- registering
    def _control_protocol(self) -> asyncio.Protocol:
        if self.protocol == "yamux":
            return _ControlProtocol(self)
        return ChallengeProtocol(
            auth=self.auth, failures=self.auth_failures, timeout=self.handshake_timeout,
            peer=_peer, accepted=self._registration_made, pending=self._pending,
            max_pending=self.max_pending, per_source=self._registering,
            busy_reason=self._busy_reason, log=self._challenge_log,
        )

    def _registration_made(
        self, transport: asyncio.Transport, request: RegistrationRequest | None = None,
        *, lease: bool = True,
    ) -> None:
        """Allocate for a registration: seed at once, v2 once its proof is checked.

        ``lease=False``: a second live session of an authenticated client gets a port
        of its own, without touching the lease of the first (see ``_replace``).

        The source's slot of unfinished registrations (``_registering``) is taken here
        for the seed protocol; a v2 registration has held it since its connection
        arrived (``ChallengeProtocol``). Either way it is released when the yamux ping
        is answered or the registration ends.
        """
        peer = _peer(transport)
        source = source_of(transport.get_extra_info("peername"))
        if request is None and not self._registering.acquire(source):
            self._refuse(transport, peer, "registrations in handshake per source",
                         self._busy_reason(source))
            return
        if self._closing:
            self._registering.release(source)
            transport.abort()
            return
        if self.draining:
            self._refuse(transport, peer, "draining", "relay is shutting down")
            return
        if len(self._registrations) >= self.max_sessions:
            self._registering.release(source)
            self._refuse(
                transport, peer, "relay full",
                f"relay is full: {len(self._registrations)} sessions, the maximum "
                f"(--max-sessions {self.max_sessions})",
            )
            return
        assert self._ports is not None
        wanted = port_request(request)
        if not lease:
            wanted = PortRequest(None, wanted.port, wanted.allowed)
        try:
            self._ports.check(wanted)
        except PortRefusedError as exc:
            self._registering.release(source)
            self._refuse(transport, peer, "port refused", str(exc))
            return
        if wanted.identity is not None:
            holder = self._holder(wanted.identity)
            if holder is not None:  # decided after a ping; _registration_made runs again then
                self._replacing(self._replace(transport, request, source, wanted.identity,
                                              holder))
                return
        try:
            sock = self._ports.allocate(wanted)
        except PortRefusedError as exc:
            self._registering.release(source)
            self._refuse(transport, peer, "port refused", str(exc))
            return
        except OSError as exc:
            self._registering.release(source)
            self._refuse(transport, peer, "no public port", f"cannot open a public port: {exc}")
            return
        public_port = int(sock.getsockname()[1])
        transport.write(port_line(public_port))
        session = yamux.Session.attach(transport, client=True, config=self.yamux_config)
        reg = _Registration(next(self._ids), peer, public_port, sock, session, source,
                            SourceSlots(self._connections_per_source), request,
                            wanted.identity)
        self._registrations[reg.id] = reg
        self.stats.sessions_total += 1
        loop = asyncio.get_running_loop()
        # The handshake ping goes out right after the port line (its task runs before the
        # loop polls again), so a registering side sees exactly: port line, yamux ping.
        reg.handshake = loop.create_task(session.ping(), name=f"relay-handshake-{reg.id}")
        reg.handshake.add_done_callback(_retrieve)
        reg.task = loop.create_task(self._run(reg), name=f"relay-session-{reg.id}")

    def _holder(self, identity: Identity) -> _Registration | None:
        for reg in self._registrations.values():
            if reg.identity == identity and not reg.ending:
                return reg
        return None

    def _replacing(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="relay-replace")
        self._replacements.add(task)
        task.add_done_callback(self._replacements.discard)

    async def _replace(self, transport: asyncio.Transport, request: RegistrationRequest | None,
                       source: str, identity: Identity, holder: _Registration) -> None:
        """``identity`` registers again while its old session looks alive: is it?"""
        try:
            async with asyncio.timeout(REPLACE_PING_TIMEOUT):
                await holder.session.ping()
        except (TimeoutError, yamux.YamuxError):
            pass
        except asyncio.CancelledError:  # the relay is closing
            self._registering.release(source)
            transport.abort()
            raise
        else:
            if not holder.ending and identity.authenticated:
                # An authenticated client may run several services at once.
                logger.info("%s already has a live session on public port %d; this one gets "
                            "a port of its own, without a lease", identity, holder.public_port)
                if not transport.is_closing():
                    self._registration_made(transport, request, lease=False)
                else:
                    self._registering.release(source)
                return
            if not holder.ending:
                self._registering.release(source)
                self._refuse(transport, _peer(transport), "name in use",
                             f"{identity} is already registered (public port "
                             f"{holder.public_port}) and that session is alive")
                return
        logger.info("session %d: %s registers again from %s; ending the old session, which "
                    "did not answer a ping", holder.id, identity, _peer(transport))
        holder.end_reason = holder.end_reason or "replaced by a new registration of its owner"
        if holder.task is not None:
            holder.task.cancel()
            try:
                await asyncio.wait([holder.task])
            except asyncio.CancelledError:
                self._registering.release(source)
                transport.abort()
                raise
        if transport.is_closing():
            self._registering.release(source)
            return
        self._registration_made(transport, request)  # still holding the source's slot

    def _revoke(self, names: set[str]) -> None:
        """End the sessions of clients whose auth-file entry was removed or changed."""
        for reg in list(self._registrations.values()):
            client = reg.request.client if reg.request is not None else None
            if client in names and reg.request is not None and reg.request.authenticated \
                    and not reg.ending and reg.task is not None:
                reg.end_reason = (f"client {client} was removed from the auth file or its "
                                  f"secret or ports changed")
                reg.task.cancel()

    def _busy_reason(self, source: str) -> str:
        return (f"{self._registering.held(source)} registrations from {source} are still in "
                f"their handshake, the maximum (--max-pending-registrations-per-source "
                f"{self._registering.limit})")

    def _refuse(self, transport: asyncio.Transport, peer: str, kind: str, reason: str) -> None:
        """Answer an error line and close; the log line is rate-limited per ``kind``, which
        is also the reason label of the refusals metric."""
        self.stats.refused[kind.replace(" ", "_")] += 1
        self._log.log(logging.WARNING, f"refused: {kind}", "refusing registration from %s: %s",
                      peer, reason, extra={"peer": peer, "reason": reason})
        transport.write(error_line(reason))
        transport.close()

    async def _run(self, reg: _Registration) -> None:
        session = reg.session
        try:
            reg.listener = await asyncio.get_running_loop().create_server(
                partial(SocketEnd, partial(self._public_connection, reg)), sock=reg.sock,
                backlog=LISTEN_BACKLOG,
            )
            logger.debug("session %d from %s: public port %d, waiting for the handshake ping",
                         reg.id, reg.peer, reg.public_port)
            assert reg.handshake is not None
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    rtt = await reg.handshake
            except TimeoutError:
                reg.end_reason = (
                    f"no answer to the yamux ping within {self.handshake_timeout:g} s "
                    f"(stalled, or not a yamux peer)"
                )
                return
            reg.confirmed = True
            self._registering.release(reg.source)
            # Logged once confirmed: a flood of failed handshakes goes through self._log.
            logger.info("session %d from %s%s: public port %d (ping %.1f ms)", reg.id, reg.peer,
                        f" ({reg.request.describe()})" if reg.request else "", reg.public_port,
                        rtt * 1000, extra=reg.log_fields())
            rejecting = asyncio.get_running_loop().create_task(
                self._reject_streams(reg), name=f"relay-reject-{reg.id}")
            try:
                # Go Away from the registered side: no stream can be opened any more, so
                # the public port is useless; free it now, not at the next connection.
                await session.wait_go_away()
                reg.end_reason = "the registered side sent go away"
            finally:
                rejecting.cancel()
                await asyncio.wait([rejecting])
        except yamux.SessionClosedError:
            pass
        finally:
            await self._end(reg)

    async def _reject_streams(self, reg: _Registration) -> None:
        """Streams go one way only (relay -> registered side); reset any the other way."""
        async for stream in reg.session:
            reg.log.log(
                logging.WARNING, "stream from the registered side",
                "session %d: the registered side opened stream %d, which this protocol "
                "does not use; resetting it", reg.id, stream.id, extra=reg.log_fields(),
            )
            stream.reset()

    async def _end(self, reg: _Registration) -> None:
        """Free everything of a session: the listener first, so the port is free at once."""
        if reg.ending:
            return
        reg.ending = True
        if not reg.confirmed:
            self._registering.release(reg.source)
        if reg.handshake is not None:
            reg.handshake.cancel()
        if reg.listener is not None:
            reg.listener.close()
        else:
            reg.sock.close()
        assert self._ports is not None
        self._ports.release(reg.public_port)
        reg.connections.cancel()
        closed_by_peer = reg.session.closed
        try:
            await reg.session.close()
            await reg.connections.wait()
        finally:
            self._registrations.pop(reg.id, None)
            self.stats.session_ended(reg.traffic)
        if reg.end_reason is None:
            reg.end_reason = describe_end(reg.session.close_reason if closed_by_peer else None)
        what = f"session {reg.id} from {reg.peer}"
        reg.log.summary(logging.WARNING, what)
        fields = {**reg.log_fields(), "reason": reg.end_reason}
        if reg.confirmed or self._closing:
            logger.info("%s ended: %s; public port %d closed",
                        what, reg.end_reason, reg.public_port, extra=fields)
        else:  # anyone can make these: rate-limited like refusals, per kind of failure
            cause = reg.session.close_reason if closed_by_peer else None
            kind = type(cause).__name__ if cause is not None else "no answer"
            self._log.log(logging.WARNING, f"failed handshake: {kind}",
                          "%s ended: %s; public port %d closed",
                          what, reg.end_reason, reg.public_port, extra=fields)

    async def _refresh_leases(self) -> None:
        """Registered owners keep their leases fresh, so a relay crash does not age them."""
        assert self._ports is not None
        interval = min(LEASE_REFRESH_INTERVAL, self.lease_ttl / 4)
        while True:
            await asyncio.sleep(interval)
            active = self._ports.active_keys()
            self._ports.leases.touch(active)
            self._ports.leases.expire(active)

    # ----------------------------------------------------- public connections
    def _public_connection(self, reg: _Registration, end: SocketEnd) -> None:
        transport = end.transport
        assert transport is not None
        if reg.ending or reg.session.closed:
            end.abort()
            return
        peername = transport.get_extra_info("peername")
        if len(reg.connections) >= self.max_connections:
            reg.log.log(
                logging.WARNING, "public refused: max connections",
                "session %d: refusing a public connection from %s: %d open, the maximum "
                "(--max-connections %d)", reg.id, _peer(transport), len(reg.connections),
                self.max_connections, extra=reg.log_fields(),
            )
            self.stats.connections_refused["max_connections"] += 1
            end.abort()
            return
        source = source_of(peername)
        if not reg.sources.acquire(source):
            reg.log.log(
                logging.WARNING, "public refused: per source",
                "session %d: refusing a public connection from %s: %d open from %s, the "
                "maximum (--max-connections-per-source %d)", reg.id, _peer(transport),
                reg.sources.held(source), source, reg.sources.limit, extra=reg.log_fields(),
            )
            self.stats.connections_refused["per_source"] += 1
            end.abort()
            return
        result = reg.traffic.opened()
        self.stats.connections_total += 1
        task = reg.connections.spawn(
            self._relay_connection(reg, end, peername, result), name=reg.connection_task_name
        )
        self._idle.watch(end)
        task.add_done_callback(partial(self._connection_done, reg, end, source, result))

    def _connection_done(self, reg: _Registration, end: SocketEnd, source: str,
                         result: PipeResult, task: asyncio.Task[None]) -> None:
        reg.sources.release(source)
        self._idle.forget(end)
        reg.traffic.closed(result)

    def _idle_connection(self, end: SocketEnd) -> None:
        logger.debug("resetting public connection from %s: idle for %g s (--idle-timeout)",
                     _peer(end.transport) if end.transport is not None else "?",
                     self.limits.idle_timeout)
        end.abort()

    async def _relay_connection(self, reg: _Registration, end: SocketEnd, peername: object,
                                result: PipeResult) -> None:
        """Open the stream and pipe; the per-connection line is only built if it is logged."""
        started = time.monotonic()
        try:
            stream = await reg.session.open_stream()
        except asyncio.CancelledError:
            end.abort()
            raise
        except yamux.TooManyStreamsError as exc:
            reg.log.log(logging.WARNING, "public refused: streams",
                        "session %d: refusing a public connection: %s", reg.id, exc,
                        extra=reg.log_fields())
            end.abort()
            return
        except yamux.SessionClosedError:
            end.abort()
            return
        except yamux.SessionError as exc:  # go away, stream ids exhausted: the session is done
            end.abort()
            reg.end_reason = f"cannot open streams any more: {exc}"
            await reg.session.close()
            return
        if reg.request is not None and reg.request.client_address and end.transport is not None:
            stream.write(v2_header(addresses_of(
                peername, end.transport.get_extra_info("sockname"))))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("session %d: public connection from %s on stream %d", reg.id,
                         _format_peer(peername), stream.id)
        await pipe(end, stream, result)
        if not connections_logger.isEnabledFor(logging.INFO):
            return
        peer = _format_peer(peername)
        connections_logger.info(
            "session %d: connection from %s on stream %d closed: %d bytes in, %d out%s",
            reg.id, peer, stream.id, result.sent, result.received,
            f" ({result.error})" if result.error else "",
            extra={**reg.log_fields(), "peer": peer, "stream": stream.id,
                   "bytes_in": result.sent, "bytes_out": result.received,
                   "duration": round(time.monotonic() - started, 6),
                   "reason": str(result.error) if result.error else "closed"},
        )
