"""A registered session as the relay keeps it (``Registration``) and shows it (``SessionInfo``).

Also the run of one session, from its public listener to its end: the
handshake ping confirms it, Go Away or the end of the yamux session ends it,
and ``end_session`` frees everything it held, the public port first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import LISTEN_BACKLOG, format_endpoint
from ..stats import Traffic
from .challenge import RegistrationRequest
from .leases import Identity
from .limits import SourceSlots

if TYPE_CHECKING:
    from .relay import RelayServer

logger = logging.getLogger("relay.server")


def format_peer(peername: object) -> str:
    """A socket's ``peername`` as ``host:port`` for the log."""
    if not peername:
        return "unknown peer"
    host, port = peername[0], peername[1]  # type: ignore[index]
    return format_endpoint(str(host), int(port))


def peer_of(transport: asyncio.BaseTransport) -> str:
    return format_peer(transport.get_extra_info("peername"))


def describe_end(reason: BaseException | None) -> str:
    """Why a session ended, for the log."""
    if reason is None:
        return "closed"
    if isinstance(reason, yamux.ProtocolError):
        return f"yamux protocol error: {reason} (not a yamux peer?)"
    return str(reason)


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a task's exception as seen (its owner reports the session's end instead)."""
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class Registration:
    """One registered session: its public port and listener, its yamux session, its task."""

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
        """The stable log fields of this session (see ``relay.ops.logs.FIELDS``)."""
        fields: dict[str, object] = {
            "session": self.id,
            "peer": self.peer,
            "public_port": self.public_port,
        }
        if self.request is not None and self.request.client is not None:
            fields["client"] = self.request.client
        return fields

    def start_handshake(self) -> None:
        """Send the handshake ping; ``run_session`` awaits the answer (or ``end_session``
        cancels and awaits it). Its failure is the session's end, reported there."""
        self.handshake = asyncio.get_running_loop().create_task(
            self.session.ping(), name=f"relay-handshake-{self.id}"
        )
        self.handshake.add_done_callback(_retrieve)

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.id,
            self.peer,
            self.public_port,
            self.confirmed,
            len(self.connections),
            since=self.traffic.since,
            bytes_in=self.traffic.bytes_in,
            bytes_out=self.traffic.bytes_out,
            streams=self.session.num_streams,
            rtt=self.session.last_rtt,
            stalls=self.traffic.stalls,
            client=self.request.client if self.request else None,
        )


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


async def run_session(server: RelayServer, reg: Registration) -> None:
    """Listen on the public port, wait for the handshake, then until the session ends."""
    session = reg.session
    try:
        reg.listener = await asyncio.get_running_loop().create_server(
            server.public.protocol_for(reg),
            sock=reg.sock,
            backlog=LISTEN_BACKLOG,
        )
        logger.debug(
            "session %d from %s: public port %d, waiting for the handshake ping",
            reg.id,
            reg.peer,
            reg.public_port,
        )
        assert reg.handshake is not None
        try:
            async with asyncio.timeout(server.handshake_timeout):
                rtt = await reg.handshake
        except TimeoutError:
            reg.end_reason = (
                f"no answer to the yamux ping within {server.handshake_timeout:g} s "
                f"(stalled, or not a yamux peer)"
            )
            return
        reg.confirmed = True
        server.registering.release(reg.source)
        # Logged once confirmed: a flood of failed handshakes goes through server.log.
        logger.info(
            "session %d from %s%s: public port %d (ping %.1f ms)",
            reg.id,
            reg.peer,
            f" ({reg.request.describe()})" if reg.request else "",
            reg.public_port,
            rtt * 1000,
            extra=reg.log_fields(),
        )
        rejecting = asyncio.get_running_loop().create_task(
            _reject_streams(reg), name=f"relay-reject-{reg.id}"
        )
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
        await end_session(server, reg)


async def _reject_streams(reg: Registration) -> None:
    """Streams go one way only (relay -> registered side); reset any the other way."""
    async for stream in reg.session:
        reg.log.log(
            logging.WARNING,
            "stream from the registered side",
            "session %d: the registered side opened stream %d, which this protocol "
            "does not use; resetting it",
            reg.id,
            stream.id,
            extra=reg.log_fields(),
        )
        stream.reset()


async def end_session(server: RelayServer, reg: Registration) -> None:
    """Free everything of a session: the listener first, so the port is free at once."""
    if reg.ending:
        return
    reg.ending = True
    if not reg.confirmed:
        server.registering.release(reg.source)
    if reg.handshake is not None:
        reg.handshake.cancel()
    if reg.listener is not None:
        reg.listener.close()
    else:
        reg.sock.close()
    server.allocator.release(reg.public_port)
    reg.connections.cancel()
    closed_by_peer = reg.session.closed
    try:
        if reg.handshake is not None:  # the registration owns it: cancelled, then awaited
            await asyncio.wait([reg.handshake])
        await reg.session.close()
        await reg.connections.wait()
    finally:
        server.registrations.pop(reg.id, None)
        server.stats.session_ended(reg.traffic)
    if reg.end_reason is None:
        reg.end_reason = describe_end(reg.session.close_reason if closed_by_peer else None)
    what = f"session {reg.id} from {reg.peer}"
    reg.log.summary(logging.WARNING, what)
    fields = {**reg.log_fields(), "reason": reg.end_reason}
    if reg.confirmed or server.closing:
        logger.info(
            "%s ended: %s; public port %d closed",
            what,
            reg.end_reason,
            reg.public_port,
            extra=fields,
        )
    else:  # anyone can make these: rate-limited like refusals, per kind of failure
        cause = reg.session.close_reason if closed_by_peer else None
        kind = type(cause).__name__ if cause is not None else "no answer"
        server.log.log(
            logging.WARNING,
            f"failed handshake: {kind}",
            "%s ended: %s; public port %d closed",
            what,
            reg.end_reason,
            reg.public_port,
            extra=fields,
        )
