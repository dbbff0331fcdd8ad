"""The relay's per-public-connection path: accept, check the limits, open a stream, pipe.

This runs for every connection on every public port, so it does only what
each connection needs: the limits are checked on the accepted socket, before a
transport exists (a refused connection costs an accept() and a close()); the
stream is opened before the transport is made, so its SYN is on its way while
the loop sets the socket up; the end-of-connection line (``relay.connections``)
is built only when that logger writes it. A connection of a shared port arrives
routed, with its transport made and the bytes read to route it
(``accept_routed``): the same limits, the same path from there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from functools import partial

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import format_peer, peer_of
from ..ops.logs import EventDict, log_later
from ..options import RelayOptions
from ..pipe import SocketEnd, Splice, splice, wait_pipe
from ..stats import RelayStats
from ..wire.proxy_header import addresses_of, v2_header
from .accept import Acceptor, reset
from .limits import IdleWatch, Slot, source_of
from .session import WENT_AWAY, RegisteredSession

logger = logging.getLogger("relay.server")
connections_logger = logging.getLogger("relay.connections")


class PublicConnections:
    """Every public connection of a relay: ``max_connections`` per session, the per-source
    share of it, and the idle timeout."""

    def __init__(
        self, stats: RelayStats, options: RelayOptions, accept_log: RateLimitedLog
    ) -> None:
        self.stats = stats
        self.max_connections = options.max_connections
        self.idle_timeout = options.idle_timeout
        self._idle: IdleWatch[SocketEnd] = IdleWatch(options.idle_timeout, self._idle_connection)
        self._accept_log = accept_log
        self._loop: asyncio.AbstractEventLoop
        """Set by ``listener``: asking for it per connection is a system call (getpid)."""

    def listener(self, reg: RegisteredSession, sock: socket.socket) -> Acceptor:
        """``reg``'s public listener on ``sock`` (not started)."""
        self._loop = asyncio.get_running_loop()
        return Acceptor(
            sock,
            partial(self.accept, reg),
            what=f"public port {reg.public_port} (session {reg.id})",
            log=self._accept_log,
        )

    def close(self) -> None:
        """Stop the idle timer (the relay is closing; its connections end anyway)."""
        self._idle.close()

    def accept(self, reg: RegisteredSession, conn: socket.socket, peername: object) -> None:
        """An accepted socket of ``reg``'s public port: refused with RST over a limit, else
        its stream opened at once (the SYN leaves in this loop iteration) and relayed by a
        task of its own."""
        self._admit(reg, peername, conn, None, b"")

    def accept_routed(self, reg: RegisteredSession, end: SocketEnd, first: bytes = b"") -> None:
        """A connection of a shared port routed to ``reg`` (``relay.server.shared_ports``):
        its transport exists; ``first`` is what was read to route it (it goes with the
        stream's SYN)."""
        assert end.transport is not None
        self._loop = asyncio.get_running_loop()
        self._admit(reg, end.transport.get_extra_info("peername"), None, end, first)

    def _admit(
        self,
        reg: RegisteredSession,
        peername: object,
        conn: socket.socket | None,
        end: SocketEnd | None,
        first: bytes,
    ) -> None:
        refuse = partial(reset, conn) if conn is not None else end.abort  # type: ignore[union-attr]
        if reg.ending or reg.session.closed:
            refuse()
            return
        if len(reg.connections) >= self.max_connections:
            reg.log.log(
                logging.WARNING,
                "public refused: max connections",
                "session %d: refusing a public connection from %s: %d open, the maximum "
                "(--max-connections %d)",
                reg.id,
                format_peer(peername),
                len(reg.connections),
                self.max_connections,
                extra=reg.log_fields(),
            )
            self.stats.connections_refused["max_connections"] += 1
            refuse()
            return
        source = source_of(peername)
        slot = reg.sources.acquire(source)
        if slot is None:
            reg.log.log(
                logging.WARNING,
                "public refused: per source",
                "session %d: refusing a public connection from %s: %d open from %s, the "
                "maximum (--max-connections-per-source %d)",
                reg.id,
                format_peer(peername),
                reg.sources.held(source),
                source,
                reg.sources.limit,
                extra=reg.log_fields(),
            )
            self.stats.connections_refused["per_source"] += 1
            refuse()
            return
        connection = _Connection(reg, conn, peername, slot, self._idle, self._loop, end, first)
        self.stats.connections_total += 1
        session = reg.session
        if not session.open_would_wait():  # else the task waits for room, the bytes in the kernel
            try:
                connection.stream = session.open_stream_nowait(connection.first_bytes(True))
            except yamux.SessionError as exc:
                connection.drop()
                _open_failed(reg, exc)
                connection.ended(None)
                return
        reg.connections.spawn(
            self._relay(connection), name=reg.connection_task_name, on_done=connection.ended
        )

    def _idle_connection(self, end: SocketEnd) -> None:
        logger.debug(
            "resetting public connection from %s: idle for %g s (--idle-timeout)",
            peer_of(end.transport) if end.transport is not None else "?",
            self.idle_timeout,
        )
        end.abort()

    async def _relay(self, connection: _Connection) -> None:
        """Make the transport (the stream is open already unless the session's backlog of
        unacknowledged opens was full), splice from its ``connection_made``, wait for the
        pipe; the per-connection line is only built if it is logged."""
        reg = connection.reg
        if connection.stream is None:
            try:
                connection.stream = stream = await reg.session.open_stream()
                if first := connection.first_bytes(False):
                    stream.write(first)
            except asyncio.CancelledError:
                connection.drop()
                raise
            except yamux.SessionError as exc:
                connection.drop()
                _open_failed(reg, exc)
                return
        if connection.end is not None:  # routed: the transport exists
            connection.connected(connection.end)
        else:
            conn = connection.take_socket()
            try:
                await self._loop.connect_accepted_socket(connection.socket_end, conn)
            except asyncio.CancelledError:
                connection.abort(ConnectionAbortedError("relaying cancelled"))
                raise
            except OSError as exc:  # reset by the client already
                connection.abort(exc)
                reset(conn)
                return
        splice, stream = connection.splice, connection.stream
        assert splice is not None
        assert stream is not None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "session %d: public connection from %s on stream %d",
                reg.id,
                format_peer(connection.peername),
                stream.id,
            )
        result = await wait_pipe(splice, connection.done)
        if connections_logger.isEnabledFor(logging.INFO):
            log_later(
                connections_logger,
                _closed_line,
                reg,
                connection.peername,
                stream.id,
                result.sent,
                result.received,
                result.error,
                time.monotonic() - connection.started,
            )


