"""The relay server, ``relay <localport>``.

Each connection to the control port registers a service: the relay opens a
public listener for it, sends the port line (see ``relay.wire.greeting``), and
switches the connection to a yamux session in the client role. Every public
connection then becomes one stream on that session, piped both ways by
``relay.pipe``.

With a secret, an auth file or ``protocol="v2"`` the relay first challenges
(``relay.server.challenge``, docs/protocol.md) and allocates only for a checked
response, honouring its ``RegistrationRequest`` (remote port, the client's
allowed ports, the client address at the start of each stream).

A registration is confirmed when the registered side answers a yamux ping
within ``handshake_timeout``; garbage ends the session at once (protocol
error), silence at the timeout. Whenever a session ends, for whatever reason,
its public listener is closed at once and its public connections are reset, so
the port is free again. What a stranger can make the relay allocate is bounded:
``max_sessions`` registrations (each one listener), ``max_connections`` public
connections per session, and per stream the yamux window; ``relay.server.limits`` adds
per-source shares of those and the idle timeout.

This module admits registrations (admission places, allocation, refusals) and
keeps the registry of sessions; ``relay.server.session`` runs and ends one
registered session, ``relay.server.public`` carries each public connection, and
``relay.server.replacement`` decides what happens when an identity registers again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import (
    LISTEN_BACKLOG,
    BindAddress,
    listening_port,
    peer_of,
    resolve_bind_address,
)
from ..options import OptionError, RelayOptions
from ..options.declare import takes_options
from ..stats import RelayStats
from ..wire.greeting import port_line
from ..wire.refusal import RETRY
from .admission import Admission, Refused
from .auth import Authenticator, watch_auth_file
from .challenge import ChallengeProtocol
from .challenge import logger as registration_logger
from .failures import FailureLimiter
from .interface import SessionInfo
from .leases import Identity, LeaseStore
from .limits import SourceSlots, share, source_of
from .places import Place
from .ports import PortAllocator, PortRefusedError
from .public import PublicConnections
from .replacement import Decision, holder_of, settle
from .request import SEED, ProtocolName, RegistrationRequest
from .session import RegisteredSession
from .tls_listener import TLSListener

__all__ = ["RelayServer"]

logger = logging.getLogger("relay.server")

LEASE_REFRESH_INTERVAL = 60.0
"""Seconds between saving "still in use" for the leases of registered sessions (at most)."""


def _replaced(transport: asyncio.Transport, place: Place, task: asyncio.Task[None]) -> None:
    """The end of a replacement, even one cancelled before it ran (the relay is closing):
    the newcomer's place goes back unless it went on to its session, and a newcomer left
    undecided is dropped."""
    place.release()
    if task.cancelled() or task.exception() is not None:
        transport.abort()


class _SeedProtocol(asyncio.Protocol):
    """A new connection on a seed relay's control port; it is handed over to yamux at once."""

    def __init__(self, relay: RelayServer, place: Place | None = None) -> None:
        self._relay = relay
        self._place = place
        """The place it holds already (after a TLS handshake), or None."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._relay.registration_made(transport, SEED, self._place)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        """Only reached by a refused connection that is being closed: ignore."""

    def eof_received(self) -> bool:
        return False


class RelayServer:
    """``relay <port>`` as an object: ``await start()``, then ``close()`` / ``wait_closed()``.

    ``port`` is the control port (0: the OS chooses; see ``.port`` after start).
    ``options`` and the keywords are ``RelayOptions`` (``relay server``'s flags):
    ``bind`` is the address of the control port and of every public listener
    (None: every interface, IPv4 and IPv6), ``port_range`` restricts public
    ports, ``state_dir`` keeps the port leases across relay restarts and implies
    registration v2; a lease unused for ``lease_ttl`` seconds ends (see
    ``relay.server.leases`` and ``relay.server.ports``).

    ``protocol="v2"``, or any of ``secret`` / ``secret_file`` / ``auth_file`` /
    ``auth_clients``, makes the relay challenge every control connection first
    (registration v2, see docs/protocol.md): nothing is allocated before the
    response is checked. ``tls_cert`` (or ``ssl``) wraps the control port (and so
    all relayed traffic) in TLS; a connection in its handshake already counts as a
    pending registration (``relay.server.tls_listener``). ``auth_failures`` counts
    failed registrations (a ``relay.server.failures.FailureLimiter`` of one's own, e.g.
    to share it).
    """

    @takes_options(RelayOptions)
    def __init__(
        self,
        port: int = 0,
        options: RelayOptions | None = None,
        *,
        auth_failures: FailureLimiter | None = None,
        **keywords: Any,
    ) -> None:
        checked = RelayOptions.build(options, **keywords).with_files_read()
        protocol = checked.protocol
        if protocol == "notify":
            raise OptionError("protocol", "is NotifyRelay's, not RelayServer's", protocol)
        self.options = checked
        """As given, checked, with the secret file read and the TLS context made."""
        self.auth: Authenticator | None = None
        if checked.secret is not None or checked.auth_clients or checked.auth_file is not None:
            self.auth = Authenticator(
                secret=checked.secret, clients=checked.auth_clients, auth_file=checked.auth_file
            )
        self._requested_port = port
        self.yamux_config = checked.session_config()
        self._connections_per_source = share(
            checked.max_connections_per_source, checked.max_connections
        )
        self.stats = RelayStats()
        """Counters for metrics (``relay.ops.metrics``)."""
        self.public = PublicConnections(self.stats, checked)
        self._challenge_log = RateLimitedLog(registration_logger)
        """Refused v2 registrations: a stranger must not be able to write our log."""
        # Leases are kept per name, which only registration v2 carries: a state dir, like
        # authentication, turns it on.
        self.protocol: ProtocolName = (
            "v2" if self.auth is not None or checked.state_dir is not None else protocol
        )
        named = checked.auth_file is not None or bool(checked.auth_clients)
        self.admission = Admission(
            max_pending=checked.max_pending,
            per_source=share(checked.max_pending_registrations_per_source, checked.max_sessions),
            max_tls_handshakes=checked.max_tls_handshakes,
            failures=(
                FailureLimiter(max_keys=checked.max_failure_sources)
                if auth_failures is None
                else auth_failures
            ),
            block_at_connect=not named,
            stats=self.stats,
            log=RateLimitedLog(logger),
        )
        self._bind: BindAddress | None = None
        self._control: asyncio.Server | TLSListener | None = None
        self._ports: PortAllocator | None = None
        self._tasks = yamux.TaskOwner(logger)
        """The lease refresh, the auth-file watch and the replacements (``_replace``)."""
        self._sessions: dict[int, RegisteredSession] = {}
        """The registry: every session from its port line until it has closed everything."""
        self._ids = itertools.count(1)
        self.closing = False
        self._serving: asyncio.Future[None] | None = None
        self.draining = False

    # ----------------------------------------------------------------- public
    async def start(self) -> None:
        """Bind the control port and start accepting registrations."""
        loop = asyncio.get_running_loop()
        self._bind = resolve_bind_address(self.options.bind)
        leases = LeaseStore.open(self.options.state_dir, self.options.lease_ttl)
        try:
            sock = self._bind.listen(self._requested_port)
            try:
                self._control = await self._listen(sock)
            except BaseException:
                sock.close()
                raise
        except BaseException:
            leases.close()
            raise
        self._ports = PortAllocator(
            self._bind, self.options.port_range, leases, self.options.max_name_leases
        )
        self._tasks.spawn(self._refresh_leases(), name="relay-leases")
        self._serving = loop.create_future()
        if self.auth is not None and self.auth.auth_file is not None:
            self._tasks.spawn(watch_auth_file(self.auth, self._revoke), name="relay-auth-file")
        logger.info(
            "Serving relay requests on port %d", self.port, extra={"control_port": self.port}
        )
        if self.auth is None and not self._bind.is_loopback():
            logger.warning(
                "the relay listens on %s without authentication: anyone who can reach port %d "
                "gets a public port (use --secret or --auth-file)",
                self._bind,
                self.port,
            )
        logger.debug(
            "bound to %s; %s; at most %d sessions of %d connections each; registration %s%s%s",
            self._bind,
            self._ports.describe(),
            self.options.max_sessions,
            self.options.max_connections,
            self.protocol,
            f", {self.auth!r}" if self.auth else "",
            ", TLS" if self.options.ssl else "",
        )

    @property
    def port(self) -> int:
        """The control port."""
        return listening_port(self._control)

    @property
    def sessions(self) -> list[SessionInfo]:
        return [session.info() for session in self._sessions.values()]

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
        if self.closing:
            return
        self.closing = True
        self.public.close()
        self.admission.log.summary(logging.WARNING, "relay")
        self._challenge_log.summary(logging.WARNING, "relay")
        if self._control is not None:
            self._control.close()
        self._tasks.cancel()
        self.admission.abort_pending()
        for session in list(self._sessions.values()):
            session.end("relay shutting down")
        if self._serving is not None and not self._serving.done():
            self._serving.set_result(None)

    def drain(self) -> None:
        """Stop taking registrations and public connections at once, and send Go Away to
        every session; connections in flight go on (``relay.ops.drain`` waits for them)."""
        if self.draining or self.closing:
            return
        self.draining = True
        if self._control is not None:
            self._control.close()
        for session in self._sessions.values():
            session.drain()

    async def wait_idle(self) -> None:
        """Until no public connection is open (for a drain)."""
        while busy := [s.traffic for s in self._sessions.values() if s.traffic.open_connections]:
            await busy[0].wait_idle()

    async def wait_closed(self) -> None:
        if self._control is not None:
            await self._control.wait_closed()
        while self._sessions:
            await next(iter(self._sessions.values())).wait_closed()
        await self._tasks.wait()
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
    async def _listen(self, sock: socket.socket) -> asyncio.Server | TLSListener:
        """The control port: plain TCP, or TLS with each connection counted from accept on."""
        if self.options.ssl is None:
            return await asyncio.get_running_loop().create_server(
                self._control_protocol, sock=sock, backlog=LISTEN_BACKLOG
            )
        listener = TLSListener(
            sock,
            self.options.ssl,
            timeout=self.options.tls_handshake_timeout,
            admission=self.admission,
            protocol_factory=self._control_protocol,
            log=self.admission.log,
        )
        listener.start()
        return listener

    def _control_protocol(self, place: Place | None = None) -> asyncio.Protocol:
        """The protocol of a control connection; ``place``: the one it holds already (after
        its TLS handshake)."""
        if self.protocol == "seed":
            return _SeedProtocol(self, place)
        return ChallengeProtocol(
            auth=self.auth,
            admission=self.admission,
            timeout=self.options.answer_timeout,
            accepted=self.registration_made,
            log=self._challenge_log,
            place=place,
        )

    def registration_made(
        self,
        transport: asyncio.Transport,
        request: RegistrationRequest = SEED,
        place: Place | None = None,
    ) -> None:
        """Allocate for a registration: seed at once, v2 once its proof is checked.

        ``place`` is its admission place: a v2 registration has held one since its
        connection arrived (``ChallengeProtocol``), as has any registration over TLS; a
        plaintext seed one takes it here. It is released on every way out of here, unless
        handed over to the new session (which gives it back once its handshake ping is
        answered) or to ``_replace``.
        """
        peer = peer_of(transport)
        if place is None:
            source = source_of(transport.get_extra_info("peername"))
            admitted = self.admission.admit(source, lambda reason: transport.abort())
            if isinstance(admitted, Refused):
                self.admission.refuse(transport, peer, admitted)
                return
            place = admitted
        with place:
            self._register(transport, peer, request, place)

    def _register(
        self, transport: asyncio.Transport, peer: str, request: RegistrationRequest, place: Place
    ) -> None:
        if self.closing:
            transport.abort()
            return
        if self.draining:
            self.admission.refuse(
                transport, peer, Refused("draining", "relay is shutting down", RETRY)
            )
            return
        if len(self._sessions) >= self.options.max_sessions:
            reason = (
                f"relay is full: {len(self._sessions)} sessions, the maximum "
                f"(--max-sessions {self.options.max_sessions})"
            )
            self.admission.refuse(transport, peer, Refused("relay full", reason, RETRY))
            return
        ports = self.allocator
        try:
            ports.check(request)
        except PortRefusedError as exc:
            self.admission.refuse(transport, peer, Refused("port refused", str(exc), exc.kind))
            return
        identity = request.identity
        if identity is not None:
            holder = holder_of(self._sessions.values(), identity)
            if holder is not None:  # decided after a ping; registration_made runs again then
                newcomer = place.hand_over()
                newcomer.hold(lambda reason: transport.abort())
                self._tasks.spawn(
                    self._replace(transport, request, newcomer, identity, holder),
                    name="relay-replace",
                    on_done=partial(_replaced, transport, newcomer),
                )
                return
        try:
            sock = ports.allocate(request)
        except PortRefusedError as exc:
            self.admission.refuse(transport, peer, Refused("port refused", str(exc), exc.kind))
            return
        except OSError as exc:
            reason = f"cannot open a public port: {exc}"
            self.admission.refuse(transport, peer, Refused("no public port", reason, RETRY))
            return
        transport.write(port_line(int(sock.getsockname()[1])))
        session = RegisteredSession(
            next(self._ids),
            peer,
            request,
            sock,
            yamux.Session.attach(transport, client=True, config=self.yamux_config),
            place.hand_over(),
            SourceSlots(self._connections_per_source),
            self,
        )
        self._sessions[session.id] = session
        self.stats.sessions_total += 1
        session.start()

    async def _replace(
        self,
        transport: asyncio.Transport,
        request: RegistrationRequest,
        place: Place,
        identity: Identity,
        holder: RegisteredSession,
    ) -> None:
        """``identity`` registers again while ``holder`` has it (``relay.server.replacement``);
        the newcomer keeps its admission place throughout (``_replaced``)."""
        decision = await settle(holder, identity, peer_of(transport))
        if decision is Decision.REFUSE:
            reason = (
                f"{identity} is already registered (public port "
                f"{holder.public_port}) and that session is alive"
            )
            self.admission.refuse(
                transport, peer_of(transport), Refused("name in use", reason, RETRY)
            )
            return
        if decision is Decision.OWN_PORT:
            request = replace(request, lease=False)
        if not transport.is_closing():
            self.registration_made(transport, request, place.hand_over())

    def _revoke(self, names: set[str]) -> None:
        """End the sessions of clients whose auth-file entry was removed or changed."""
        for session in list(self._sessions.values()):
            client = session.request.client
            if client in names and session.request.authenticated:
                session.end(
                    f"client {client} was removed from the auth file or its secret or ports changed"
                )

    # ------------------------------------------- what a session needs of us
    @property
    def handshake_timeout(self) -> float:
        return self.options.handshake_timeout

    @property
    def log(self) -> RateLimitedLog:
        return self.admission.log

    def public_protocol(self, session: RegisteredSession) -> Callable[[], asyncio.Protocol]:
        return self.public.protocol_for(session)

    def forget(self, session: RegisteredSession) -> None:
        self._sessions.pop(session.id, None)
        self.stats.session_ended(session.traffic)

    @property
    def allocator(self) -> PortAllocator:
        """The public ports (after ``start()``)."""
        assert self._ports is not None
        return self._ports

    async def _refresh_leases(self) -> None:
        """Registered owners keep their leases fresh, so a relay crash does not age them."""
        assert self._ports is not None
        interval = min(LEASE_REFRESH_INTERVAL, self.options.lease_ttl / 4)
        while True:
            await asyncio.sleep(interval)
            active = self._ports.active_keys()
            self._ports.leases.touch(active)
            self._ports.leases.expire(active)
