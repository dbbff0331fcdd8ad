"""What a connection owes the peer, in two queues: control frames, and stream data.

Control frames (SYN/ACK, window updates, pings and pongs, RST, Go Away) are
small and written at once while the peer reads; the queue is bounded
(``Config.control_queue_limit``) for when it does not. Stream data waits in
per-stream send buffers and is framed only when the I/O adapter asks for it
(``take_data``), i.e. when the transport has room; so a pong never waits
behind megabytes of queued bulk data, and streams share the connection
round-robin.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .const import HEADER_SIZE, Flag, FrameType
from .frame import encode_header
from .stream_record import StreamRecord
from .stream_state import State

_DATA, _WINDOW_UPDATE, _FIN = FrameType.DATA, FrameType.WINDOW_UPDATE, int(Flag.FIN)
_CLOSED = State.CLOSED


class Outbox:
    """The frames to send (see the module docstring).

    The connection queues control frames (``queue_control``) and puts a stream
    in ``sendable`` when it has something to frame; ``overflow(count)`` runs
    when the control queue passes its limit, ``finished(record)`` when the FIN
    of a stream closed both ways went out (the connection then forgets it).
    """

    __slots__ = ("_control_limit", "_finished", "_max_frame", "_overflow", "control", "sendable")

    def __init__(
        self,
        config: Config,
        *,
        overflow: Callable[[int], None],
        finished: Callable[[StreamRecord], None],
    ) -> None:
        self.control: list[bytes] = []
        """Control frames queued, oldest first (only ``queue_control`` and ``take_control``
        change it; anyone may test it for emptiness)."""
        self._control_limit = config.control_queue_limit
        self._max_frame = config.max_frame_size
        self._overflow = overflow
        self._finished = finished
        self.sendable: dict[int, StreamRecord] = {}
        """Streams with something to frame now (data and credit, or a lone FIN), in turn."""

    def queue_control(self, frame: bytes) -> None:
        """Queue one control frame; report an overflow past the limit.

        The adapter writes control frames at once unless the transport is paused
        (the peer is not reading), so the queue only grows while the peer owes us
        reads; pongs, updates and resets it provokes meanwhile must not grow
        without bound (a ping flood).
        """
        control = self.control
        control.append(frame)
        if len(control) * HEADER_SIZE > self._control_limit:
            self._overflow(len(control))

    def take_control(self, limit: int | None = None) -> list[bytes]:
        """Queued control frames, oldest first; at most ``limit`` bytes of them if given."""
        out = self.control
        if limit is not None and limit < len(out) * HEADER_SIZE:
            count = limit // HEADER_SIZE
            self.control = out[count:]
            return out[:count]
        self.control = []
        return out

    def take_data(self, budget: int) -> list[bytes | memoryview]:
        """Frame up to about ``budget`` payload bytes, one frame per stream per round.

        FIN always goes on its own Window Update frame after the last data, as
        hashicorp sends it: a peer that handles FIN before a Data frame's payload
        (``@chainsafe/libp2p-yamux``) would otherwise drop that payload.
        """
        out: list[bytes | memoryview] = []
        sendable = self.sendable
        max_frame = self._max_frame
        while budget > 0 and sendable:
            stream_id = next(iter(sendable))
            rec = sendable.pop(stream_id)
            buffer = rec.out
            size = rec.send.frame_size(buffer.size, max_frame)
            if size:
                out.append(encode_header(_DATA, 0, stream_id, size))
                buffer.take(size, out)
                rec.send.debit(size)
                budget -= size
            if buffer.fin and not buffer.size:
                out.append(encode_header(_WINDOW_UPDATE, _FIN, stream_id, 0))
                buffer.fin = False
                if rec.state.state is _CLOSED:
                    self._finished(rec)
            elif rec.sendable:
                sendable[stream_id] = rec
        return out
