"""A registered session (``RegisteredSession``): its lifecycle and everything it holds.

From its port line on, a registration holds its admission place, a
public listener (or, reached by name, a route on a shared port), a yamux
session, its tasks and its public connections. The
handshake ping confirms it; Go Away, the end of the yamux session or ``end()``
ends it, and every way out frees the same things in the same order, the
public port first (the rules: ``relay.server.lifecycle``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

import yamux
from yamux.ratelimit import RateLimitedLog

from ..stats import Traffic
from ..wire.route import Route
from .accept import Acceptor
from .interface import SessionInfo
from .leases import Identity
from .lifecycle import SessionEffect, SessionEvent, SessionState, step
from .limits import SourceSlots
from .places import Place
from .ports import PortAllocator
from .request import RegistrationRequest

logger = logging.getLogger("relay.server")

WENT_AWAY = "the registered side sent go away"
"""The end of a session whose registered side sent Go Away: its public port is useless."""


class Registry(Protocol):
    """What a session needs of the relay that admitted it."""

    @property
    def handshake_timeout(self) -> float: ...

    @property
    def closing(self) -> bool: ...

    @property
    def log(self) -> RateLimitedLog:
        """Where failed handshakes are logged: anyone can make them, so rate-limited."""

    @property
    def allocator(self) -> PortAllocator: ...

    def public_listener(self, session: RegisteredSession, sock: socket.socket) -> Acceptor:
        """The session's public listener on ``sock`` (not started)."""

    def forget(self, session: RegisteredSession) -> None:
        """The session has closed everything: its port and its place are free."""


def describe_end(reason: BaseException | None) -> str:
    """Why a session ended, for the log."""
    if reason is None:
        return "closed"
    if isinstance(reason, yamux.ProtocolError):
        return f"yamux protocol error: {reason} (not a yamux peer?)"
    return str(reason)


