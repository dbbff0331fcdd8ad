"""The accept backlog, both ways: streams between the protocol and the application.

The peer's opens wait here for ``accept_stream``, oldest first (the core
refuses more than ``Config.accept_backlog`` of them); a reset one leaves at
once. Our ``open_stream`` calls wait here while ``accept_backlog`` of our opens
are still unACKed, as hashicorp's ``synCh`` makes them wait.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .connection import Connection
from .const import GoAwayCode
from .errors import NoNewStreamsError, SessionClosedError, YamuxError
from .stream import Stream


class Backlog:
    """Streams waiting to be accepted, and opens waiting for room (see the module docstring)."""

    __slots__ = ("_accept_waiter", "_core", "_ended", "_incoming", "_loop", "_open_waiters")

    def __init__(self, core: Connection) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._incoming: dict[int, Stream] = {}
        self._accept_waiter: asyncio.Future[None] | None = None
        self._open_waiters: deque[asyncio.Future[None]] = deque()
        self._ended: YamuxError | None = None
        """Why the session ended, once it has: every wait raises SessionClosedError."""

    def __len__(self) -> int:
        """Streams waiting to be accepted."""
        return len(self._incoming)

    def add(self, stream: Stream) -> None:
        """A stream the peer opened; it waits for ``next_incoming``."""
        self._incoming[stream.id] = stream
        waiter = self._accept_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def discard(self, stream_id: int) -> None:
        """The stream was reset before anyone accepted it."""
        self._incoming.pop(stream_id, None)

    async def next_incoming(self) -> Stream:
        """The oldest stream the peer opened; SessionClosedError once the session ends."""
        incoming = self._incoming
        while not incoming:
            self._raise_if_ended()
            waiter = self._accept_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._accept_waiter = None
        return incoming.pop(next(iter(incoming)))

    async def room_to_open(self) -> None:
        """Return once an open may go out: fewer than ``accept_backlog`` await their ACK.

        Raises SessionClosedError once the session ends, NoNewStreamsError once the
        peer sent Go Away.
        """
        while True:
            if self.may_open():
                return
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._open_waiters:
                    self._open_waiters.remove(waiter)

    def may_open(self) -> bool:
        """Whether an open may go out now (``room_to_open`` would not wait); raises as it."""
        if self._ended is not None:
            raise SessionClosedError(reason=self._ended)
        core = self._core
        if core.remote_go_away:
            raise NoNewStreamsError(GoAwayCode.NORMAL)
        return not core.backlog_full

    def open_would_wait(self) -> bool:
        """Whether ``room_to_open`` would wait (False if it would raise instead)."""
        core = self._core
        return self._ended is None and not core.remote_go_away and core.backlog_full

    def wake_openers(self, force: bool = False) -> None:
        """Wake every waiting open if there may be room (or always, with ``force``)."""
        waiters = self._open_waiters
        if waiters and (force or not self._core.backlog_full):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def end(self, error: YamuxError) -> None:
        """The session ended with ``error``: drop the queue, wake every waiter to raise."""
        self._ended = error
        self._incoming.clear()
        waiter = self._accept_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.wake_openers(force=True)

    def _raise_if_ended(self) -> None:
        if self._ended is not None:
            raise SessionClosedError(reason=self._ended)
