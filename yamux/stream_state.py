"""The stream state machine, as the protocol sees one stream (no I/O, no buffers for the reader).

Opening: we send SYN and wait in SYN_SENT for the peer's ACK; a stream the peer
opened waits in SYN_RECEIVED until we accept it and send ACK. Both then are
ESTABLISHED. Closing is per direction: ``fin_queued``/``fin_sent`` for ours
(FIN goes out after every byte written before it), ``remote_fin`` for the
peer's. The stream is finished when our FIN is out and the peer's has arrived,
or at once on RST.
"""

from __future__ import annotations

from collections import deque
from enum import Enum, auto

from .flow import ReceiveWindow, SendWindow


class OpenState(Enum):
    SYN_SENT = auto()
    SYN_RECEIVED = auto()
    ESTABLISHED = auto()


class StreamState:
    __slots__ = (
        "fin_queued",
        "fin_sent",
        "id",
        "in_backlog",
        "open_state",
        "pending",
        "pending_bytes",
        "recv",
        "remote_fin",
        "send",
    )

    def __init__(self, stream_id: int, open_state: OpenState, max_window: int) -> None:
        self.id = stream_id
        self.open_state = open_state
        self.in_backlog = True
        """Counts against the accept backlog: our unACKed open, or the peer's unaccepted one."""
        self.recv = ReceiveWindow(max_window)
        self.send = SendWindow()
        self.pending: deque[bytes | memoryview] = deque()
        self.pending_bytes = 0
        self.fin_queued = False
        self.fin_sent = False
        self.remote_fin = False

    @property
    def sendable(self) -> bool:
        """Something can go on the wire now: data with credit, or a FIN with nothing before it."""
        if self.pending_bytes:
            return self.send.credit > 0
        return self.fin_queued and not self.fin_sent

    def leave_backlog(self) -> bool:
        """Stop counting against the backlog; True the first time only."""
        was = self.in_backlog
        self.in_backlog = False
        return was
