"""The streams the peer opens: refused, waiting in the accept backlog, or held back.

A SYN is refused (RST) when we sent Go Away or the session already has
``max_streams``; otherwise its stream waits in the accept backlog until the
application accepts it. A SYN that finds the backlog full is neither: the
connection stops there and holds the rest of its input, that frame first,
until an accept makes room (``Connection.resume_input``), while the I/O adapter
stops reading the transport. So a burst of opens that arrives in one read is
accepted in full, at the application's pace, instead of being reset; and a
peer can make us hold no more than the backlog's streams and the input of the
read that overflowed it (the adapter reads nothing more meanwhile).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .config import Config
from .const import Flag
from .errors import ProtocolError
from .frame import Frame, FrameDecoder
from .stream_record import StreamRecord, StreamTable
from .stream_state import Input, StreamStateError

_RST = int(Flag.RST)
_RECV_SYN = Input.RECV_SYN


Read = bytes | bytearray | memoryview
"""One read's worth of input, as receive_data takes it."""


class BacklogFull(Exception):
    """A SYN found the accept backlog full; raised and caught inside the connection."""


class Inbound:
    """Admission of the peer's opens, and the input held while the backlog is full."""

    __slots__ = (
        "_backlog",
        "_chunks",
        "_chunks_size",
        "_decoder",
        "_frames",
        "_max_streams",
        "_our_parity",
        "_role",
        "_source",
        "frame",
    )

    def __init__(self, config: Config, decoder: FrameDecoder, *, client: bool) -> None:
        self._decoder = decoder
        self._backlog = config.accept_backlog
        self._max_streams = config.max_streams
        self._our_parity = 1 if client else 0
        self._role = "client" if client else "server"
        self.frame: Frame | None = None
        """The SYN that found the backlog full; None while nothing is held."""
        self._frames: Iterator[Frame] = iter(())
        """The frames after it, decoded lazily from the read it came in."""
        self._source: Read = b""
        """That read (its size bounds what is left of it)."""
        self._chunks: deque[bytes] = deque()
        """Reads that arrived while held (the adapter stops reading: at most a few)."""
        self._chunks_size = 0

    def refusal(
        self,
        frame: Frame,
        existing: StreamRecord | None,
        streams: StreamTable,
        *,
        go_away: bool,
    ) -> str | None:
        """Why the peer's SYN ``frame`` is refused, or None to admit it to ``streams``.

        Raises ProtocolError for a stream that exists (``existing``) or an id of
        our parity, and BacklogFull when the accept backlog is full already (a
        SYN|RST is admitted all the same: it is gone within its own frame).
        """
        stream_id = frame.stream_id
        if existing is not None:
            try:
                existing.state.process(_RECV_SYN)
            except StreamStateError as exc:
                raise ProtocolError(
                    f"duplicate SYN for stream {stream_id}, which is already open ({exc})"
                ) from None
        if (stream_id & 1) == self._our_parity:
            raise ProtocolError(
                f"peer opened stream {stream_id}, an id reserved for our side ({self._role}); "
                f"are both ends the same yamux role?"
            )
        if go_away:
            return "we sent go away"
        if len(streams) >= self._max_streams:
            return f"session has the maximum of {self._max_streams} streams"
        if streams.unaccepted_inbound >= self._backlog and not frame.flags & _RST:
            raise BacklogFull
        return None

    # ------------------------------------------------------------- held input
    @property
    def held_bytes(self) -> int:
        """At most this many bytes of input are held (0 when none)."""
        return len(self._source) + self._chunks_size if self.frame is not None else 0

    def hold(self, frame: Frame, frames: Iterator[Frame], source: Read) -> None:
        """Stop at ``frame``; ``frames`` follow it, decoded from the read ``source``."""
        self.frame = frame
        self._frames = frames
        self._source = source

    def release(self) -> tuple[Iterator[Frame], Read, Frame | None] | None:
        """What to handle next: the frames after the held one, their read, the held frame;
        else the oldest read that came meanwhile, decoded; None when nothing waits."""
        frame = self.frame
        if frame is not None:
            self.frame = None
            frames, self._frames = self._frames, iter(())
            source, self._source = self._source, b""
            return frames, source, frame
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._chunks_size -= len(chunk)
        return self._decoder.feed(chunk), chunk, None

    def add(self, chunk: bytes) -> None:
        """A read that arrived while input is held: it waits behind the held frames."""
        self._chunks.append(chunk)
        self._chunks_size += len(chunk)

    def clear(self) -> None:
        """The session ended: drop what is held."""
        self.frame = None
        self._frames = iter(())
        self._source = b""
        self._chunks.clear()
        self._chunks_size = 0
