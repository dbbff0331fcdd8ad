"""The core's record of one stream, shared by the connection (which steps its state and
windows) and the outbox (which frames its unsent bytes)."""

from __future__ import annotations

from .flow import ReceiveWindow, SendWindow
from .send_buffer import SendBuffer
from .stream_state import StreamMachine


class StreamRecord:
    """What the core keeps per stream: its state machine, both windows, its unsent bytes."""

    __slots__ = ("id", "out", "recv", "send", "state")

    def __init__(self, stream_id: int, max_window: int) -> None:
        self.id = stream_id
        self.state = StreamMachine()
        self.recv = ReceiveWindow(max_window)
        self.send = SendWindow()
        self.out = SendBuffer()

    @property
    def sendable(self) -> bool:
        """Something can go on the wire now: data with credit, or a FIN with nothing before it."""
        if self.out.size:
            return self.send.credit > 0
        return self.out.fin
