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
the port is free again. With ``domain`` a registration may ask to be reached by
name on a shared port instead (``relay.server.shared_ports``, ``.routes``).
What a stranger can make the relay allocate is bounded:
``max_sessions`` registrations (each one listener), ``max_connections`` public
connections per session, and per stream the yamux window; ``relay.server.limits`` adds
per-source shares of those and the idle timeout.

This module admits registrations (admission places) and keeps the registry of
sessions; ``relay.server.registrar`` takes a checked registration to its session
(its identity claimed, its port allocated), ``relay.server.session`` runs and ends
one registered session, ``relay.server.public`` carries each public connection, and
``relay.server.replacement`` pings the sessions an identity that registers again holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from typing import Any

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import (
    BindAddress,
    listening_port,
    peer_of,
    resolve_bind_address,
)
from ..options import OptionError, RelayOptions
from ..options.declare import takes_options
from ..stats import RelayStats
from .accept import Acceptor, ProtocolListener, accept_log
from .admission import Admission, Refused
from .auth_file import authentication, reload_auth_file, watch_auth_file
from .challenge import ChallengeProtocol
from .challenge import logger as registration_logger
from .control import SeedProtocol, listen
from .failures import FailureLimiter
from .identities import IdentityTable
from .interface import AuthFileStatus, Readiness, SessionInfo
from .limits import check_descriptors, share, source_of
from .membership import StoreKeeper, open_store, shared_failures
from .places import Place
from .ports import PortAllocator
from .protection import log_start
from .public import PublicConnections
from .registrar import HandOff, Registrar
from .replacement import settle
from .request import SEED, ProtocolName, RegistrationRequest
from .session import RegisteredSession
from .shared_failures import SharedFailureLimiter
from .shared_ports import SharedPorts
from .siblings import WorkerRole, open_shared_store
from .store_health import store_readiness
from .tls_listener import TLSListener

__all__ = ["RelayServer"]

logger = logging.getLogger("relay.server")