def _open_failed(reg: RegisteredSession, exc: yamux.SessionError) -> None:
    """The stream for a public connection could not be opened (the connection is refused):
    say why, and end the session where it can open no more."""
    if isinstance(exc, yamux.TooManyStreamsError):
        reg.log.log(
            logging.WARNING,
            "public refused: streams",
            "session %d: refusing a public connection: %s",
            reg.id,
            exc,
            extra=reg.log_fields(),
        )
    elif isinstance(exc, yamux.NoNewStreamsError):
        reg.end(WENT_AWAY)
    elif not isinstance(exc, yamux.SessionClosedError):  # stream ids exhausted
        reg.end(f"cannot open streams any more: {exc}")


EARLY_READ = 64 * 1024
"""The most read from a public socket before its transport exists (a stream's write
buffer limit: it goes out at once within the initial window)."""


class _Connection:
    """One public connection from accept to its task's end: what the task needs, the
    callback that splices the socket to its stream from ``connection_made`` (no task
    wake-up before bytes flow), and what its done callback gives back (source slot, idle
    watch, traffic entry). One small object instead of partials and bound methods."""

    __slots__ = (
        "_conn",
        "_routed",
        "done",
        "end",
        "idle",
        "peername",
        "reg",
        "result",
        "slot",
        "splice",
        "started",
        "stream",
    )

    def __init__(
        self,
        reg: RegisteredSession,
        conn: socket.socket | None,
        peername: object,
        slot: Slot,
        idle: IdleWatch[SocketEnd],
        loop: asyncio.AbstractEventLoop,
        end: SocketEnd | None,
        routed: bytes,
    ) -> None:
        self.started = time.monotonic()
        self.reg = reg
        self._conn: socket.socket | None = conn
        """Ours until the task takes it (a task cancelled before it ran never does); None
        for a routed connection, whose ``end`` exists."""
        self.peername = peername
        self.slot = slot
        self.idle = idle
        self.result = reg.traffic.opened()
        self.stream: yamux.Stream | None = None
        self.end = end
        self._routed = routed
        """A routed connection's bytes read to route it."""
        self.splice: Splice | None = None
        self.done: asyncio.Future[None] = loop.create_future()

    def take_socket(self) -> socket.socket:
        conn, self._conn = self._conn, None
        assert conn is not None
        return conn

    def drop(self) -> None:
        """Reset the connection, in whichever form it is now."""
        if self._conn is not None:
            reset(self._conn)
            self._conn = None
        elif self.end is not None:
            self.end.abort()

    def first_bytes(self, early: bool) -> bytes:
        """What the stream carries first: the client's address if asked for, a routed
        connection's bytes read to route it, and with ``early`` what an accepted client
        sent already (read at once: most clients speak first, and then the request leaves
        with the stream's SYN, in the accept's own write, without waiting for a
        transport)."""
        conn = self._conn
        first, self._routed = self._routed, b""
        if early and conn is not None:
            try:
                first = conn.recv(EARLY_READ, socket.MSG_DONTWAIT)
            except OSError:  # nothing yet (EAGAIN), or reset: the transport finds out
                first = b""
        self.result.sent += len(first)
        if self.reg.request.client_address:
            if conn is not None:
                sockname = conn.getsockname()
            else:
                assert self.end is not None
                assert self.end.transport is not None
                sockname = self.end.transport.get_extra_info("sockname")
            return v2_header(addresses_of(self.peername, sockname)) + first
        return first

    def socket_end(self) -> SocketEnd:
        """The protocol of the public socket's transport."""
        return SocketEnd(self.connected)

    def connected(self, end: SocketEnd) -> None:
        assert self.stream is not None
        self.end = end
        self.idle.watch(end)
        self.splice = splice(end, self.stream, self.done, self.result)

    def abort(self, exc: BaseException) -> None:
        """Making the transport failed or was cancelled: reset the stream (and the socket,
        if it got as far as the pipe)."""
        if self.splice is not None:
            self.splice.fail(exc)
        elif self.stream is not None:
            self.stream.reset()
        self.result.error = exc

    def ended(self, task: asyncio.Task[None] | None) -> None:
        if self.splice is None:  # cancelled (or failed) before the pipe took the connection
            self.drop()
            if self.stream is not None:
                self.stream.reset()
        self.slot.release()
        if self.end is not None:
            self.idle.forget(self.end)
        self.reg.traffic.closed(self.result)


def _closed_line(
    reg: RegisteredSession,
    peername: object,
    stream_id: int,
    sent: int,
    received: int,
    error: BaseException | None,
    duration: float,
) -> tuple[str, EventDict]:
    """The per-connection line (built with the next ones, see ``relay.ops.logs``)."""
    peer = format_peer(peername)
    fields = reg.log_fields()  # a fresh dict: the connection's fields go in it
    fields.update(
        peer=peer,
        stream=stream_id,
        bytes_in=sent,
        bytes_out=received,
        duration=round(duration, 6),
        reason=str(error) if error else "closed",
    )
    message = (
        f"session {reg.id}: connection from {peer} on stream {stream_id} closed: "
        f"{sent} bytes in, {received} out" + (f" ({error})" if error else "")
    )
    return message, fields
