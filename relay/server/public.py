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
from ..ops.logs import log_plain
from ..options import RelayOptions
from ..pipe import PipeResult, SocketEnd, pipe
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

    def listener(self, reg: RegisteredSession, sock: socket.socket) -> Acceptor:
        """``reg``'s public listener on ``sock`` (not started)."""
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
        relayed by a task of its own."""
        self._admit(reg, peername, conn, None)

    def accept_routed(self, reg: RegisteredSession, end: SocketEnd) -> None:
        """A connection of a shared port routed to ``reg`` (``relay.server.shared_ports``):
        its transport exists, holding what was read to route it."""
        assert end.transport is not None
        self._admit(reg, end.transport.get_extra_info("peername"), None, end)

    def _admit(
        self,
        reg: RegisteredSession,
        peername: object,
        conn: socket.socket | None,
        end: SocketEnd | None,
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
        connection = _Connection(reg, conn, peername, slot, self._idle, end)
        self.stats.connections_total += 1
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
        """Open the stream, make the transport, pipe; the per-connection line is only built
        if it is logged."""
        started = time.monotonic()
        reg, result = connection.reg, connection.result
        try:
            stream = await reg.session.open_stream()
        except asyncio.CancelledError:
            connection.drop()
            raise
        except yamux.TooManyStreamsError as exc:
            reg.log.log(
                logging.WARNING,
                "public refused: streams",
                "session %d: refusing a public connection: %s",
                reg.id,
                exc,
                extra=reg.log_fields(),
            )
            connection.drop()
            return
        except yamux.SessionClosedError:
            connection.drop()
            return
        except yamux.NoNewStreamsError:
            connection.drop()
            reg.end(WENT_AWAY)
            return
        except yamux.SessionError as exc:  # stream ids exhausted: the session is done
            connection.drop()
            reg.end(f"cannot open streams any more: {exc}")
            return
        try:
            if reg.request.client_address:
                stream.write(v2_header(addresses_of(connection.peername, connection.sockname())))
            end = connection.end or await connection.transport_end()
        except asyncio.CancelledError:
            stream.reset()
            raise
        except OSError as exc:  # reset by the client already
            stream.reset()
            connection.drop()
            result.error = exc
            return
        self._idle.watch(end)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "session %d: public connection from %s on stream %d",
                reg.id,
                format_peer(connection.peername),
                stream.id,
            )
        connection.piped = True
        await pipe(end, stream, result)
        if connections_logger.isEnabledFor(logging.INFO):
            _log_closed(reg, connection.peername, stream.id, result, started)


class _Connection:
    """One public connection from accept to its task's end: what the task needs, and what
    its done callback gives back (source slot, idle watch, traffic entry). One small object
    instead of a partial, its arguments and a bound method."""

    __slots__ = ("_conn", "end", "idle", "peername", "piped", "reg", "result", "slot")

    def __init__(
        self,
        reg: RegisteredSession,
        conn: socket.socket | None,
        peername: object,
        slot: Slot,
        idle: IdleWatch[SocketEnd],
        end: SocketEnd | None = None,
    ) -> None:
        self.reg = reg
        self._conn: socket.socket | None = conn
        """The accepted socket, ours until its transport is made (a task cancelled before
        that never makes it); None for a routed connection, whose ``end`` exists."""
        self.peername = peername
        self.slot = slot
        self.idle = idle
        self.result = reg.traffic.opened()
        self.end = end
        self.piped = False
        """``pipe`` has the transport (and closes it)."""

    def sockname(self) -> object:
        if self._conn is not None:
            return self._conn.getsockname()
        assert self.end is not None
        assert self.end.transport is not None
        return self.end.transport.get_extra_info("sockname")

    async def transport_end(self) -> SocketEnd:
        """The transport of the accepted socket (OSError if the client reset it already)."""
        conn, self._conn = self._conn, None
        assert conn is not None
        try:
            _, end = await asyncio.get_running_loop().connect_accepted_socket(SocketEnd, conn)
        except BaseException:
            reset(conn)
            raise
        self.end = end
        return end

    def drop(self) -> None:
        """Reset the connection, in whichever form it is now."""
        if self._conn is not None:
            reset(self._conn)
            self._conn = None
        elif self.end is not None:
            self.end.abort()

    def ended(self, task: asyncio.Task[None]) -> None:
        if self._conn is not None:
            reset(self._conn)
            self._conn = None
        elif self.end is not None and not self.piped:
            self.end.abort()
        self.slot.release()
        if self.end is not None:
            self.idle.forget(self.end)
        self.reg.traffic.closed(self.result)


def _log_closed(
    reg: RegisteredSession, peername: object, stream_id: int, result: PipeResult, started: float
) -> None:
    """The per-connection line; out of ``_relay`` so its deep call stack is not part of every
    connection's coroutine frame."""
    peer = format_peer(peername)
    fields = reg.log_fields()  # a fresh dict: the connection's fields go in it
    fields.update(
        peer=peer,
        stream=stream_id,
        bytes_in=result.sent,
        bytes_out=result.received,
        duration=round(time.monotonic() - started, 6),
        reason=str(result.error) if result.error else "closed",
    )
    log_plain(
        connections_logger,
        f"session {reg.id}: connection from {peer} on stream {stream_id} closed: "
        f"{result.sent} bytes in, {result.received} out"
        + (f" ({result.error})" if result.error else ""),
        fields,
    )
