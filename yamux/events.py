"""What the sans-IO core reports after consuming bytes (see Connection.receive_data).

Plain slotted dataclasses, not frozen ones: a frozen one's ``__init__`` goes
through ``object.__setattr__`` per field, and a connection makes several of
them. Nobody changes an event after the core made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import YamuxError
from .stream_state import StreamMachine

__all__ = [
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "InputHeld",
    "PongReceived",
    "SessionTerminated",
    "StreamAcknowledged",
    "StreamClosed",
    "StreamEnded",
    "StreamOpened",
    "StreamRefused",
    "StreamReset",
    "WindowUpdated",
]


@dataclass(slots=True)
class StreamOpened:
    """The peer opened a stream; it waits for Connection.accept_stream.

    ``state`` is the stream's state machine, for the stream object to read
    (events after this one in the same batch may already have ended it).
    """

    stream_id: int
    state: StreamMachine = field(default_factory=StreamMachine, compare=False, repr=False)


@dataclass(slots=True)
class StreamAcknowledged:
    """The peer ACKed a stream we opened."""

    stream_id: int


@dataclass(slots=True)
class DataReceived:
    """Payload for a stream; call Connection.consume once the application has taken it."""

    stream_id: int
    data: bytes


@dataclass(slots=True)
class WindowUpdated:
    """The peer granted more send credit on a stream."""

    stream_id: int


@dataclass(slots=True)
class StreamEnded:
    """The peer sent FIN: no more data will arrive on this stream."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone at once: the peer sent RST, or broke the stream's rules."""

    stream_id: int
    reason: str
    violation: bool = False
    """True when we reset it because the peer broke the stream's rules (worth logging)."""


@dataclass(slots=True)
class StreamRefused:
    """The peer tried to open a stream and we answered RST; it never existed for us."""

    stream_id: int
    reason: str


@dataclass(slots=True)
class StreamClosed:
    """Both sides sent FIN and our FIN is out; the core forgot the stream."""

    stream_id: int


@dataclass(slots=True)
class PongReceived:
    """An answer to one of our pings, carrying its opaque value."""

    opaque: int


@dataclass(slots=True)
class GoAwayReceived:
    """The peer sent Go Away 0: it accepts no new streams; existing ones go on."""

    code: int


@dataclass(slots=True)
class InputHeld:
    """A SYN found the accept backlog full: the rest of the input waits, that SYN first,
    until accepts make room (Connection.resume_input). Stop reading the peer meanwhile.
    Always the last event of its batch."""


@dataclass(slots=True)
class SessionTerminated:
    """The session is over; ``error`` says why. Go Away, if owed, is already queued."""

    error: YamuxError


Event = (
    StreamOpened
    | StreamAcknowledged
    | DataReceived
    | WindowUpdated
    | StreamEnded
    | StreamReset
    | StreamRefused
    | StreamClosed
    | PongReceived
    | GoAwayReceived
    | InputHeld
    | SessionTerminated
)
