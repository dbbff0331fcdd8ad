"""The control port of a TLS relay: a connection is a pending registration from accept on.

``loop.create_server(ssl=...)`` runs the TLS handshake before our protocol sees
the connection, so unfinished handshakes were counted nowhere: one address
could hold thousands, each with its TLS read buffer (256 KiB on asyncio's
loop), until the handshake timeout. Here the relay accepts plain TCP itself
and admits a connection before anything is allocated for it: it takes a place
among the relay's pending registrations (``--max-pending``, all sources) and a
slot of its source (``--max-pending-registrations-per-source``), or it is
closed at once. Only then does its TLS handshake run
(``loop.connect_accepted_socket(ssl=...)``, on asyncio's loop and on uvloop).

When the handshake completes, the connection gives its place and slot back and
goes to the control protocol (seed or v2), which takes its own in the same
callback, as for a plaintext connection: no other connection can slip in
between. A failed or timed-out handshake ends only that connection, with a
rate-limited log line that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

import yamux
from yamux.ratelimit import RateLimitedLog

from ..net import format_peer
from ..wire.greeting import error_line
from ..wire.tls import describe_client_tls_error
from .admission import Admission, PendingRegistration, Refusal
from .limits import Slot, source_of

logger = logging.getLogger("relay.tls")

ACCEPT_PAUSE = 1.0
"""Seconds without accepting after accept() failed, e.g. out of file descriptors
(asyncio's own servers pause as long)."""
PLAINTEXT_HINT_DELAY = 2.0
"""A TLS client sends its ClientHello at once; one silent this long is most likely a
plaintext forwarder waiting for the port line, and gets a refusal line that says so."""
PLAINTEXT_HINT = error_line(
    "this relay's control port speaks TLS: connect with TLS (relay forward --tls, "
    "or --tls-ca FILE to verify a private CA)"
)


class TLSListener:
    """Accepts TCP on ``sock``, admits each connection, then runs its TLS handshake.

    The shape of ``asyncio.Server`` that the relay uses: ``sockets``, ``close()``
    (stop accepting; handshakes in progress go on) and ``wait_closed()``.

    ``admission`` admits, counts and logs refusals; ``protocol_factory`` makes
    the control protocol that a connection goes to once its handshake is done;
    ``log`` takes the lines of failed handshakes.
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
    ) -> None:
        self._sock: socket.socket | None = sock
        self._context = context
        self._timeout = timeout
        self._admission = admission
        self._protocol_factory = protocol_factory
        self._log = log
        self._accepting = yamux.TaskOwner(logger)
        """The accept loop."""
        self._handshakes = yamux.TaskOwner(logger)
        """One task per admitted connection, until its handshake is done."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock is None else (self._sock,)

    def start(self) -> None:
        assert self._sock is not None
        self._accepting.spawn(self._accept(self._sock), name="relay-tls-accept")

    def close(self) -> None:
        """Stop accepting (the port is free at once); handshakes in progress go on."""
        if self._sock is None:
            return
        self._accepting.cancel()
        self._sock.close()
        self._sock = None

    async def wait_closed(self) -> None:
        await self._accepting.wait()
        await self._handshakes.wait()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except ConnectionAbortedError:
                continue  # the client gave up before we accepted
            except OSError as exc:  # out of file descriptors or memory, most likely
                self._log.log(
                    logging.ERROR,
                    "accept",
                    "cannot accept on the control port (%s); pausing %g s",
                    exc,
                    ACCEPT_PAUSE,
                )
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            self._admit(conn, address)

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
        speaks = await _speaks_first(
            handshake.waiting_socket, min(PLAINTEXT_HINT_DELAY, self._timeout)
        )
        conn = handshake.take_socket()
        if not speaks:
            with conn, contextlib.suppress(OSError):  # gone already: no one to tell
                conn.send(PLAINTEXT_HINT)
            self._log.log(
                logging.WARNING,
                "tls: silent",
                "%s sent nothing on the TLS control port: a plaintext client waiting for "
                "the port line? Told it to use TLS; connection closed",
                peer,
                extra={"peer": peer, "reason": "plaintext client"},
            )
            return
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


async def _speaks_first(conn: socket.socket, delay: float) -> bool:
    """Whether ``conn`` has something to read (or its end) within ``delay`` seconds."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        async with asyncio.timeout(delay):
            await readable
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


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

    @property
    def waiting_socket(self) -> socket.socket:
        """The connection, still ours (closed by ``ended`` if the task is cancelled)."""
        assert self._conn is not None
        return self._conn

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
