"""Connections handed from one worker to another (SCM_RIGHTS) on the lines between them.

When a service registers several sessions (``sessions=K``) and the kernel
gives the next one to a worker that holds one already, that worker hands the
connection on to a worker that holds none (``relay.server.identities`` says
which): the registration has been checked (its v2 response) but nothing has
been sent back yet, so the other worker simply goes on from there, and the
sessions of one service end up on different cores. A TLS control connection
is never handed on (its state is in the process that did the handshake).

A public connection of a shared port goes the same way when the kernel gives
it to a worker that does not hold its host name (``RoutedConnection``,
``relay.server.shared_ports``): the worker that holds it goes on from the
bytes read so far. One that cannot be sent (no line to that worker, or its
line is full) is answered 503 by the worker that read it.

Each pair of workers has a line of its own (``relay.workers.lines``): a
SOCK_SEQPACKET socket pair, each message one pickled ``Handoff`` or
``RoutedConnection`` and the connection's descriptor, sent straight to the
worker that takes it; the supervisor is not woken up. Both ends are the
relay's own processes (a socket pair has no address anyone else could reach),
so pickle is safe; a message that is not what the line carries (damaged, cut
at ``MAX_HANDOFF``, without its descriptor) is logged and its descriptor
closed, and the line goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from yamux.ratelimit import RateLimitedLog

from ..server.request import RegistrationRequest
from ..wire.route import RouteKind

logger = logging.getLogger("relay.workers")
_damaged = RateLimitedLog(logger)
"""Lines about messages a line cannot use (a bug's, so possibly one per connection)."""

MAX_HANDOFF = 256 * 1024
"""Bytes of one message at most: a request and the bytes the client sent early (64 KiB),
or a routed connection's head (16 KiB and what came with it in one read). A Unix socket's
send buffer may take less: the send fails (OSError) either way."""


@dataclass(frozen=True)
class Handoff:
    """A registration on its way to another worker, with its connection's descriptor."""

    request: RegistrationRequest
    early: bytes
    """What the client sent after its response (a well-behaved one sends nothing)."""


@dataclass(frozen=True)
class RoutedConnection:
    """A public connection of a shared port on its way to the worker that holds its name."""

    kind: RouteKind
    host: str
    early: bytes
    """Everything read of it so far (the head that named ``host``): the service gets it
    first, unchanged."""


M = TypeVar("M")


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class FdLine(Generic[M]):
    """One end of a line of (message, descriptor) pairs; ``on_message`` gets each message
    of the ``carries`` types (and owns its descriptor); the line ends when the other
    process does (or closes its end)."""

    def __init__(
        self,
        sock: socket.socket,
        carries: tuple[type[M], ...],
        on_message: Callable[[M, int], None],
        name: str,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.name = name
        """What the logs call it (``the line to worker 2``)."""
        self._carries = carries
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.closed = False

    def send(self, message: M, fd: int) -> None:
        """Send ``message`` with a copy of ``fd``; OSError if the line cannot take it now."""
        if self.closed:
            raise OSError(f"{self.name} is closed")
        data = pickle.dumps(message)
        if len(data) > MAX_HANDOFF:
            raise OSError(f"a handoff of {len(data)} bytes is over {MAX_HANDOFF}")
        socket.send_fds(self.sock, [data], [fd])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _readable(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MAX_HANDOFF, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.error("%s: %s", self.name, exc)
            self.close()
            return
        if not data:  # the other end is closed (this line never carries an empty message)
            self.close()
            for fd in fds:
                os.close(fd)
            return
        message = self._read(data, fds, flags)
        if message is None:
            for fd in fds:
                os.close(fd)
            return
        self._on_message(message, fds[0])

    def _read(self, data: bytes, fds: list[int], flags: int) -> M | None:
        """The message in ``data``; None (logged) if it is not one this line carries."""
        if flags & socket.MSG_TRUNC:
            problem = f"a message over {MAX_HANDOFF} bytes"
        elif len(fds) != 1 or flags & socket.MSG_CTRUNC:
            problem = "a message without exactly one descriptor"
        else:
            try:
                message = pickle.loads(data)
            except Exception as exc:  # a damaged pickle raises any of a dozen types
                problem = f"a damaged message of {len(data)} bytes ({type(exc).__name__})"
            else:
                if isinstance(message, self._carries):
                    return message
                problem = f"a {type(message).__name__}, which it does not carry"
        _damaged.log(logging.ERROR, self.name, "%s: %s; its descriptor closed", self.name, problem)
        return None
