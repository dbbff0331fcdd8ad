"""Putting the core's outbox on the transport: control frames first, then stream data
while the transport wants more (``pause_writing``/``resume_writing``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from .config import Config
from .const import HEADER_SIZE
from .outbox import Outbox
from .timers import WriteStallWatch

if TYPE_CHECKING:
    from .connection import Connection

FLUSH_BUDGET = 256 * 1024
"""Payload framed per take_data call; the transport's pause_writing stops the loop sooner."""
PAUSED_CONTROL_ALLOWANCE = 64 * 1024
"""Control bytes still handed to a paused transport (a pong need not wait for resume);
beyond it they wait in the outbox's bounded queue."""


class FrameWriter:
    """The session's write side; ``on_stall(buffered)`` when a paused transport stays stuck."""

    def __init__(self, outbox: Outbox, config: Config, on_stall: Callable[[int], None]) -> None:
        self._outbox = outbox
        self._lowat = config.tcp_notsent_lowat
        self.transport: asyncio.WriteTransport | None = None
        self.paused = False
        self._paused_control = 0
        """Control bytes written since the transport paused."""
        self._stall = WriteStallWatch(
            asyncio.get_running_loop(), config.connection_write_timeout, on_stall
        )

    def attach(self, transport: asyncio.BaseTransport) -> None:
        # asyncio hands protocols a BaseTransport (uvloop's do not even subclass
        # WriteTransport); a session's transport always writes.
        self.transport = write_transport = cast(asyncio.WriteTransport, transport)
        sock = write_transport.get_extra_info("socket")
        if (
            self._lowat
            and sock is not None
            and sock.type == socket.SOCK_STREAM
            and sock.family in (socket.AF_INET, socket.AF_INET6)
        ):
            # Unsent bytes in the kernel are out of our reach: keep them few, so a pong
            # never waits behind megabytes of bulk data (keepalive on slow links).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, self._lowat)

    def pause(self) -> None:
        self.paused = True
        if self.transport is not None:
            self._stall.start(self.transport)

    def resume(self) -> None:
        self.paused = False
        self._paused_control = 0
        self._stall.cancel()

    def stop(self) -> None:
        self._stall.cancel()

    def write_first(self, core: Connection, stream_id: int, data: bytes) -> bool:
        """The queued control frames (a new stream's SYN) and a Data frame of ``data`` for
        ``stream_id``, in one write: True if the transport took them now and the core could
        frame ``data`` at once (``Connection.frame_now``); else the caller queues ``data``."""
        transport = self.transport
        if transport is None or self.paused or transport.is_closing():
            return False
        frames: list[bytes] = self._outbox.take_control()
        header = core.frame_now(stream_id, data)
        if header is not None:
            frames += (header, data)
        transport.writelines(frames)
        return header is not None

    def write(self, force: bool = False) -> bool:
        """Write what may go now (everything with ``force``); True if stream data was framed
        (which may have finished streams: the core then has events to take).

        While the transport is paused, control frames go out only up to
        PAUSED_CONTROL_ALLOWANCE; the rest waits in the outbox, whose queue is
        bounded, so a peer that does not read cannot make us buffer without end.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        outbox = self._outbox
        if outbox.control:
            if force or not self.paused:
                transport.writelines(outbox.take_control())
            elif self._paused_control < PAUSED_CONTROL_ALLOWANCE:
                frames = outbox.take_control(PAUSED_CONTROL_ALLOWANCE - self._paused_control)
                self._paused_control += len(frames) * HEADER_SIZE
                transport.writelines(frames)
        framed = False
        while outbox.sendable and (force or not self.paused):
            transport.writelines(outbox.take_data(FLUSH_BUDGET))
            framed = True
        return framed
