"""Putting the core's outbox on the transport: control frames first, then stream data
while the transport wants more (``pause_writing``/``resume_writing``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

from .config import Config
from .const import HEADER_SIZE
from .outbox import Outbox
from .timers import WriteStallWatch

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
        control: list[bytes | memoryview] = []
        if outbox.control:
            if force or not self.paused:
                control.extend(outbox.take_control())
            elif self._paused_control < PAUSED_CONTROL_ALLOWANCE:
                control.extend(outbox.take_control(PAUSED_CONTROL_ALLOWANCE - self._paused_control))
                self._paused_control += len(control) * HEADER_SIZE
        framed = False
        while outbox.sendable and (force or not self.paused):
            frames = outbox.take_data(FLUSH_BUDGET)
            if control:  # one write for both (a SYN and its stream's first data)
                control.extend(frames)
                frames, control = control, []
            transport.writelines(frames)
            framed = True
        if control:
            transport.writelines(control)
        return framed
