"""The core's record of one stream, shared by the connection (which steps its state and
windows) and the outbox (which frames its unsent bytes); and the table of them."""

from __future__ import annotations

from .config import Config
from .const import INITIAL_STREAM_WINDOW
from .flow import ReceiveWindow, SendWindow, WindowTuner
from .send_buffer import SendBuffer
from .stream_state import Handshake, Input, StreamMachine


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


class StreamTable:
    """The core's streams by id, and what is counted over them.

    ``unacked_outbound`` are our opens awaiting their ACK (``open_stream``
    waits while they fill the accept backlog), ``unaccepted_inbound`` the peer's
    opens awaiting ``accept_stream``; both follow each stream's handshake until
    it is acknowledged, accepted or forgotten. A ``WindowTuner`` (window
    auto-tuning) learns of every stream's window as it opens and ends. Which
    streams heard from the peer is tracked once ``silent`` is first called.
    """

    __slots__ = (
        "_sendable",
        "_window",
        "heard",
        "records",
        "tuner",
        "unaccepted_inbound",
        "unacked_outbound",
    )

    def __init__(self, config: Config, sendable: dict[int, StreamRecord]) -> None:
        self.records: dict[int, StreamRecord] = {}
        self._sendable = sendable
        """The outbox's streams with something to send: a forgotten stream leaves it."""
        self.tuner: WindowTuner | None = None
        self._window = config.max_stream_window_size
        """The receive window a new stream starts with."""
        if config.window_autotune:
            self.tuner = WindowTuner(
                config.max_stream_window_size, config.max_session_window, config.window_budget
            )
            self._window = INITIAL_STREAM_WINDOW
        self.unacked_outbound = 0
        self.unaccepted_inbound = 0
        self.heard: set[int] | None = None
        """Streams that received a frame since ``silent`` last looked; None before."""

    def __len__(self) -> int:
        return len(self.records)

    def open(self, stream_id: int, opening: Input) -> StreamRecord:
        """A new stream, opened by us (SEND_SYN) or the peer (RECV_SYN)."""
        rec = StreamRecord(stream_id, self._window)
        rec.state.process(opening)
        self.records[stream_id] = rec
        if rec.state.handshake is Handshake.AWAITING_ACK:
            self.unacked_outbound += 1
        else:
            self.unaccepted_inbound += 1
        if self.tuner is not None:
            self.tuner.stream_opened(self._window)
        return rec

    def forget(self, rec: StreamRecord) -> None:
        """The stream is over: out of the table, the outbox and the counts."""
        if self.records.pop(rec.id, None) is not None and self.tuner is not None:
            self.tuner.stream_closed(rec.recv.max_window)
        self._sendable.pop(rec.id, None)
        rec.out.clear()
        handshake = rec.state.handshake
        if handshake is Handshake.AWAITING_ACK:
            self.unacked_outbound -= 1
        elif handshake is Handshake.ACK_OWED:
            self.unaccepted_inbound -= 1

    def forget_all(self) -> None:
        for rec in list(self.records.values()):
            self.forget(rec)

    @property
    def heard_any(self) -> bool:
        """A stream frame arrived since ``silent`` last looked."""
        return bool(self.heard)

    def silent(self) -> list[int]:
        """Streams that received no frame since the previous call; starts a new period.

        Nothing is tracked before the first call (it costs nothing per stream).
        """
        heard = self.heard
        self.heard = set()
        if heard is None:
            return []
        return [stream_id for stream_id in self.records if stream_id not in heard]
