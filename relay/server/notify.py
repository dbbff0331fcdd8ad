"""``relay server --protocol notify``: the first seed design, one TCP connection per client.

For servers written against the original relayServer (see docs/notify-protocol.md):

1. A server connects to the control port and keeps that connection open.
2. The relay opens two listeners for it: a public one for its clients and a
   dial-back one for the server, and sends the public port as one line
   (``4532\\n``, as the seed protocol does).
3. For every client accepted on the public port the relay sends
   ``[NEW]<dial-back port>\\n`` on the control connection.
4. The server connects to the relay's dial-back port; the relay pairs that
   connection with the longest-waiting client and copies bytes both ways.

No multiplexing: each client costs the server one TCP connection. A dial-back
must come from the control connection's IP address and within
``handshake_timeout`` of its ``[NEW]`` line, else the client is closed. The
control connection carries nothing from the server; bytes on it are discarded,
and its EOF ends the registration (listeners closed, waiting clients closed,
paired connections finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import yamux

from ..net import (
    LISTEN_BACKLOG,
    BindAddress,
    format_endpoint,
    listening_port,
    resolve_bind_address,
)
from ..options import OptionError, RelayOptions
from ..options.declare import takes_options
from ..pipe import PipeResult
from ..stats import RelayStats, Traffic
from ..store.state_dir import open_state_dir
from ..wire.greeting import error_line, port_line
from .interface import Health, SessionInfo
from .ports import PortAllocator
from .request import SEED

logger = logging.getLogger("relay.notify")
connections_logger = logging.getLogger("relay.connections")

NEW_PREFIX = b"[NEW]"
COPY_CHUNK = 1 << 16
CONTROL_DISCARD = 1 << 12
"""Bytes read (and dropped) at a time from a control connection."""

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def new_line(port: int) -> bytes:
    """What the relay sends on the control connection for each new client."""
    return NEW_PREFIX + f"{port}\n".encode()


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """(address, ``address:port``) of the other end."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return "?", "unknown peer"
    return str(peer[0]), format_endpoint(str(peer[0]), int(peer[1]))


@dataclass(eq=False)
class _Registration:
    id: int
    peer_host: str
    peer: str
    control: asyncio.StreamWriter
    public_port: int = 0
    dialback_port: int = 0
    listeners: list[asyncio.Server] = field(default_factory=list)
    waiting: deque[asyncio.Future[Pair]] = field(default_factory=deque)
    connections: yamux.TaskOwner = field(default_factory=lambda: yamux.TaskOwner(logger))
    """Its paired connections: they outlive the registration, not the relay."""
    traffic: Traffic = field(default_factory=Traffic)

    def log_fields(self) -> dict[str, object]:
        return {"session": self.id, "peer": self.peer, "public_port": self.public_port}


