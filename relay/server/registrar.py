"""From a checked registration to its session: its identity claimed, a public port, the port line.

``RelayServer`` admits a control connection (admission, the v2 challenge) and
hands it here. What can be checked at once is (closing, draining, full, the
port asked for); then, in a task, the registration claims its identity
(``relay.server.identities``: own, join the identity's other sessions on their
port, a port of its own, refused, or the host is full), gets its port from the
lease store (``relay.server.ports``, an await: what the connection sends
meanwhile is kept for yamux), and the port line goes out and the connection
becomes a ``RegisteredSession``. A registration reached by name
(``route``) gets a host name on the relay's shared port instead of a port
(``relay.server.routes``), and the route line instead of the port line. Every
way out gives back what was taken: the admission place, the claim, the port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Protocol

import yamux

from ..net import peer_of
from ..options import RelayOptions
from ..stats import RelayStats
from ..wire.greeting import port_line
from ..wire.refusal import RETRY
from ..wire.route import Route
from .admission import Admission, Refused
from .allocation import EARLY_LIMIT, AwaitingPort, gave_way, settled
from .identities import Identities, Verdict
from .limits import SourceSlots, source_of
from .places import Place
from .ports import PortRefusedError, StoreDownError
from .request import RegistrationRequest
from .routes import RouteRefusedError
from .session import RegisteredSession, Registry
from .shared_ports import SharedPorts

logger = logging.getLogger("relay.server")

DRAINING = Refused("draining", "relay is shutting down", RETRY)

HandOff = Callable[[asyncio.Transport, bytes, RegistrationRequest, int], None]
"""``hand_off(transport, early, request, worker)``: the registration goes on in that worker
(``relay.workers.handoff``); this one lets go of its connection. OSError if it cannot."""


class Relay(Registry, Protocol):
    """What the registrar needs of the relay it works for."""

    @property
    def draining(self) -> bool: ...

    @property
    def options(self) -> RelayOptions: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def stats(self) -> RelayStats: ...

    @property
    def yamux_config(self) -> yamux.Config: ...

    @property
    def session_count(self) -> int:
        """Registered sessions now."""

    @property
    def counts_anonymous(self) -> bool:
        """Anonymous registrations claim too: the identity table counts the host's sessions
        (a worker of several)."""

    @property
    def shared(self) -> SharedPorts | None:
        """The shared ports and their routes (None: no ``domain``)."""

    @property
    def hand_off(self) -> HandOff | None:
        """How to pass a registration on to another worker (None: one process)."""

    def add(self, session: RegisteredSession) -> None:
        """A new session, to be kept until it ``forget``s itself."""


class _Buffer(asyncio.Protocol):
    """A handed-on connection until its registration goes on: keeps what it sends (a
    well-behaved client sends nothing; at most ``EARLY_LIMIT``, then reading pauses)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= EARLY_LIMIT and self.transport is not None:
            self.transport.pause_reading()


