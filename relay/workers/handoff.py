"""Connections handed from one worker to another, through the supervisor (SCM_RIGHTS).

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
bytes read so far. One that cannot be delivered (the worker is gone, its line
is full) goes back to the worker that sent it, which answers the client 503.

Each worker has a line to the supervisor for this: a SOCK_SEQPACKET socket
pair, each message one pickled ``Handoff`` (or ``RoutedConnection``) and the
connection's descriptor. The supervisor passes the message on to the worker it
names and closes its own copy of the descriptor at once: it holds no connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from yamux.ratelimit import RateLimitedLog

from ..server.request import RegistrationRequest
from ..wire.route import RouteKind

logger = logging.getLogger("relay.workers")
_passing = RateLimitedLog(logger)
"""The supervisor's lines about messages it cannot pass on (under load, one per connection)."""

MAX_HANDOFF = 256 * 1024
"""Bytes of one message at most: a request and the bytes the client sent early (64 KiB),
or a routed connection's head (16 KiB and what came with it in one read). A Unix socket's
send buffer may take less: the send fails (OSError) either way."""


@dataclass(frozen=True)
class Handoff:
    """A registration on its way to another worker, with its connection's descriptor."""

    to: int
    """The worker that takes it."""
    request: RegistrationRequest
    early: bytes
    """What the client sent after its response (a well-behaved one sends nothing)."""


@dataclass(frozen=True)
class RoutedConnection:
    """A public connection of a shared port on its way to the worker that holds its name."""

    to: int
    kind: RouteKind
    host: str
    early: bytes
    """Everything read of it so far (the head that named ``host``): the service gets it
    first, unchanged."""
    sender: int
    """The worker it came from."""
    returned: bool = False
    """Could not be delivered: back at its sender, to be answered 503."""


Message = Handoff | RoutedConnection


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class FdLine:
    """One end of a line of (``Handoff`` or ``RoutedConnection``, descriptor) messages;
    ``on_message`` gets each (and owns the descriptor); the line ends when the other
    process does."""

    def __init__(self, sock: socket.socket, on_message: Callable[[Message, int], None]) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.closed = False

    def send(self, message: Message, fd: int) -> None:
        """Send ``message`` with a copy of ``fd``; OSError if the line cannot take it now."""
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
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_HANDOFF, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.error("handoff line: %s", exc)
            self.close()
            return
        if not data:
            self.close()
            for fd in fds:
                os.close(fd)
            return
        if not fds:
            logger.error("handoff line: a message without its connection")
            return
        self._on_message(pickle.loads(data), fds[0])
        for fd in fds[1:]:
            os.close(fd)


def pass_on(message: Message, fd: int, target: FdLine | None, sender: FdLine | None) -> None:
    """The supervisor's part: send ``message`` on to ``target`` (None: its worker is gone);
    a routed connection that cannot go there goes back to ``sender``. Closes ``fd``."""
    try:
        try:
            if target is None:
                raise OSError(f"worker {message.to} is gone")
            target.send(message, fd)
        except OSError as exc:
            if not isinstance(message, RoutedConnection) or sender is None or message.returned:
                raise
            _passing.log(
                logging.WARNING,
                "routed",
                "cannot pass a connection on to worker %d: %s; back to worker %d, to answer 503",
                message.to,
                exc,
                message.sender,
            )
            sender.send(replace(message, returned=True), fd)
    except OSError as exc:
        what = "a registration" if isinstance(message, Handoff) else "a connection"
        _passing.log(
            logging.ERROR, what, "cannot pass %s on to worker %d: %s", what, message.to, exc
        )
    finally:
        os.close(fd)