class NotifyRelay:
    """The relay of ``--protocol notify``: a ``relay.server.interface.Relay``, as
    ``RelayServer`` is, for the CLI, metrics and drain.

    ``options`` and the keywords are ``RelayOptions``, with ``protocol="notify"``;
    of them it uses ``bind``, ``port_range``, ``max_sessions``, ``max_connections``
    and ``handshake_timeout`` (the dial-back's deadline).
    """

    @takes_options(RelayOptions)
    def __init__(self, port: int = 0, options: RelayOptions | None = None, **keywords: Any) -> None:
        checked = RelayOptions.build(options, **{"protocol": "notify", **keywords})
        if checked.protocol != "notify":
            raise OptionError("protocol", "NotifyRelay serves 'notify' only", checked.protocol)
        self.options = checked
        self._requested_port = port
        self.stats = RelayStats()
        self.yamux_config: yamux.Config | None = None
        """This protocol speaks no yamux."""
        self.draining = False
        self._bind: BindAddress | None = None
        self._control: asyncio.Server | None = None
        self._registrations: dict[int, _Registration] = {}
        self._tasks = yamux.TaskOwner(logger)
        """One task per control connection; it owns its registration's connections."""
        self._ids = itertools.count(1)
        self._ports: PortAllocator | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        options = self.options
        self._bind = resolve_bind_address(options.bind)
        ports = PortAllocator(
            self._bind,
            options.port_range,
            await open_state_dir(None, options.lease_ttl),
            options.max_name_leases,
        )
        try:
            sock = self._bind.listen(self._requested_port)
            try:
                self._control = await asyncio.start_server(
                    self._accept_registration, sock=sock, backlog=LISTEN_BACKLOG
                )
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await ports.close()
            raise
        self._ports = ports
        logger.info(
            "Serving relay requests on port %d (protocol notify)",
            self.port,
            extra={"control_port": self.port},
        )

    @property
    def port(self) -> int:
        return listening_port(self._control)

    @property
    def sessions(self) -> list[SessionInfo]:
        return [
            SessionInfo(
                r.id,
                r.peer,
                r.public_port,
                True,
                len(r.connections),
                since=r.traffic.since,
                bytes_in=r.traffic.bytes_in,
                bytes_out=r.traffic.bytes_out,
                streams=r.traffic.open_connections,
            )
            for r in self._registrations.values()
        ]

    async def serve_forever(self) -> None:
        try:
            await self._closed.wait()
        finally:
            self.close()
            await self.wait_closed()

    def health(self) -> Health:
        if self._closed.is_set():
            return Health(False, "closing")
        if self.draining:
            return Health(False, "draining")
        if self._control is None:
            return Health(False, "starting")
        return Health(True, f"serving {len(self._registrations)} registration(s)")

    def drain(self) -> None:
        """Stop taking registrations and clients at once; paired connections go on."""
        self.draining = True
        if self._control is not None:
            self._control.close()
        for reg in self._registrations.values():
            for listener in reg.listeners:
                listener.close()

    async def wait_idle(self) -> None:
        while busy := [
            r.traffic for r in self._registrations.values() if r.traffic.open_connections
        ]:
            await busy[0].wait_idle()

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
        self._tasks.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._tasks.wait()
        if self._control is not None:
            await self._control.wait_closed()
        if self._ports is not None:
            ports, self._ports = self._ports, None
            await ports.close()

    # ------------------------------------------------------------- internals
    def _accept_registration(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._tasks.spawn(self._registered(reader, writer), name="relay-notify-registration")

    async def _registered(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_host, peer = _peer(writer)
        if self.draining or len(self._registrations) >= self.options.max_sessions:
            reason = (
                "relay is shutting down"
                if self.draining
                else f"relay is full: {len(self._registrations)} sessions, the maximum "
                f"(--max-sessions {self.options.max_sessions})"
            )
            self.stats.refused["draining" if self.draining else "full"] += 1
            logger.warning(
                "refusing registration from %s: %s",
                peer,
                reason,
                extra={"peer": peer, "reason": reason},
            )
            writer.write(error_line(reason))
            writer.close()
            return
        reg = _Registration(next(self._ids), peer_host, peer, writer)
        reason = "closed by the server"
        try:
            try:
                public = await self._listen()
                reg.public_port = int(public.getsockname()[1])
                try:
                    dialback = await self._listen()
                except OSError:
                    public.close()
                    raise
                reg.dialback_port = int(dialback.getsockname()[1])
            except OSError as exc:
                self.stats.refused["no_port"] += 1
                reason = f"cannot open a public port: {exc}"
                logger.warning(
                    "refusing registration from %s: %s",
                    peer,
                    reason,
                    extra={"peer": peer, "reason": reason},
                )
                writer.write(error_line(reason))
                return
            self._registrations[reg.id] = reg
            self.stats.sessions_total += 1
            reg.listeners = [
                await asyncio.start_server(
                    lambda r, w: self._accept_public(reg, r, w), sock=public, backlog=LISTEN_BACKLOG
                ),
                await asyncio.start_server(
                    lambda r, w: self._dialback(reg, r, w), sock=dialback, backlog=LISTEN_BACKLOG
                ),
            ]
            writer.write(port_line(reg.public_port))
            logger.info(
                "session %d from %s: public port %d, dial-back port %d",
                reg.id,
                peer,
                reg.public_port,
                reg.dialback_port,
                extra={**reg.log_fields(), "dialback_port": reg.dialback_port},
            )
            while await reader.read(CONTROL_DISCARD):
                pass
        except asyncio.CancelledError:
            reason = "relay shutting down"
            raise
        except OSError as exc:
            reason = str(exc)
        finally:
            await self._end(reg, reason)
            await self._finish_connections(reg)

    async def _finish_connections(self, reg: _Registration) -> None:
        """Let paired connections finish after their registration ended, unless the relay
        is closing; either way none outlives this task (which ``close`` cancels)."""
        try:
            if not self._closed.is_set():
                await reg.connections.wait()
        finally:
            reg.connections.cancel()
            await reg.connections.wait()

    async def _end(self, reg: _Registration, reason: str) -> None:
        for listener in reg.listeners:
            listener.close()
        if self._ports is not None:
            self._ports.release(reg.public_port)
            self._ports.release(reg.dialback_port)
        for waiter in reg.waiting:
            waiter.cancel()
        reg.control.close()
        if self._registrations.pop(reg.id, None) is None:
            return
        self.stats.session_ended(reg.traffic)
        logger.info(
            "session %d from %s ended: %s; public port %d closed",
            reg.id,
            reg.peer,
            reason,
            reg.public_port,
            extra={**reg.log_fields(), "reason": reason},
        )

    async def _listen(self) -> socket.socket:
        """A listening socket on a free port (of --port-range, if given): the one allocator
        the yamux relay uses too."""
        assert self._ports is not None
        return await self._ports.allocate(SEED)

    def _accept_public(
        self, reg: _Registration, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(reg.connections) >= self.options.max_connections or self.draining:
            self.stats.connections_refused["draining" if self.draining else "max_connections"] += 1
            writer.transport.abort()
            return
        reg.connections.spawn(self._public(reg, reader, writer), name="relay-notify-connection")

    async def _public(
        self, reg: _Registration, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        _, peer = _peer(writer)
        result = reg.traffic.opened()
        self.stats.connections_total += 1
        started = time.monotonic()
        waiter: asyncio.Future[Pair] = asyncio.get_running_loop().create_future()
        reg.waiting.append(waiter)
        try:
            reg.control.write(new_line(reg.dialback_port))
            try:
                async with asyncio.timeout(self.options.handshake_timeout):
                    server_reader, server_writer = await waiter
            except TimeoutError:
                result.error = TimeoutError(
                    f"the server did not dial back within {self.options.handshake_timeout:g} s"
                )
                writer.transport.abort()
                return
            await _splice((reader, writer), (server_reader, server_writer), result)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            with contextlib.suppress(ValueError):
                reg.waiting.remove(waiter)
            reg.traffic.closed(result)
            connections_logger.info(
                "session %d: connection from %s closed: %d bytes in, %d out%s",
                reg.id,
                peer,
                result.sent,
                result.received,
                f" ({result.error})" if result.error else "",
                extra={
                    **reg.log_fields(),
                    "peer": peer,
                    "bytes_in": result.sent,
                    "bytes_out": result.received,
                    "duration": round(time.monotonic() - started, 6),
                    "reason": str(result.error) if result.error else "closed",
                },
            )

    def _dialback(
        self, reg: _Registration, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, peer = _peer(writer)
        if host != reg.peer_host:
            logger.warning(
                "session %d: dial-back from %s, not from the registered server's "
                "address %s; closing it",
                reg.id,
                peer,
                reg.peer_host,
                extra={**reg.log_fields(), "peer": peer},
            )
            writer.transport.abort()
            return
        while reg.waiting:
            waiter = reg.waiting.popleft()
            if not waiter.done():
                waiter.set_result((reader, writer))
                return
        logger.warning(
            "session %d: dial-back from %s but no client is waiting; closing it",
            reg.id,
            peer,
            extra={**reg.log_fields(), "peer": peer},
        )
        writer.transport.abort()


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, result: PipeResult, inbound: bool
) -> None:
    while data := await reader.read(COPY_CHUNK):
        writer.write(data)
        if inbound:
            result.sent += len(data)
        else:
            result.received += len(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _splice(client: Pair, server: Pair, result: PipeResult) -> None:
    """Copy both ways, half-close aware; an error on either side aborts both."""
    copies = [
        asyncio.create_task(_copy(client[0], server[1], result, True)),
        asyncio.create_task(_copy(server[0], client[1], result, False)),
    ]
    try:
        for copy in asyncio.as_completed(copies):
            await copy
    except (OSError, asyncio.IncompleteReadError) as exc:
        result.error = exc
        client[1].transport.abort()
        server[1].transport.abort()
    finally:
        for copy in copies:
            copy.cancel()
        await asyncio.wait(copies)
        client[1].close()
        server[1].close()
