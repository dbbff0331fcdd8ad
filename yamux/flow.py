"""The flow-control rule, in one place: all window arithmetic, receive and send.

Each direction of a stream has credit. The sender may only put Data payload
bytes on the wire while it has credit, at most ``max_frame_size`` per frame,
and debits what it sent; the receiver hands credit back with a Window Update
once the application has consumed at least half of its maximum window, which
keeps memory per stream bounded by the window while letting a fast reader
stream at full speed (hashicorp's rule; an update per Data frame would defeat
backpressure). After the peer's FIN nothing more can arrive, so no update is
sent any more.
"""

from __future__ import annotations

from .const import INITIAL_STREAM_WINDOW
from .errors import ProtocolError


class ReceiveWindow:
    """Credit we granted the peer for one stream, and bytes it has used but we not consumed."""

    __slots__ = ("buffered", "credit", "ended", "max_window")

    def __init__(self, max_window: int) -> None:
        self.max_window = max_window
        self.credit = INITIAL_STREAM_WINDOW
        self.buffered = 0
        self.ended = False
        """The peer sent FIN: it cannot use credit any more, so none is granted."""

    def end(self) -> None:
        """The peer's FIN arrived."""
        self.ended = True

    def initial_grant(self) -> int:
        """The delta to put on our SYN or ACK so the peer may use our whole window."""
        delta = self.max_window - self.buffered - self.credit
        self.credit += delta
        return delta

    def receive(self, stream_id: int, length: int) -> None:
        """Account a Data frame; a frame beyond the granted credit is a protocol violation."""
        if length > self.credit:
            raise ProtocolError(
                f"stream {stream_id}: data frame of {length} bytes exceeds the receive "
                f"window of {self.credit} bytes"
            )
        self.credit -= length
        self.buffered += length

    def consume(self, length: int) -> int:
        """The application consumed ``length`` bytes; return the update to send, or 0."""
        self.buffered -= length
        delta = self.max_window - self.buffered - self.credit
        if self.ended or delta < self.max_window // 2:
            return 0
        self.credit += delta
        return delta


class SendWindow:
    """Credit the peer granted us for one stream."""

    __slots__ = ("credit",)

    def __init__(self) -> None:
        self.credit = INITIAL_STREAM_WINDOW

    def grant(self, stream_id: int, delta: int) -> None:
        """Add a peer's Window Update; the sum may not exceed what 32 bits can say."""
        self.credit += delta
        if self.credit > 0xFFFFFFFF:
            raise ProtocolError(
                f"stream {stream_id}: window update of {delta} bytes grows the send window "
                f"past 2**32-1"
            )

    def frame_size(self, pending: int, max_frame: int) -> int:
        """Payload bytes the next Data frame may carry: within credit and the frame limit."""
        return min(pending, self.credit, max_frame)

    def debit(self, size: int) -> None:
        """``size`` payload bytes went on the wire."""
        self.credit -= size
