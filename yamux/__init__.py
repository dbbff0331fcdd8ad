"""A pure-Python asyncio implementation of the yamux stream multiplexer.

Wire-compatible with hashicorp/yamux. ``Connection`` is the sans-IO protocol
core; ``Session`` runs it over an asyncio transport; ``Stream`` offers the
asyncio StreamReader/StreamWriter API.
"""

from .config import Config
from .connection import Connection
from .const import Flag, FrameType, GoAwayCode
from .errors import (
    ConfigError,
    ConnectionWriteTimeoutError,
    ControlQueueFullError,
    KeepaliveTimeoutError,
    NoNewStreamsError,
    PeerTerminatedError,
    ProtocolError,
    SessionClosedError,
    SessionError,
    StreamClosedError,
    StreamError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamTimeoutError,
    TooManyStreamsError,
    YamuxError,
    deprecated_error,
)
from .events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    SessionTerminated,
    StreamAcknowledged,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
    WindowUpdated,
)
from .flow import WindowBudget
from .frame import Frame, FrameDecoder
from .server import Server, start_server
from .session import Session
from .stream import Stream, StreamLink
from .stream_state import State, StreamStateError
from .tasks import StreamHandler, TaskOwner, run_stream_handler
from .transport import connect, connect_pipes

__all__ = [
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionWriteTimeoutError",
    "ControlQueueFullError",
    "DataReceived",
    "Event",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayCode",
    "GoAwayReceived",
    "KeepaliveTimeoutError",
    "NoNewStreamsError",
    "PeerTerminatedError",
    "PongReceived",
    "ProtocolError",
    "Server",
    "Session",
    "SessionClosedError",
    "SessionError",
    "SessionTerminated",
    "State",
    "Stream",
    "StreamAcknowledged",
    "StreamClosed",
    "StreamClosedError",
    "StreamEnded",
    "StreamError",
    "StreamHandler",
    "StreamLink",
    "StreamOpenTimeoutError",
    "StreamOpened",
    "StreamRefused",
    "StreamReset",
    "StreamResetError",
    "StreamStateError",
    "StreamTimeoutError",
    "TaskOwner",
    "TooManyStreamsError",
    "WindowBudget",
    "WindowUpdated",
    "YamuxError",
    "connect",
    "connect_pipes",
    "run_stream_handler",
    "start_server",
]


def __getattr__(name: str) -> type[YamuxError]:
    """The deprecated error names (GoAwayError, RemoteGoAwayError), with a warning."""
    return deprecated_error(name, __name__)
