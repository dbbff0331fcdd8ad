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

A dial-back must come from the control connection's IP address and within
``handshake_timeout`` of its ``[NEW]`` line, else the client is closed. That
is all the original design allows to check, so any process on the server's
host can take clients. With ``notify_token`` each line is ``[NEW]<dial-back
port> <token>\\n``, a fresh 128-bit token per client, and a dial-back must send
``<token>\\n`` first: it gets the client the token was issued for, and nothing
without it.

The control connection carries nothing from the server; bytes on it are
discarded, and its EOF ends the registration (listeners closed, waiting
clients closed, paired connections finish). The limits of the seed protocol
apply: ``max_sessions``, ``max_connections`` per registration (waiting or
paired), their per-source shares (a notify registration never stops being
"in its handshake", so ``max_pending_registrations_per_source`` bounds the
registrations of a source), and ``idle_timeout`` on paired connections.

This module runs the control port and the registry; ``relay.server.notify_session``
carries one registration, its clients and its dial-backs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from functools import partial
from typing import Any

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import BindAddress, format_peer, listening_port, resolve_bind_address
from ..options import OptionError, RelayOptions
from ..options.declare import takes_options
from ..stats import RelayStats
from ..store.state_dir import open_state_dir
from ..wire.refusal import RETRY, format_refusal
from .accept import Accepted, Acceptor, accept_log
from .interface import AuthFileStatus, Readiness, SessionInfo
from .limits import IdleWatch, Slot, SourceSlots, share, source_of
from .notify_session import NotifySession, Paired, accepted_done
from .ports import PortAllocator
from .request import SEED

logger = logging.getLogger("relay.notify")

CONTROL_DISCARD = 1 << 12
"""Bytes read (and dropped) at a time from a control connection."""


