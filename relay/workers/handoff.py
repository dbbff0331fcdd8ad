"""Connections handed from one worker to another, through the supervisor (SCM_RIGHTS).

When a service registers several sessions (``sessions=K``) and the kernel
gives the next one to a worker that holds one already, that worker hands the
connection on to a worker that holds none (``relay.server.identities`` says
which): the registration has been checked (its v2 response) but nothing has
been sent back yet, so the other worker simply goes on from there, and the
sessions of one service end up on different cores. A TLS control connection
is never handed on (its state is in the process that did the handshake).

Each worker has a line to the supervisor for this: a SOCK_SEQPACKET socket
pair, each message one pickled ``Handoff`` and the connection's descriptor.
The supervisor passes the message on to the worker it names and closes its
own copy of the descriptor at once: it holds no connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..server.request import RegistrationRequest

logger = logging.getLogger("relay.workers")

MAX_HANDOFF = 256 * 1024
"""Bytes of one message at most: a request and the bytes the client sent early (64 KiB)."""


@dataclass(frozen=True)
class Handoff:
    """A registration on its way to another worker, with its connection's descriptor."""

    to: int
    """The worker that takes it."""
    request: RegistrationRequest
    early: bytes
    """What the client sent after its response (a well-behaved one sends nothing)."""


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class FdLine:
    """One end of a line of (``Handoff``, descriptor) messages; ``on_message`` gets each
    (and owns the descriptor); the line ends when the other process does."""

    def __init__(self, sock: socket.socket, on_message: Callable[[Handoff, int], None]) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.closed = False

    def send(self, handoff: Handoff, fd: int) -> None:
        """Send ``handoff`` with a copy of ``fd``; OSError if the line cannot take it now."""
        data = pickle.dumps(handoff)
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
