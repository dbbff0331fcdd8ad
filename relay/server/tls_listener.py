"""The control port of a TLS relay: a connection is a pending registration from accept on.

``loop.create_server(ssl=...)`` runs the TLS handshake before our protocol sees
the connection, so unfinished handshakes were counted nowhere: one address
could hold thousands, each with its TLS read buffer (256 KiB on asyncio's
loop), until the handshake timeout. Here the relay accepts plain TCP itself
(``relay.server.accept``, as on every port) and admits a connection before
anything is allocated for it: it takes a place among the registrations in
progress (``relay.server.admission``; it may be taken from whoever holds the
most), or it is closed at once. A silent
connection costs no TLS state: only when its ClientHello begins does it take
one of the fewer places of TLS handshakes, and its handshake run
(``loop.connect_accepted_socket(ssl=...)``, on asyncio's loop and on uvloop).

When the handshake completes, the connection gives its handshake place back
and goes, with its other place, to the control protocol (seed or v2) in the
same callback. A failed or timed-out handshake ends only that connection,
counts as a failure of its source, and is logged (rate-limited) with the reason;
a connection silent for a few seconds is most likely a plaintext client, and is
told so in a refusal line.
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
from ..wire.refusal import PERMANENT, format_refusal
from ..wire.tls import describe_client_tls_error
from .accept import Acceptor
from .admission import Admission, Refused
from .limits import source_of
from .places import Place

logger = logging.getLogger("relay.tls")

MIN_HANDSHAKE_TIME = 0.1
"""Seconds a handshake whose ClientHello began at the deadline still has."""
PLAINTEXT_HINT_DELAY = 2.0
"""A TLS client sends its ClientHello at once; one silent this long is most likely a
plaintext forwarder waiting for the port line, and gets a refusal line that says so."""
PLAINTEXT_HINT = format_refusal(
    "this relay's control port speaks TLS: connect with TLS (relay forward --tls, "
    "or --tls-ca FILE to verify a private CA)",
    PERMANENT,
)


async def _readable(sock: socket.socket) -> None:
    """Until ``sock`` has bytes to read, or its end."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _set_once(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


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
        protocol_factory: Callable[[Place], asyncio.Protocol],
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
        """Take a place, or close at once."""
        peer = format_peer(address)
        source = source_of(address)
        handshake = _Handshake(conn, self._hand_over)
        admitted = self._admission.admit(source, handshake.abort)
        if isinstance(admitted, Refused):
            conn.close()
            self._admission.refused(peer, admitted)
            return
        handshake.place = admitted
        handshake.task = self._handshakes.spawn(
            self._handshake(handshake, peer, source),
            name="relay-tls-handshake",
            on_done=handshake.ended,
        )

    async def _handshake(self, handshake: _Handshake, peer: str, source: str) -> None:
        """Wait for the ClientHello's first bytes (a silent connection costs no TLS state),
        take a handshake's place, then the handshake; all within the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            try:
                async with asyncio.timeout(min(PLAINTEXT_HINT_DELAY, self._timeout)):
                    await _readable(handshake.sock)
            except TimeoutError:
                self._tell_plaintext(handshake.take_socket(), peer)
                self._admission.failed((source, None))
                return
            admitted = self._admission.start_handshake(source, handshake.abort)
            if isinstance(admitted, Refused):
                self._admission.refused(peer, admitted)
                return  # the socket is closed when the task ends
            handshake.handshake_place = admitted
            await loop.connect_accepted_socket(
                lambda: handshake,
                handshake.take_socket(),
                ssl=self._context,
                ssl_handshake_timeout=max(deadline - loop.time(), MIN_HANDSHAKE_TIME),
            )
        except OSError as exc:  # ssl.SSLError, the handshake timeout, a reset
            reason = (
                f"no complete TLS handshake within {self._timeout:g} s"
                if isinstance(exc, TimeoutError)
                else describe_client_tls_error(exc, self._timeout)
            )
            self._log.log(
                logging.WARNING,
                f"tls: {type(exc).__name__}",
                "TLS handshake with %s failed: %s; connection closed",
                peer,
                reason,
                extra={"peer": peer, "reason": reason},
            )
            self._admission.failed((source, None))
            # Its traceback holds asyncio's frames, whose waiter holds it back: a cycle that
            # would keep this connection's TLS buffers until the garbage collector runs.
            exc.__traceback__ = None

    def _tell_plaintext(self, conn: socket.socket, peer: str) -> None:
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

    def _hand_over(self, transport: asyncio.BaseTransport, place: Place) -> None:
        protocol = self._protocol_factory(place)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class _Handshake(asyncio.Protocol):
    """One admitted connection during its TLS handshake.

    It is the protocol that ``connect_accepted_socket`` hands the TLS transport
    to when the handshake completes; it gives its handshake place back and hands
    the transport and its place over (or, if the handshake failed or was
    dropped, gives both back when its task ends).
    """

    def __init__(
        self,
        conn: socket.socket,
        hand_over: Callable[[asyncio.BaseTransport, Place], None],
    ) -> None:
        self._conn: socket.socket | None = conn
        """Ours until the handshake task takes it."""
        self.place: Place | None = None
        """Its place among the registrations in progress; it goes on with the connection."""
        self.handshake_place: Place | None = None
        """Its place among the TLS handshakes, from the ClientHello's first bytes on."""
        self._hand_over = hand_over
        self.task: asyncio.Task[None] | None = None

    @property
    def sock(self) -> socket.socket:
        """The connection's socket, while it is ours."""
        assert self._conn is not None
        return self._conn

    def take_socket(self) -> socket.socket:
        conn, self._conn = self._conn, None
        assert conn is not None
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: on to the control protocol, before any byte is read."""
        assert self.place is not None
        assert self.handshake_place is not None
        self.handshake_place.release()
        if not self.place.held:  # dropped (its place taken) while the handshake finished
            transport.close()
            return
        self._hand_over(transport, self.place.hand_over())

    def ended(self, task: asyncio.Task[None]) -> None:
        """The task's end, even one cancelled before it ran (the socket is still ours)."""
        self.task = None  # a cancelled task's traceback holds us: no cycle through the task
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for place in (self.place, self.handshake_place):
            if place is not None:
                place.release()

    def abort(self, reason: str) -> None:
        """Its place was taken, or the relay is closing (nothing can be said before TLS): both
        places are free at once, the task ends soon."""
        for place in (self.place, self.handshake_place):
            if place is not None:
                place.release()
        if self.task is not None:
            self.task.cancel()
