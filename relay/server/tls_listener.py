"""The control port of a TLS relay: a connection is a pending registration from accept on.

``loop.create_server(ssl=...)`` runs the TLS handshake before our protocol sees
the connection, so unfinished handshakes were counted nowhere: one address
could hold thousands, each with its TLS read buffer (256 KiB on asyncio's
loop), until the handshake timeout. Here the relay accepts plain TCP itself
(``relay.server.accept``, as on every port) and admits a connection before
anything is allocated for it: it takes a place among the relay's pending
registrations (``--max-pending``, all sources) and a slot of its source
(``--max-pending-registrations-per-source``), or it is closed at once. Only
then does its TLS handshake run (``loop.connect_accepted_socket(ssl=...)``, on
asyncio's loop and on uvloop).

When the handshake completes, the connection gives its place and slot back and
goes to the control protocol (seed or v2), which takes its own in the same
callback, as for a plaintext connection: no other connection can slip in
between. A failed or timed-out handshake ends only that connection, with a
rate-limited log line that says why.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import format_peer
from ..wire.tls import describe_client_tls_error
from .accept import Acceptor
from .admission import Admission, PendingRegistration, Refusal
from .limits import Slot, source_of

logger = logging.getLogger("relay.tls")


class TLSListener:
    """Accepts TCP on ``sock``, admits each connection, then runs its TLS handshake.

    The shape of ``asyncio.Server`` that the relay uses: ``sockets``, ``close()``
    (stop accepting; handshakes in progress go on) and ``wait_closed()``.

    ``admission`` admits, counts and logs refusals; ``protocol_factory`` makes
    the control protocol that a connection goes to once its handshake is done;
    ``log`` takes the lines of failed handshakes, ``accept_log`` those of an
    accept() that fails (``relay.server.accept``).
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        timeout: float,
        admission: Admission,
        protocol_factory: Callable[[], asyncio.Protocol],
        log: RateLimitedLog,
        accept_log: RateLimitedLog,
    ) -> None:
        self._acceptor = Acceptor(sock, self._admit, what="the control port", log=accept_log)
        self._context = context
        self._timeout = timeout
        self._admission = admission
        self._protocol_factory = protocol_factory
        self._log = log
        self._handshakes = yamux.TaskOwner(logger)
        """One task per admitted connection, until its handshake is done."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._acceptor.sockets

    def start(self) -> None:
        self._acceptor.start()

    def close(self) -> None:
        """Stop accepting (the port is free at once); handshakes in progress go on."""
        self._acceptor.close()

    async def wait_closed(self) -> None:
        await self._handshakes.wait()

    def _admit(self, conn: socket.socket, address: object) -> None:
        """Take a pending place and a slot of the source, or close at once."""
        peer = format_peer(address)
        admitted = self._admission.admit(source_of(address))
        if isinstance(admitted, Refusal):
            conn.close()
            self._admission.refused(peer, *admitted)
            return
        pending = self._admission.pending
        handshake = _Handshake(conn, admitted, pending, self._hand_over)
        pending.add(handshake)
        handshake.task = self._handshakes.spawn(
            self._handshake(handshake, peer), name="relay-tls-handshake", on_done=handshake.ended
        )

    async def _handshake(self, handshake: _Handshake, peer: str) -> None:
        conn = handshake.take_socket()
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: handshake, conn, ssl=self._context, ssl_handshake_timeout=self._timeout
            )
        except OSError as exc:  # ssl.SSLError, the handshake timeout, a reset
            reason = describe_client_tls_error(exc, self._timeout)
            self._log.log(
                logging.WARNING,
                f"tls: {type(exc).__name__}",
                "TLS handshake with %s failed: %s; connection closed",
                peer,
                reason,
                extra={"peer": peer, "reason": reason},
            )

    def _hand_over(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._protocol_factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class _Handshake(asyncio.Protocol):
    """One admitted connection during its TLS handshake: a pending registration.

    It is the protocol that ``connect_accepted_socket`` hands the TLS transport
    to when the handshake completes; it gives its place and slot back, then
    hands the transport over (or, if the handshake failed, gives them back when
    its task ends).
    """

    def __init__(
        self,
        conn: socket.socket,
        slot: Slot,
        pending: set[PendingRegistration],
        hand_over: Callable[[asyncio.BaseTransport], None],
    ) -> None:
        self._conn: socket.socket | None = conn
        """Ours until the handshake task takes it."""
        self._slot = slot
        self._pending = pending
        self._hand_over = hand_over
        self.task: asyncio.Task[None] | None = None

    def take_socket(self) -> socket.socket:
        conn, self._conn = self._conn, None
        assert conn is not None
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: on to the control protocol, before any byte is read."""
        self._give_back()
        self._hand_over(transport)

    def ended(self, task: asyncio.Task[None]) -> None:
        """The task's end, even one cancelled before it ran (the socket is still ours)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._give_back()

    def abort(self) -> None:
        """The relay is closing."""
        if self.task is not None:
            self.task.cancel()

    def _give_back(self) -> None:
        """Both idempotent: the handshake's end may come after the hand-over."""
        self._pending.discard(self)
        self._slot.release()
