"""The relay's per-public-connection path: accept, check the limits, open a stream, pipe.

This runs for every connection on every public port, so it does only what
each connection needs: the peer address is read once, and the end-of-connection
line (``relay.connections``) is built only when that logger writes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

import yamux

from ..net import format_peer, peer_of
from ..ops.logs import log_plain
from ..options import RelayOptions
from ..pipe import PipeResult, SocketEnd, pipe
from ..stats import RelayStats
from ..wire.proxy_header import addresses_of, v2_header
from .limits import IdleWatch, Slot, source_of
from .session import WENT_AWAY, RegisteredSession

logger = logging.getLogger("relay.server")
connections_logger = logging.getLogger("relay.connections")


class PublicConnections:
    """Every public connection of a relay: ``max_connections`` per session, the per-source
    share of it, and the idle timeout."""

    def __init__(self, stats: RelayStats, options: RelayOptions) -> None:
        self.stats = stats
        self.max_connections = options.max_connections
        self.idle_timeout = options.idle_timeout
        self._idle = IdleWatch(options.idle_timeout, self._idle_connection)

    def protocol_for(self, reg: RegisteredSession) -> Callable[[], SocketEnd]:
        """The protocol factory of ``reg``'s public listener."""
        return partial(SocketEnd, partial(self.accept, reg))

    def close(self) -> None:
        """Stop the idle timer (the relay is closing; its connections end anyway)."""
        self._idle.close()

    def accept(self, reg: RegisteredSession, end: SocketEnd) -> None:
        transport = end.transport
        assert transport is not None
        if reg.ending or reg.session.closed:
            end.abort()
            return
        peername = transport.get_extra_info("peername")
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
            end.abort()
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
            end.abort()
            return
        result = reg.traffic.opened()
        self.stats.connections_total += 1
        self._idle.watch(end)
        reg.connections.spawn(
            self._relay(reg, end, peername, result),
            name=reg.connection_task_name,
            on_done=_Release(reg, end, slot, result, self._idle),
        )

    def _idle_connection(self, end: SocketEnd) -> None:
        logger.debug(
            "resetting public connection from %s: idle for %g s (--idle-timeout)",
            peer_of(end.transport) if end.transport is not None else "?",
            self.idle_timeout,
        )
        end.abort()

    async def _relay(
        self, reg: RegisteredSession, end: SocketEnd, peername: object, result: PipeResult
    ) -> None:
        """Open the stream and pipe; the per-connection line is only built if it is logged."""
        started = time.monotonic()
        try:
            stream = await reg.session.open_stream()
        except asyncio.CancelledError:
            end.abort()
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
            end.abort()
            return
        except yamux.SessionClosedError:
            end.abort()
            return
        except yamux.NoNewStreamsError:
            end.abort()
            reg.end(WENT_AWAY)
            return
        except yamux.SessionError as exc:  # stream ids exhausted: the session is done
            end.abort()
            reg.end(f"cannot open streams any more: {exc}")
            return
        if reg.request is not None and reg.request.client_address and end.transport is not None:
            stream.write(
                v2_header(addresses_of(peername, end.transport.get_extra_info("sockname")))
            )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "session %d: public connection from %s on stream %d",
                reg.id,
                format_peer(peername),
                stream.id,
            )
        await pipe(end, stream, result)
        if connections_logger.isEnabledFor(logging.INFO):
            _log_closed(reg, peername, stream.id, result, started)


class _Release:
    """A public connection's done callback: gives back its source slot, idle watch and
    traffic entry. One small object instead of a partial, its arguments and a bound method."""

    __slots__ = ("end", "idle", "reg", "result", "slot")

    def __init__(
        self,
        reg: RegisteredSession,
        end: SocketEnd,
        slot: Slot,
        result: PipeResult,
        idle: IdleWatch,
    ) -> None:
        self.reg = reg
        self.end = end
        self.slot = slot
        self.result = result
        self.idle = idle

    def __call__(self, task: asyncio.Task[None]) -> None:
        self.slot.release()
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
