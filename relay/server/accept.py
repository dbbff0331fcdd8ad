"""Accepting connections: one policy for every listening socket of the relay.

asyncio's ``create_server`` handles running out of file descriptors badly on
both loops. CPython 3.11's selector loop goes on calling ``accept()`` up to
``backlog`` times after EMFILE, logging a traceback and scheduling a retry for
each (tens of MB of log in seconds, a core at 100 %); libuv (uvloop) accepts
every queued connection with a reserve descriptor and closes it at once, so
clients that would have been served a moment later are dropped.

Here every listener (the control port, the TLS control port, each public port,
the shared HTTP and TLS ports, the notify protocol's ports) accepts from a
reader callback, in batches, and hands the accepted socket to its owner, which
checks its limits before a transport exists and makes one with
``loop.connect_accepted_socket`` (a ``ProtocolListener`` makes the transport
first: the plain control port, the shared ports). When
``accept()`` fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
listener stops reading its socket for ``ACCEPT_PAUSE`` seconds, then tries
again: queued connections wait in the kernel's backlog until there are
descriptors for them. An episode costs two log lines (its start, and its end
with the count of failed tries), through a rate-limited log the relay's
listeners share.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import yamux
from yamux.ratelimit import RateLimitedLog

__all__ = [
    "ACCEPT_BATCH",
    "ACCEPT_PAUSE",
    "Accepted",
    "Acceptor",
    "OnAccept",
    "ProtocolListener",
    "accept_log",
    "reset",
]

logger = logging.getLogger("relay.accept")

ACCEPT_PAUSE = 0.1
"""Seconds a listener stops accepting after ``accept()`` failed. Short: a connection
queued meanwhile waits at most this long once descriptors are free again."""
ACCEPT_BATCH = 128
"""Connections accepted per readiness callback at most, so that one busy port does not
starve the loop's other callbacks."""
_LINGER_RESET = struct.pack("ii", 1, 0)

OnAccept = Callable[[socket.socket, Any], None]
"""Takes an accepted socket (blocking mode as accept() made it) and its peer address; from
then on the socket is the callee's to close."""


def accept_log() -> RateLimitedLog:
    """The rate-limited log that a relay's listeners share: an fd shortage hits them all."""
    return RateLimitedLog(logger)


def reset(conn: socket.socket) -> None:
    """Close ``conn`` with RST (SO_LINGER 0): the peer sees a refusal, not a clean end."""
    with contextlib.suppress(OSError):  # already reset by the peer: closing will do
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    conn.close()


class Acceptor:
    """Accepts on a listening socket and calls ``on_accept(conn, address)`` for each.

    ``what`` names the listener in the log ("the control port", "public port
    5000 (session 3)"); ``log`` is shared by the relay's listeners
    (``accept_log``). ``close()`` stops accepting and closes the socket (the
    port is free at once).
    """

    __slots__ = (
        "_episode_started",
        "_failures",
        "_log",
        "_loop",
        "_on_accept",
        "_resume",
        "_sock",
        "what",
    )

    def __init__(
        self, sock: socket.socket, on_accept: OnAccept, *, what: str, log: RateLimitedLog
    ) -> None:
        self._sock: socket.socket | None = sock
        self._on_accept = on_accept
        self.what = what
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self._failures = 0
        """accept() calls that failed in this episode: from the first failure until every
        queued connection is accepted."""
        self._episode_started = 0.0

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening socket; empty once closed (the shape of ``asyncio.Server``)."""
        return () if self._sock is None else (self._sock,)

    def start(self) -> None:
        assert self._sock is not None
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock, self._accept_batch)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        else:
            self._loop.remove_reader(self._sock)
        self._sock.close()
        self._sock = None

    def _accept_batch(self) -> None:
        sock = self._sock
        if sock is None:
            return
        on_accept = self._on_accept
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                if self._failures:
                    self._recovered()
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we accepted
            except OSError as exc:
                self._pause(exc)
                return
            on_accept(conn, address)
            if self._sock is None:
                return  # on_accept closed us (its session ended)

    def _pause(self, exc: OSError) -> None:
        """Stop reading the socket for ``ACCEPT_PAUSE``: Linux reports it readable as long
        as connections are queued, so reading on would spin."""
        assert self._sock is not None
        self._loop.remove_reader(self._sock)
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
        self._failures += 1
        if self._failures > 1:
            return
        self._episode_started = time.monotonic()
        name = errno.errorcode.get(exc.errno or 0, "error")
        self._log.log(
            logging.ERROR,
            f"accept failed: {name}",
            "cannot accept on %s: %s (%s); not accepting there for %g s at a time until it "
            "works again%s",
            self.what,
            os.strerror(exc.errno) if exc.errno else exc,
            name,
            ACCEPT_PAUSE,
            "; raise the file descriptor limit (ulimit -n, LimitNOFILE=)"
            if exc.errno in (errno.EMFILE, errno.ENFILE)
            else "",
            extra={"reason": name},
        )

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None:
            self._loop.add_reader(self._sock, self._accept_batch)

    def _recovered(self) -> None:
        """Every queued connection is accepted: the episode is over."""
        self._log.log(
            logging.WARNING,
            "accept recovered",
            "accepting on %s again: %d failed tries in %.1f s, queued connections served",
            self.what,
            self._failures,
            time.monotonic() - self._episode_started,
        )
        self._failures = 0


class ProtocolListener:
    """``loop.create_server`` made of an ``Acceptor``: each accepted connection goes to
    ``protocol_factory`` by ``loop.connect_accepted_socket``.

    The shape of ``asyncio.Server`` that the relay uses: ``sockets``, ``close()``
    (stop accepting; connections go on) and ``wait_closed()``.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        what: str,
        log: RateLimitedLog,
    ) -> None:
        self._acceptor = Acceptor(sock, self._accepted, what=what, log=log)
        self._protocol_factory = protocol_factory
        self._connecting = yamux.TaskOwner(logger)
        """One task per accepted socket until its transport is made (a loop iteration)."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._acceptor.sockets

    def start(self) -> None:
        self._acceptor.start()

    def close(self) -> None:
        self._acceptor.close()

    async def wait_closed(self) -> None:
        await self._connecting.wait()

    def _accepted(self, conn: socket.socket, address: object) -> None:
        accepted = Accepted(conn)
        self._connecting.spawn(
            self._connect(accepted), name="relay-accept", on_done=accepted.close_unless_taken
        )

    async def _connect(self, accepted: Accepted) -> None:
        conn = accepted.take()
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._protocol_factory, conn)
        except OSError:  # reset by the client already; the protocol never saw it
            conn.close()


class Accepted:
    """An accepted socket until the task that makes its transport takes it; a task
    cancelled before it ran never does, and then its done callback closes it."""

    __slots__ = ("_conn",)

    def __init__(self, conn: socket.socket) -> None:
        self._conn: socket.socket | None = conn

    def take(self) -> socket.socket:
        conn, self._conn = self._conn, None
        assert conn is not None
        return conn

    def close_unless_taken(self, task: asyncio.Task[None]) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