class NotifyRelay:
    """The relay of ``--protocol notify``: a ``relay.server.interface.Relay``, as
    ``RelayServer`` is, for the CLI, metrics and drain.

    ``options`` and the keywords are ``RelayOptions``, with ``protocol="notify"``;
    of them it uses ``bind``, ``port_range``, ``max_sessions``, ``max_connections``,
    the per-source limits, ``idle_timeout``, ``handshake_timeout`` (the dial-back's
    deadline) and ``notify_token``.
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
        self.auth_file_status: AuthFileStatus | None = None
        """The notify protocol has no authentication."""
        self.accept_log = accept_log()
        """Where every listener of this relay says that accept() fails (out of descriptors)."""
        self._log = RateLimitedLog(logger)
        """Refused registrations: a stranger must not be able to write our log."""
        self._registering = SourceSlots(
            share(checked.max_pending_registrations_per_source, checked.max_sessions)
        )
        """Registrations per source: a notify registration has no handshake to finish, so
        its slot is held until it ends."""
        self._idle: IdleWatch[Paired] = IdleWatch(checked.idle_timeout, _idle_pair)
        self._bind: BindAddress | None = None
        self._control: Acceptor | None = None
        self._sessions: dict[int, NotifySession] = {}
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
        except BaseException:
            await ports.close()
            raise
        self._ports = ports
        self._control = Acceptor(
            sock, self._accept_registration, what="the control port", log=self.accept_log
        )
        self._control.start()
        logger.info(
            "Serving relay requests on port %d (auth: none; tls: off; protocol: notify%s)",
            self.port,
            ", dial-back tokens" if options.notify_token else "",
            extra={"control_port": self.port, "auth": "none", "tls": "off", "protocol": "notify"},
        )

    @property
    def port(self) -> int:
        return listening_port(self._control)

    @property
    def sessions(self) -> list[SessionInfo]:
        return [session.info() for session in self._sessions.values()]

    def readiness(self) -> Readiness:
        if self._closed.is_set():
            return Readiness(False, "closed")
        if self.draining:
            return Readiness(False, "draining")
        if self._control is None:
            return Readiness(False, "not listening yet")
        return Readiness(True, f"serving on port {self.port}")

    async def serve_forever(self) -> None:
        try:
            await self._closed.wait()
        finally:
            self.close()
            await self.wait_closed()

    def drain(self) -> None:
        """Stop taking registrations and clients at once; paired connections go on."""
        self.draining = True
        if self._control is not None:
            self._control.close()
        for session in self._sessions.values():
            session.drain()

    async def wait_idle(self) -> None:
        while busy := [s.traffic for s in self._sessions.values() if s.traffic.open_connections]:
            await busy[0].wait_idle()

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
        self._idle.close()
        self._tasks.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._tasks.wait()
        if self._ports is not None:
            ports, self._ports = self._ports, None
            await ports.close()

    # ------------------------------------------------------------- internals
    def _accept_registration(self, conn: socket.socket, address: Any) -> None:
        peer = format_peer(address)
        slot = None
        if self.draining:
            kind, reason = "draining", "relay is shutting down"
        elif len(self._sessions) >= self.options.max_sessions:
            kind = "full"
            reason = (
                f"relay is full: {len(self._sessions)} sessions, the maximum "
                f"(--max-sessions {self.options.max_sessions})"
            )
        else:
            source = source_of(address)
            slot = self._registering.acquire(source)
            kind = "per_source"
            reason = (
                f"{self._registering.held(source)} registrations from {source}, the maximum "
                f"(--max-pending-registrations-per-source {self._registering.limit})"
            )
        if slot is None:
            self._refused(peer, kind, reason)
            _refuse(conn, reason)
            return
        accepted = Accepted(conn)
        self._tasks.spawn(
            self._registered(accepted, (str(address[0]), peer), slot),
            name="relay-notify-registration",
            on_done=partial(accepted_done, accepted, slot),
        )

    def _refused(self, peer: str, kind: str, reason: str) -> None:
        self.stats.refused[kind] += 1
        self._log.log(
            logging.WARNING,
            f"refused: {kind}",
            "refusing registration from %s: %s",
            peer,
            reason,
            extra={"peer": peer, "reason": reason},
        )

    async def _registered(self, accepted: Accepted, peer: tuple[str, str], slot: Slot) -> None:
        conn = accepted.take()
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:  # reset by the server already
            conn.close()
            return
        try:
            public, dialback = await self._listen()
        except OSError as exc:
            reason = f"cannot open a public port: {exc}"
            self._refused(peer[1], "no_port", reason)
            writer.write(format_refusal(reason, RETRY))
            writer.close()
            return
        assert self._ports is not None
        session = NotifySession(
            next(self._ids),
            peer,
            writer,
            slot,
            public=public,
            dialback=dialback,
            options=self.options,
            stats=self.stats,
            ports=self._ports,
            idle=self._idle,
            accept_log=self.accept_log,
        )
        self._sessions[session.id] = session
        self.stats.sessions_total += 1
        reason = "closed by the server"
        try:
            session.start()
            while await reader.read(CONTROL_DISCARD):
                pass
        except asyncio.CancelledError:
            reason = "relay shutting down"
            raise
        except OSError as exc:
            reason = str(exc)
        finally:
            session.end(reason)
            del self._sessions[session.id]
            self.stats.session_ended(session.traffic)
            await session.finish(wait=not self._closed.is_set())

    async def _listen(self) -> tuple[socket.socket, socket.socket]:
        """A public and a dial-back socket on free ports (of --port-range, if given): the
        one allocator the yamux relay uses too."""
        assert self._ports is not None
        public = await self._ports.allocate(SEED)
        try:
            return public, await self._ports.allocate(SEED)
        except OSError:
            self._ports.release(int(public.getsockname()[1]))
            public.close()
            raise


def _idle_pair(paired: Paired) -> None:
    logger.debug("resetting a notify connection: no byte either way for --idle-timeout")
    paired.abort()


def _refuse(conn: socket.socket, reason: str) -> None:
    """One error line on a socket that has no transport, then close it."""
    conn.setblocking(False)
    with contextlib.suppress(OSError):  # gone already, or its buffer full: the close says enough
        conn.send(format_refusal(reason, RETRY))
    conn.close()