class RegisteredSession:
    """One registration from its port line to its end; ``start()``, then ``end()`` and
    ``wait_closed()`` (or it ends on its own)."""

    def __init__(
        self,
        id: int,
        peer: str,
        request: RegistrationRequest,
        sock: socket.socket | None,
        session: yamux.Session,
        place: Place,
        sources: SourceSlots,
        registry: Registry,
        route: Route | None = None,
    ) -> None:
        """``sock`` is its public listener's; a service reached by name has none, its
        ``route`` instead."""
        self.id = id
        self.peer = peer
        self.request = request
        self.identity: Identity | None = request.identity
        self.route = route
        if sock is not None:
            self.public_port = int(sock.getsockname()[1])
            self.place = f"public port {self.public_port}"
        else:
            assert route is not None
            self.public_port = route.port
            self.place = f"{route.url} (shared port {route.port})"
        """Where its public clients connect, for the log."""
        self.session = session
        self.sources = sources
        """Public connections per source."""
        self.connections = yamux.TaskOwner(logger)
        """One task per public connection."""
        self.log = RateLimitedLog(logger)
        """Lines the session's peers can trigger (refused public connections, ...)."""
        self.traffic = Traffic()
        self.state = SessionState.PENDING
        self.end_reason: str | None = None
        self.claim = 0
        """Its claim in the identity table (``relay.server.identities``; 0: none)."""
        self.connection_task_name = f"relay-public-{id}"
        self._sock = sock
        self._place = place
        place.hold(self.end)
        """Until confirmed: a pending seed registration may have to give its place to a
        newcomer (``relay.server.places``), which ends it."""
        self._registry = registry
        self._listener: Acceptor | None = None
        self._tasks = yamux.TaskOwner(logger)
        """The handshake ping, the run, the stream rejecter, the closing."""
        self._handshake: asyncio.Task[float | None] | None = None
        self._closed = asyncio.Event()

    @property
    def ending(self) -> bool:
        """Ending or ended: it takes no public connection, and its identity is free."""
        return self.state in (SessionState.ENDING, SessionState.ENDED)

    def start(self) -> None:
        """Send the handshake ping and run. The ping's task runs before the loop polls
        again, so a registering side sees exactly: port line, yamux ping."""
        self._handshake = self._tasks.spawn(self._ping(), name=f"relay-handshake-{self.id}")
        self._tasks.spawn(self._run(), name=f"relay-session-{self.id}", on_done=self._ran)

    def end(self, reason: str | None = None) -> None:
        """End the session now, for ``reason`` (None: why its yamux session closed); a
        session already ending keeps its first reason."""
        self._step(SessionEvent.END, reason)

    def drain(self) -> None:
        """Stop taking public connections and send Go Away; connections in flight go on."""
        if self._listener is not None:
            self._listener.close()
        self.session.go_away()

    async def wait_closed(self) -> None:
        """Until everything the session held is closed and the relay has forgotten it."""
        await self._closed.wait()

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.id,
            self.peer,
            self.public_port,
            self.state is SessionState.CONFIRMED,
            len(self.connections),
            since=self.traffic.since,
            bytes_in=self.traffic.bytes_in,
            bytes_out=self.traffic.bytes_out,
            streams=self.session.num_streams,
            rtt=self.session.last_rtt,
            stalls=self.traffic.stalls,
            client=self.request.client,
            host=None if self.route is None else self.route.host,
            authenticated=self.request.authenticated,
            service=self.request.service,
        )

    def log_fields(self) -> dict[str, object]:
        """The stable log fields of this session (see ``relay.ops.logs.FIELDS``)."""
        fields: dict[str, object] = {
            "session": self.id,
            "peer": self.peer,
            "public_port": self.public_port,
        }
        if self.route is not None:
            fields["host"] = self.route.host
        if self.request.client is not None:
            fields["client"] = self.request.client
        return fields

    def _step(self, event: SessionEvent, reason: str | None = None) -> None:
        """Move on by the table and carry out its effects (``reason``: of an END)."""
        before = self.state
        self.state, effects = step(before, event)
        for effect in effects:
            if effect is SessionEffect.RELEASE_PLACE:
                self._place.release()
            elif effect is SessionEffect.STOP:
                self.end_reason = reason
                self._stop(confirmed=before is SessionState.CONFIRMED)
            else:
                self._registry.forget(self)

    # ------------------------------------------------------------------ run
    async def _ping(self) -> float | None:
        """The handshake ping's round trip; None if the session closed first (its end
        reports why)."""
        try:
            return await self.session.ping()
        except yamux.YamuxError:
            return None

    async def _run(self) -> None:
        """Listen on the public port, wait for the handshake, then until Go Away."""
        if self._sock is not None:
            self._listener = self._registry.public_listener(self, self._sock)
            self._listener.start()
        logger.debug(
            "session %d from %s: %s, waiting for the handshake ping",
            self.id,
            self.peer,
            self.place,
        )
        assert self._handshake is not None
        timeout = self._registry.handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                rtt = await self._handshake
        except TimeoutError:
            self.end(
                f"no answer to the yamux ping within {timeout:g} s (stalled, or not a yamux peer)"
            )
            return
        if rtt is None:
            return
        self._step(SessionEvent.CONFIRM)
        # Logged once confirmed: a flood of failed handshakes goes through the relay's log.
        logger.info(
            "session %d from %s%s: %s (ping %.1f ms)",
            self.id,
            self.peer,
            f" ({self.request.describe()})" if self.request.protocol == "v2" else "",
            self.place,
            rtt * 1000,
            extra=self.log_fields(),
        )
        self._tasks.spawn(self._reject_streams(), name=f"relay-reject-{self.id}")
        try:
            # Go Away from the registered side: no stream can be opened any more, so
            # the public port is useless; free it now, not at the next connection.
            await self.session.wait_go_away()
        except yamux.SessionClosedError:
            return
        self.end(WENT_AWAY)

    def _ran(self, task: asyncio.Task[None]) -> None:
        """The run ended, on its own or cancelled (even before it started)."""
        self.end()

    async def _reject_streams(self) -> None:
        """Streams go one way only (relay -> registered side); reset any the other way."""
        async for stream in self.session:
            self.log.log(
                logging.WARNING,
                "stream from the registered side",
                "session %d: the registered side opened stream %d, which this protocol "
                "does not use; resetting it",
                self.id,
                stream.id,
                extra=self.log_fields(),
            )
            stream.reset()

    # ------------------------------------------------------------------ end
    def _stop(self, confirmed: bool) -> None:
        """Free the port at once and cancel everything; the closing goes on in a task."""
        closed_by_peer = self.session.closed
        if self._listener is not None:
            self._listener.close()
        elif self._sock is not None:
            self._sock.close()
        if self.route is None:  # a route leads nowhere once the session is ending
            self._registry.allocator.release(self.public_port)
        self._tasks.cancel()
        self.connections.cancel()
        self._tasks.spawn(
            self._close(closed_by_peer, confirmed), name=f"relay-session-{self.id}-end"
        )

    async def _close(self, closed_by_peer: bool, confirmed: bool) -> None:
        try:
            await self._tasks.wait()
            self.session.close()
            await self.session.wait_closed()
            await self.connections.wait()
        finally:
            self._step(SessionEvent.CLOSED)
            self._closed.set()
        if self.end_reason is None:
            self.end_reason = describe_end(self.session.close_reason if closed_by_peer else None)
        what = f"session {self.id} from {self.peer}"
        self.log.summary(logging.WARNING, what)
        fields = {**self.log_fields(), "reason": self.end_reason}
        if confirmed or self._registry.closing:
            logger.info(
                "%s ended: %s; %s closed",
                what,
                self.end_reason,
                self.place,
                extra=fields,
            )
            return
        # Anyone can make these: rate-limited like refusals, per kind of failure.
        cause = self.session.close_reason if closed_by_peer else None
        kind = type(cause).__name__ if cause is not None else "no answer"
        self._registry.log.log(
            logging.WARNING,
            f"failed handshake: {kind}",
            "%s ended: %s; %s closed",
            what,
            self.end_reason,
            self.place,
            extra=fields,
        )
