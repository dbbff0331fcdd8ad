"""The lines between workers: a SOCK_SEQPACKET socket pair for each pair of workers.

A worker hands a connection (``relay.workers.handoff``) straight to the worker
that takes it, on the line between the two: one more process wakes up for
it, not the supervisor as well.

The supervisor makes the lines and keeps no end of them. A worker that starts
(the first time, or again after it died) gets a fresh line to every worker
running then: its own ends come with its ``WorkerSetup`` (inherited
descriptors), and each other worker's end goes to that worker on its line
from the supervisor, as a ``NewLine`` message whose descriptor is the end. So
at the first start worker 2 gets a line to worker 1, worker 3 one to each of
them, and so on; a worker that restarts gets one to each live worker, which
drops the old one to its dead predecessor. A line ends with either worker:
the other one sees the end and closes its side; until a new line comes,
connections for that worker are refused (503) by the one that read them.
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .handoff import FdLine, Handoff, RoutedConnection, pair

logger = logging.getLogger("relay.workers")

Passed = Handoff | RoutedConnection
"""What a line between two workers carries, with the connection's descriptor."""


@dataclass(frozen=True)
class NewLine:
    """From the supervisor: a line to worker ``peer``, whose end is this message's
    descriptor."""

    peer: int


def lines_to(
    newcomer: int, running: Iterable[tuple[int, socket.socket]]
) -> dict[int, socket.socket]:
    """The supervisor's part when worker ``newcomer`` starts: a line between it and each
    running worker (its index, its line from the supervisor), whose end is sent to that
    worker now; ``newcomer``'s ends by the other worker's index (for the caller to pass to
    the new process, then close). A worker that cannot be sent its end gets no line."""
    ends: dict[int, socket.socket] = {}
    for index, line in running:
        ours, theirs = pair()
        try:
            socket.send_fds(line, [pickle.dumps(NewLine(newcomer))], [theirs.fileno()])
        except OSError as exc:
            logger.warning("cannot give worker %d its line to worker %d: %s", index, newcomer, exc)
            ours.close()
        else:
            ends[index] = ours
        finally:
            theirs.close()
    return ends


class WorkerLines:
    """A worker's lines to the other workers, by their index; ``on_message`` gets what
    comes on them (and owns its descriptor)."""

    def __init__(
        self,
        from_supervisor: socket.socket,
        peers: dict[int, socket.socket],
        on_message: Callable[[Passed, int], None],
    ) -> None:
        self._on_message = on_message
        self._lines: dict[int, FdLine[Passed]] = {}
        for peer, sock in peers.items():
            self.add(peer, sock)
        self._supervisor = FdLine(
            from_supervisor, (NewLine,), self._new_line, "the line from the supervisor"
        )

    def send(self, to: int, message: Passed, fd: int) -> None:
        """Send ``message`` with a copy of ``fd`` to worker ``to``; OSError if there is no
        line to it (it is gone, or starting again) or the line cannot take it now."""
        line = self._lines.get(to)
        if line is None or line.closed:
            raise OSError(f"no line to worker {to}")
        line.send(message, fd)

    def add(self, peer: int, sock: socket.socket) -> None:
        """The line to worker ``peer`` is ``sock`` from now on (any older one is closed)."""
        old = self._lines.pop(peer, None)
        if old is not None:
            old.close()
        self._lines[peer] = FdLine(
            sock, (Handoff, RoutedConnection), self._on_message, f"the line to worker {peer}"
        )

    def close(self) -> None:
        self._supervisor.close()
        for line in self._lines.values():
            line.close()
        self._lines.clear()

    def _new_line(self, message: NewLine, fd: int) -> None:
        self.add(message.peer, socket.socket(fileno=fd))