class Registrar:
    """Registrations of one relay between their checked request and their session."""

    def __init__(
        self,
        relay: Relay,
        identities: Identities,
        tasks: yamux.TaskOwner,
        connections_per_source: int,
    ) -> None:
        self.relay = relay
        self.identities = identities
        """Who holds each identity: the relay's own table, or (a worker's) the supervisor's."""
        self.in_flight = 0
        """Registrations waiting for their port (they count toward ``max_sessions``)."""
        self._tasks = tasks
        self._connections_per_source = connections_per_source
        self._ids = itertools.count(1)

    def register(
        self,
        transport: asyncio.Transport,
        peer: str,
        request: RegistrationRequest,
        place: Place,
        *,
        early: bytes = b"",
        movable: bool = True,
    ) -> None:
        """Check what can be checked at once, then allocate in a task (``place`` goes to it).

        ``early``: bytes the client sent already; ``movable``: it may be handed on to
        another worker (not once it was; never a TLS connection)."""
        relay = self.relay
        if relay.closing:
            transport.abort()
            return
        if relay.draining:
            relay.admission.refuse(transport, peer, DRAINING)
            return
        held = relay.session_count + self.in_flight
        if held >= relay.options.max_sessions:
            self._full(transport, peer, held)
            return
        try:
            relay.allocator.check(request)
        except PortRefusedError as exc:
            relay.admission.refuse(transport, peer, Refused("port refused", str(exc), exc.kind))
            return
        # The claim and the port are awaits: what the connection sends meanwhile is kept
        # for yamux.
        waiting = AwaitingPort(transport, early)
        transport.set_protocol(waiting)
        self.in_flight += 1
        registration = place.hand_over()
        registration.hold(gave_way(transport))
        movable = (
            movable
            and relay.hand_off is not None
            and transport.get_extra_info("ssl_object") is None
        )
        self._tasks.spawn(
            self._allocate(waiting, peer, request, registration, movable),
            name="relay-allocate",
            on_done=partial(settled, transport, registration),
        )

    def adopt(self, sock: socket.socket, request: RegistrationRequest, early: bytes) -> None:
        """A registration another worker handed on: it goes on here as if it had arrived
        here (once moved, it stays)."""
        self._tasks.spawn(self._adopt(sock, request, early), name="relay-adopt")

    async def _adopt(self, sock: socket.socket, request: RegistrationRequest, early: bytes) -> None:
        try:
            transport, buffer = await asyncio.get_running_loop().connect_accepted_socket(
                _Buffer, sock=sock
            )
        except OSError:
            sock.close()
            return
        peer = peer_of(transport)
        admission = self.relay.admission
        source = source_of(transport.get_extra_info("peername"))
        admitted = admission.admit(source, lambda reason: transport.abort())
        if isinstance(admitted, Refused):
            admission.refuse(transport, peer, admitted)
            return
        admitted.settle()  # its proof was checked by the worker that handed it on
        with admitted as place:
            self.register(
                transport, peer, request, place, early=early + bytes(buffer.data), movable=False
            )

    async def _allocate(
        self,
        waiting: AwaitingPort,
        peer: str,
        request: RegistrationRequest,
        place: Place,
        movable: bool,
    ) -> None:
        """Claim the identity, allocate a public port (or a route on a shared port), send the
        port (or route) line, start the session."""
        relay = self.relay
        ports = relay.allocator
        transport = waiting.transport
        shared = relay.shared if request.route is not None else None
        claim = 0
        join: int | None = None
        sock: socket.socket | None = None
        route: Route | None = None
        try:
            if request.identity is not None or relay.counts_anonymous:
                verdict = await self.identities.claim(
                    None if request.identity is None else request.identity.key,
                    request.sessions,
                    request.authenticated,
                    peer,
                    movable,
                )
                if verdict.kind == "move":
                    self._move(waiting, request, verdict.worker)
                    return
                if not self._granted(verdict, transport, peer, request):
                    return
                claim = verdict.ref
                if verdict.kind == "join":
                    join = verdict.port
                elif verdict.kind == "own port":
                    request = replace(request, lease=False)
            if shared is None:
                sock = await ports.allocate(request, join=join)
            else:
                route = shared.routes.route_for(request)
        except BaseException as exc:
            if claim:
                self.identities.dropped(claim)
            if isinstance(exc, RouteRefusedError):
                refused = Refused("route refused", str(exc), exc.kind)
                relay.admission.refuse(transport, peer, refused)
                return
            if not isinstance(exc, OSError):
                raise
            self._refuse_allocation(transport, peer, exc)
            return
        finally:
            self.in_flight -= 1
        port = int(sock.getsockname()[1]) if sock is not None else 0
        if waiting.ended or transport.is_closing() or relay.closing or relay.draining:
            if sock is not None:
                sock.close()
                ports.release(port)
            if claim:
                self.identities.dropped(claim)
            if relay.draining and not (waiting.ended or transport.is_closing()):
                relay.admission.refuse(transport, peer, DRAINING)
            else:
                transport.abort()
            return
        transport.write(port_line(port) if route is None else route.line())
        session = RegisteredSession(
            next(self._ids),
            peer,
            request,
            sock,
            yamux.Session.attach(
                transport,
                client=True,
                config=relay.yamux_config,
                initial_data=bytes(waiting.early),
            ),
            place.hand_over(),
            SourceSlots(self._connections_per_source),
            relay,
            route,
        )
        session.claim = claim
        if claim:
            self.identities.registered(claim, session.id, session.public_port)
        if shared is not None and route is not None:
            shared.routes.add(route, session)
        if waiting.paused:
            transport.resume_reading()
        relay.add(session)
        session.start()

    def _move(self, waiting: AwaitingPort, request: RegistrationRequest, worker: int) -> None:
        """Hand the registration to ``worker`` (its identity's sessions spread over cores)."""
        transport = waiting.transport
        if waiting.ended or transport.is_closing():
            return
        hand_off = self.relay.hand_off
        assert hand_off is not None
        try:
            hand_off(transport, bytes(waiting.early), request, worker)
        except OSError as exc:
            logger.error("cannot hand a registration on to worker %d: %s", worker, exc)
            transport.abort()

    def _full(self, transport: asyncio.Transport, peer: str, held: int) -> None:
        reason = (
            f"relay is full: {held} sessions, the maximum "
            f"(--max-sessions {self.relay.options.max_sessions})"
        )
        self.relay.admission.refuse(transport, peer, Refused("relay full", reason, RETRY))

    def _refuse_allocation(self, transport: asyncio.Transport, peer: str, exc: OSError) -> None:
        """No port for this registration: say why (a store away is worth a retry)."""
        if isinstance(exc, StoreDownError):
            refused = Refused("store unavailable", f"{exc}; retry later", RETRY)
        elif isinstance(exc, PortRefusedError):
            refused = Refused("port refused", str(exc), exc.kind)
        else:
            refused = Refused("no public port", f"cannot open a public port: {exc}", RETRY)
        self.relay.admission.refuse(transport, peer, refused)

    def _granted(
        self,
        verdict: Verdict,
        transport: asyncio.Transport,
        peer: str,
        request: RegistrationRequest,
    ) -> bool:
        """Whether the claim lets the registration go on; if not, it is refused (or dropped,
        if it went away meanwhile)."""
        if verdict.kind in ("refuse", "full") and transport.is_closing():
            return False
        identity = request.identity
        if verdict.kind == "full":
            self._full(transport, peer, verdict.holders)
            return False
        if verdict.kind == "refuse":
            if request.sessions > 1:
                reason = (
                    f"{identity} has {verdict.holders} live session(s) on public port "
                    f"{verdict.port}, and this one cannot join them (sessions="
                    f"{request.sessions} at most, or they registered without sessions=)"
                )
            else:
                reason = (
                    f"{identity} is already registered (public port {verdict.port}) and that "
                    f"session is alive"
                )
            self.relay.admission.refuse(transport, peer, Refused("name in use", reason, RETRY))
            return False
        if verdict.kind == "own port":
            # Two forwarders under one name are often a mistake (a copied config): say
            # where both are, so the operator can tell which one is the stray.
            logger.warning(
                "%s is already registered from %s (public port %s) and that session is "
                "alive; the new registration from %s gets a port of its own, without a "
                "lease (two forwarders with one name?)",
                identity,
                verdict.peer,
                verdict.port,
                peer,
                extra={"peer": peer, "public_port": verdict.port},
            )
        return True