RETIRE_TIMEOUT = 30.0
"""A session retired to spread its service over the workers ends after this at most."""


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
    to share it). ``worker`` makes it one of several processes that share the control
    port (see ``relay.server.siblings``); the options' ``workers`` is the supervisor's.
    """

    @takes_options(RelayOptions)
    def __init__(
        self,
        port: int = 0,
        options: RelayOptions | None = None,
        *,
        auth_failures: FailureLimiter | None = None,
        worker: WorkerRole | None = None,
        **keywords: Any,
    ) -> None:
        checked = RelayOptions.build(options, **keywords).with_files_read()
        protocol = checked.protocol
        if protocol == "notify":
            raise OptionError("protocol", "is NotifyRelay's, not RelayServer's", protocol)
        if checked.workers != 1 and worker is None:
            raise OptionError(
                "workers",
                "a RelayServer is one process; `relay server --workers N` runs N of them",
                checked.workers,
            )
        self.worker = worker
        self.options = checked
        """As given, checked, with the secret file read and the TLS context made."""
        self.auth_file, self.auth = authentication(checked)
        """The auth file (re-read while the relay runs); who may register (None: anyone)."""
        self._requested_port = port
        self.yamux_config = checked.session_config()
        self.stats = RelayStats()
        """Counters for metrics (``relay.ops.metrics``)."""
        self.accept_log = accept_log()
        """Where every listener of this relay says that accept() fails (out of descriptors)."""
        self.public = PublicConnections(self.stats, checked, self.accept_log)
        self._challenge_log = RateLimitedLog(registration_logger)
        """Refused v2 registrations: a stranger must not be able to write our log."""
        # Leases are kept per name, which only registration v2 carries: a state dir or a
        # cluster, like authentication, turns it on.
        leases = checked.state_dir is not None or checked.cluster is not None
        names = checked.domain is not None
        v2 = self.auth is not None or leases or names
        self.protocol: ProtocolName = "v2" if v2 else protocol
        self.shared = (
            None
            if not names
            else SharedPorts(checked, self.public.accept_routed, self.stats, self.accept_log)
        )
        """The shared HTTP and TLS ports and the host names they route by (``domain``)."""
        self._own_failures = auth_failures is None
        """With a cluster, its failure counts are shared (unless the caller brought its own)."""
        self._shared_failures = (
            auth_failures if isinstance(auth_failures, SharedFailureLimiter) else None
        )
        """Failures shared with other relays (or other workers): read back while running."""
        self.admission = Admission.of_relay(
            checked, auth_failures, self.stats, RateLimitedLog(logger)
        )
        self._bind: BindAddress | None = None
        self._control: ProtocolListener | TLSListener | None = None
        self._ports: PortAllocator | None = None
        self._keeper: StoreKeeper | None = None
        self._tasks = yamux.TaskOwner(logger)
        """The store keeper, the auth-file watch, the allocations and the replacements."""
        self._sessions: dict[int, RegisteredSession] = {}
        """The registry: every session from its port line until it has closed everything."""
        self.registrar = Registrar(
            self,
            IdentityTable(self._settle_here),
            self._tasks,
            share(checked.max_connections_per_source, checked.max_connections),
        )
        """From a checked request to its session (``relay.server.registrar``)."""
        self.hand_off: HandOff | None = None
        """How to pass a registration on to another worker (set by the worker's process)."""
        self.closing = False
        self._serving: asyncio.Future[None] | None = None
        self.draining = False

    # ----------------------------------------------------------------- public
    async def start(self) -> None:
        """Bind the control port and start accepting registrations."""
        loop = asyncio.get_running_loop()
        worker = self.worker
        self._bind = resolve_bind_address(self.options.bind)
        store = await (
            open_store(self.options)
            if worker is None
            else open_shared_store(self.options, worker.state_dir)
        )
        ports = PortAllocator(
            self._bind, self.options.port_range, store, self.options.max_name_leases
        )
        try:
            if self.shared is not None:
                await self.shared.start(self._bind, reuse_port=worker is not None)
            sock = self._bind.listen(self._requested_port, reuse_port=worker is not None)
            self._control = listen(
                sock, self.options, self.admission, self._control_protocol, self.accept_log
            )
        except BaseException:
            if self.shared is not None:
                self.shared.close()
                await self.shared.wait_closed()
            await ports.close()
            raise
        self._ports = ports
        self._keeper = StoreKeeper(ports, self._sessions.values)
        self._tasks.spawn(self._keeper.run(), name="relay-store")
        if self._own_failures:
            self._shared_failures = shared_failures(store, self.admission.failures)
        if self._shared_failures is not None:
            self.admission.failures = self._shared_failures
            self._tasks.spawn(self._shared_failures.refresh(), name="relay-failures")
        self._serving = loop.create_future()
        if self.auth is not None and self.auth_file is not None:
            self._tasks.spawn(
                watch_auth_file(self.auth_file, self.auth, self._revoke), name="relay-auth-file"
            )
        log_start(
            self.port,
            self._bind,
            self.auth,
            None if self.auth_file is None else self.auth_file.path,
            self.options,
            self.protocol,
            self._ports,
            worker,
        )
        check_descriptors(self.options.max_connections)

    @property
    def port(self) -> int:
        """The control port."""
        return listening_port(self._control)

    @property
    def sessions(self) -> list[SessionInfo]:
        return [session.info() for session in self._sessions.values()]

    def readiness(self) -> Readiness:
        """Ready once listening, until the drain or close starts, while its lease store
        answers."""
        if self.closing:
            return Readiness(False, "closed")
        if self.draining:
            return Readiness(False, "draining")
        if self._control is None or self._ports is None:
            return Readiness(False, "not listening yet")
        return store_readiness(self._ports.health, f"serving on port {self.port}")

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
        if self.shared is not None:
            self.shared.close()
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

    def reload_auth(self) -> None:
        """Re-read the auth file now if it changed (SIGHUP; the file watch does it within a
        second or two anyway) and end the sessions of clients whose access ended."""
        if self.auth is not None and self.auth_file is not None:
            reload_auth_file(self.auth_file, self.auth, self._revoke, at_once=True)

    def drain(self) -> None:
        """Stop taking registrations and public connections at once, and send Go Away to
        every session; connections in flight go on (``relay.ops.drain`` waits for them)."""
        if self.draining or self.closing:
            return
        self.draining = True
        if self._control is not None:
            self._control.close()
        if self.shared is not None:
            self.shared.stop_listening()
        for session in self._sessions.values():
            session.drain()

    async def wait_idle(self) -> None:
        """Until no public connection is open (for a drain)."""
        while busy := [s.traffic for s in self._sessions.values() if s.traffic.open_connections]:
            await busy[0].wait_idle()

    async def wait_closed(self) -> None:
        if self._control is not None:
            await self._control.wait_closed()
        if self.shared is not None:
            await self.shared.wait_closed()
        while self._sessions:
            await next(iter(self._sessions.values())).wait_closed()
        await self._tasks.wait()
        if self._shared_failures is not None:
            await self._shared_failures.close()
        if self._ports is not None:
            await self._ports.close()

    async def __aenter__(self) -> RelayServer:
        if self._serving is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # ----------------------------------------------------------- registering
    def _control_protocol(self, place: Place | None = None) -> asyncio.Protocol:
        """The protocol of a control connection; ``place``: the one it holds already (after
        its TLS handshake)."""
        if self.protocol == "seed":
            return SeedProtocol(self.registration_made, place)
        return ChallengeProtocol(
            auth=self.auth,
            admission=self.admission,
            timeout=self.options.answer_timeout,
            accepted=self.registration_made,
            log=self._challenge_log,
            features=None if self.shared is None else self.shared.features,
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
        handed over to the registrar (which hands it to the new session: that gives it
        back once its handshake ping is answered).
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
            self.registrar.register(transport, peer, request, place)

    async def settle(self, sessions: list[int], newcomer: str) -> set[int]:
        """Ping these sessions, end the silent ones for the registration from ``newcomer``
        and wait until their ports are free; the ids of those that answered
        (``relay.server.identities``)."""
        held = [self._sessions[s] for s in sessions if s in self._sessions]
        alive = await settle(held, newcomer)
        await self.allocator.settled()
        return alive

    def retire(self, session_id: int, reason: str) -> None:
        """Stop taking public connections on this session and send Go Away; end it once its
        connections are done (at most ``RETIRE_TIMEOUT``), so that its owner registers it
        again (``relay.server.identities.IdentityTable.crowded``)."""
        session = self._sessions.get(session_id)
        if session is None or session.ending:
            return
        logger.info("session %d: %s; draining it", session.id, reason, extra=session.log_fields())
        session.drain()
        self._tasks.spawn(self._retire(session, reason), name=f"relay-retire-{session.id}")

    async def _retire(self, session: RegisteredSession, reason: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RETIRE_TIMEOUT):
                await session.traffic.wait_idle()
        session.end(reason)

    async def _settle_here(self, worker: int, sessions: list[int], newcomer: str) -> set[int]:
        return await self.settle(sessions, newcomer)

    def _revoke(self, ended: Mapping[str, str]) -> None:
        """End the sessions of clients whose access ended (name -> why)."""
        for session in list(self._sessions.values()):
            client = session.request.client
            if client is not None and client in ended and session.request.authenticated:
                reason = f"client {client} {ended[client]}"
                logger.warning("session %d: cut, %s", session.id, reason)
                session.end(reason)

    @property
    def auth_file_status(self) -> AuthFileStatus | None:
        return self.auth_file.status if self.auth_file is not None else None

    # ------------------------------------------- what a session needs of us
    @property
    def handshake_timeout(self) -> float:
        return self.options.handshake_timeout

    @property
    def log(self) -> RateLimitedLog:
        return self.admission.log

    def public_listener(self, session: RegisteredSession, sock: socket.socket) -> Acceptor:
        return self.public.listener(session, sock)

    def forget(self, session: RegisteredSession) -> None:
        if session.claim:
            self.registrar.identities.dropped(session.claim)
        self._sessions.pop(session.id, None)
        if self.shared is not None:
            self.shared.routes.forget(session)
        self.stats.session_ended(session.traffic)

    def adopt(self, sock: socket.socket, request: RegistrationRequest, early: bytes) -> None:
        """A registration another worker of this relay handed on (``relay.workers.handoff``):
        it goes on here as if it had arrived here."""
        self.registrar.adopt(sock, request, early)

    def add(self, session: RegisteredSession) -> None:
        self._sessions[session.id] = session
        self.stats.sessions_total += 1

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def counts_anonymous(self) -> bool:
        return self.worker is not None

    @property
    def allocator(self) -> PortAllocator:
        """The public ports (after ``start()``)."""
        assert self._ports is not None
        return self._ports
