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
    GoAwayError,
    KeepaliveTimeoutError,
    ProtocolError,
    RemoteGoAwayError,
    SessionClosedError,
    SessionError,
    StreamClosedError,
    StreamError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamTimeoutError,
    TooManyStreamsError,
    YamuxError,
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
    StreamReset,
    WindowUpdated,
)
from .frame import Frame, FrameDecoder
from .server import Server, start_server
from .session import Session, connect, connect_pipes
from .stream import Stream, StreamLink
from .stream_state import State, StreamStateError
from .tasks import StreamHandler, TaskOwner, run_stream_handler

__all__ = [
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionWriteTimeoutError",
    "DataReceived",
    "Event",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayCode",
    "GoAwayError",
    "GoAwayReceived",
    "KeepaliveTimeoutError",
    "PongReceived",
    "ProtocolError",
    "RemoteGoAwayError",
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
    "StreamReset",
    "StreamResetError",
    "StreamStateError",
    "StreamTimeoutError",
    "TaskOwner",
    "TooManyStreamsError",
    "WindowUpdated",
    "YamuxError",
    "connect",
    "connect_pipes",
    "run_stream_handler",
    "start_server",
]
