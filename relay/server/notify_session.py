"""One registration of the notify protocol (``NotifySession``): its clients and dial-backs.

From its port line on, a registration holds a public listener, a dial-back
listener, its source's registration slot, and its clients: each waits for a
dial-back (``handshake_timeout``), then the two are copied both ways until
both ends are done or nothing moved for ``idle_timeout``. The wire contract is
in docs/notify-protocol.md; ``relay.server.notify`` runs the control port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import time
from functools import partial
from typing import Any

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import format_peer
from ..options import RelayOptions
from ..pipe import PipeResult
from ..stats import RelayStats, Traffic
from ..wire.greeting import port_line
from .accept import Accepted, Acceptor, reset
from .interface import SessionInfo
from .limits import IdleWatch, Slot, SourceSlots, share, source_of
from .ports import PortAllocator

logger = logging.getLogger("relay.notify")
connections_logger = logging.getLogger("relay.connections")

NEW_PREFIX = b"[NEW]"
COPY_CHUNK = 1 << 16
TOKEN_BYTES = 16
TOKEN_LINE = 2 * TOKEN_BYTES + 1
"""A token in hex and its newline: exactly what a dial-back sends first with tokens on."""

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def new_line(port: int, token: str | None = None) -> bytes:
    """What the relay sends on the control connection for each new client."""
    return NEW_PREFIX + (f"{port} {token}\n" if token else f"{port}\n").encode()


class Paired:
    """A client and its dial-back, copied both ways; what the idle timeout watches."""

    __slots__ = ("activity", "client", "server")

    def __init__(self, client: Pair, server: Pair) -> None:
        self.client = client
        self.server = server
        self.activity = 0

    def abort(self) -> None:
        self.client[1].transport.abort()
        self.server[1].transport.abort()


class NotifySession:
    """One registration: ``start()``, then ``end(reason)`` and ``finish()``.

    ``public`` and ``dialback`` are its listening sockets (from ``ports``, which
    gets them back at the end); ``slot`` its place among its source's
    registrations; ``idle`` the relay's idle timeout; ``accept_log`` the log
    its listeners share with the relay's.
    """

    def __init__(
        self,
        id: int,
        peer: tuple[str, str],
        control: asyncio.StreamWriter,
        slot: Slot,
        *,
        public: socket.socket,
        dialback: socket.socket,
        options: RelayOptions,
        stats: RelayStats,
        ports: PortAllocator,
        idle: IdleWatch[Paired],
        accept_log: RateLimitedLog,
    ) -> None:
        self.id = id
        self.peer_host, self.peer = peer
        self.control = control
        self.public_port = int(public.getsockname()[1])
        self.dialback_port = int(dialback.getsockname()[1])
        self.tokens = options.notify_token
        self.traffic = Traffic()
        self.connections = yamux.TaskOwner(logger)
        """Its clients, waiting or paired: they outlive the registration, not the relay."""
        self.ended = False
        self._slot = slot
        self._options = options
        self._stats = stats
        self._ports = ports
        self._idle = idle
        self._sources = SourceSlots(
            share(options.max_connections_per_source, options.max_connections)
        )
        """Its clients per source."""
        self._waiting: dict[str, asyncio.Future[socket.socket]] = {}
        """Clients waiting for a dial-back, by token (without tokens, by a number), oldest
        first."""
        self._numbers = itertools.count()
        self._dialbacks = yamux.TaskOwner(logger)
        """Dial-backs until their token is read (with tokens)."""
        self._unread: set[Accepted] = set()
        """Dial-backs whose token is not read yet: at most ``max_connections``, so that
        silent ones (from the server's host) cannot keep the server's own out."""
        self.log = RateLimitedLog(logger)
        """Lines anyone can trigger: refused clients and dial-backs."""
        self._listeners = [
            Acceptor(
                public,
                self._accept_public,
                what=f"public port {self.public_port} (session {id})",
                log=accept_log,
            ),
            Acceptor(
                dialback,
                self._accept_dialback,
                what=f"dial-back port {self.dialback_port} (session {id})",
                log=accept_log,
            ),
        ]

    def log_fields(self) -> dict[str, object]:
        return {"session": self.id, "peer": self.peer, "public_port": self.public_port}

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.id,
            self.peer,
            self.public_port,
            True,
            len(self.connections),
            since=self.traffic.since,
            bytes_in=self.traffic.bytes_in,
            bytes_out=self.traffic.bytes_out,
            streams=self.traffic.open_connections,
        )

    def start(self) -> None:
        """Listen, then send the port line."""
        for listener in self._listeners:
            listener.start()
        self.control.write(port_line(self.public_port))
        logger.info(
            "session %d from %s: public port %d, dial-back port %d",
            self.id,
            self.peer,
            self.public_port,
            self.dialback_port,
            extra={**self.log_fields(), "dialback_port": self.dialback_port},
        )

    def drain(self) -> None:
        """Take no more clients; paired connections go on."""
        for listener in self._listeners:
            listener.close()

    def end(self, reason: str) -> None:
        """Close both ports (free at once) and the waiting clients; paired ones go on."""
        if self.ended:
            return
        self.ended = True
        self.drain()
        self._ports.release(self.public_port)
        self._ports.release(self.dialback_port)
        for waiter in self._waiting.values():
            waiter.cancel()
        self._dialbacks.cancel()
        self.control.close()
        self._slot.release()
        what = f"session {self.id} from {self.peer}"
        self.log.summary(logging.WARNING, what)
        logger.info(
            "%s ended: %s; public port %d closed",
            what,
            reason,
            self.public_port,
            extra={**self.log_fields(), "reason": reason},
        )

    async def finish(self, wait: bool) -> None:
        """Until no connection is left: let paired ones end on their own if ``wait``, else
        cancel them."""
        try:
            if wait:
                await self.connections.wait()
        finally:
            self.connections.cancel()
            await self.connections.wait()
            await self._dialbacks.wait()

    # ----------------------------------------------------------- clients
    def _accept_public(self, conn: socket.socket, address: Any) -> None:
        if self.ended:
            reset(conn)
            return
        if len(self.connections) >= self._options.max_connections:
            self._refuse_public(
                conn,
                address,
                "max_connections",
                f"{len(self.connections)} open, the maximum "
                f"(--max-connections {self._options.max_connections})",
            )
            return
        source = source_of(address)
        slot = self._sources.acquire(source)
        if slot is None:
            self._refuse_public(
                conn,
                address,
                "per_source",
                f"{self._sources.held(source)} open from {source}, the maximum "
                f"(--max-connections-per-source {self._sources.limit})",
            )
            return
        accepted = Accepted(conn)
        self.connections.spawn(
            self._client(accepted, format_peer(address), slot),
            name="relay-notify-connection",
            on_done=partial(accepted_done, accepted, slot),
        )

    def _refuse_public(self, conn: socket.socket, address: Any, kind: str, why: str) -> None:
        self._stats.connections_refused[kind] += 1
        self.log.log(
            logging.WARNING,
            f"public refused: {kind}",
            "session %d: refusing a public connection from %s: %s",
            self.id,
            format_peer(address),
            why,
            extra=self.log_fields(),
        )
        reset(conn)

    async def _client(self, accepted: Accepted, peer: str, slot: Slot) -> None:
        """One client: announce it, wait for its dial-back, copy."""
        result = self.traffic.opened()
        self._stats.connections_total += 1
        started = time.monotonic()
        key = secrets.token_hex(TOKEN_BYTES) if self.tokens else str(next(self._numbers))
        waiter: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        self._waiting[key] = waiter
        conn: socket.socket | None = accepted.take()
        server_sock: socket.socket | None = None
        """The dial-back, from its waiter until a transport takes it."""
        received = False
        client: Pair | None = None
        try:
            self.control.write(new_line(self.dialback_port, key if self.tokens else None))
            client = await asyncio.open_connection(sock=conn)
            conn = None
            timeout = self._options.handshake_timeout
            try:
                async with asyncio.timeout(timeout):
                    server_sock = await waiter
                    received = True
            except TimeoutError:
                result.error = TimeoutError(f"the server did not dial back within {timeout:g} s")
                client[1].transport.abort()
                return
            server = await asyncio.open_connection(sock=server_sock)
            server_sock = None
            paired = Paired(client, server)
            self._idle.watch(paired)
            try:
                await splice(paired, result)
            finally:
                self._idle.forget(paired)
        except OSError as exc:
            result.error = exc
            if client is not None:
                client[1].transport.abort()
        except asyncio.CancelledError:
            if client is not None:
                client[1].transport.abort()
            raise
        finally:
            del self._waiting[key]
            if not received and waiter.done() and not waiter.cancelled():
                server_sock = waiter.result()  # it dialled back as we gave up
            for sock in (conn, server_sock):
                if sock is not None:
                    reset(sock)
            slot.release()
            self.traffic.closed(result)
            self._log_closed(peer, result, started)

    def _log_closed(self, peer: str, result: PipeResult, started: float) -> None:
        connections_logger.info(
            "session %d: connection from %s closed: %d bytes in, %d out%s",
            self.id,
            peer,
            result.sent,
            result.received,
            f" ({result.error})" if result.error else "",
            extra={
                **self.log_fields(),
                "peer": peer,
                "bytes_in": result.sent,
                "bytes_out": result.received,
                "duration": round(time.monotonic() - started, 6),
                "reason": str(result.error) if result.error else "closed",
            },
        )

    # -------------------------------------------------------- dial-backs
    def _accept_dialback(self, conn: socket.socket, address: Any) -> None:
        peer = format_peer(address)
        if str(address[0]) != self.peer_host:
            reset(conn)
            self._dialback_refused(
                peer, "address", f"not from the registered server's address {self.peer_host}"
            )
            return
        if not self.tokens:
            waiter = next((w for w in self._waiting.values() if not w.done()), None)
            if waiter is None:
                reset(conn)
                self._dialback_refused(peer, "no client", "no client is waiting")
                return
            waiter.set_result(conn)
            return
        if not self._waiting or len(self._unread) >= self._options.max_connections:
            reset(conn)
            self._dialback_refused(
                peer, "no client", f"{len(self._unread)} dial-backs, {len(self._waiting)} clients"
            )
            return
        accepted = Accepted(conn)
        self._unread.add(accepted)
        self._dialbacks.spawn(
            self._dialback(accepted, peer),
            name="relay-notify-dialback",
            on_done=partial(self._dialback_done, accepted),
        )

    def _dialback_done(self, accepted: Accepted, task: asyncio.Task[None]) -> None:
        self._unread.discard(accepted)
        accepted.close_unless_taken(task)

    async def _dialback(self, accepted: Accepted, peer: str) -> None:
        """Read the token and hand the dial-back to the client it was issued for."""
        conn = accepted.take()
        timeout = self._options.handshake_timeout
        try:
            conn.setblocking(False)
            async with asyncio.timeout(timeout):
                line = await read_at_most(conn, TOKEN_LINE)
        except TimeoutError:
            reset(conn)
            self._dialback_refused(peer, "no token", f"no token line within {timeout:g} s")
            return
        except OSError as exc:
            reset(conn)
            self._dialback_refused(peer, "no token", f"no token line: {exc}")
            return
        except asyncio.CancelledError:
            reset(conn)
            raise
        finally:
            self._unread.discard(accepted)
        if len(line) < TOKEN_LINE:
            reset(conn)
            self._dialback_refused(peer, "no token", f"it ended after {len(line)} bytes")
            return
        waiter = self._waiting.get(line[:-1].decode("ascii", "replace"))
        if waiter is None or waiter.done() or line[-1:] != b"\n":
            reset(conn)
            self._dialback_refused(peer, "wrong token", "not a token of a waiting client")
            return
        waiter.set_result(conn)

    def _dialback_refused(self, peer: str, kind: str, why: str) -> None:
        self._stats.refused[f"dial_back_{kind.replace(' ', '_')}"] += 1
        self.log.log(
            logging.WARNING,
            f"dial-back refused: {kind}",
            "session %d: dial-back from %s refused: %s",
            self.id,
            peer,
            why,
            extra={**self.log_fields(), "peer": peer, "reason": why},
        )


def accepted_done(accepted: Accepted, slot: Slot, task: asyncio.Task[None]) -> None:
    """The end of a task that was given an accepted socket, even one that never ran."""
    accepted.close_unless_taken(task)
    slot.release()


async def read_at_most(conn: socket.socket, size: int) -> bytes:
    """``size`` bytes from a non-blocking socket, or fewer if it ends first; never more
    (what follows is the client's)."""
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(conn, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    result: PipeResult,
    paired: Paired,
    inbound: bool,
) -> None:
    while data := await reader.read(COPY_CHUNK):
        paired.activity += 1
        writer.write(data)
        if inbound:
            result.sent += len(data)
        else:
            result.received += len(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def splice(paired: Paired, result: PipeResult) -> None:
    """Copy both ways, half-close aware; an error on either side aborts both."""
    client, server = paired.client, paired.server
    copies = [
        asyncio.create_task(_copy(client[0], server[1], result, paired, True)),
        asyncio.create_task(_copy(server[0], client[1], result, paired, False)),
    ]
    try:
        for copy in asyncio.as_completed(copies):
            await copy
    except (OSError, asyncio.IncompleteReadError) as exc:
        result.error = exc
        paired.abort()
    finally:
        for copy in copies:
            copy.cancel()
        await asyncio.wait(copies)
        client[1].close()
        server[1].close()
