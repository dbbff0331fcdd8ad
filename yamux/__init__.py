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
from .frame import Frame, FrameDecoder
from .session import Server, Session, connect, connect_pipes, start_server
from .stream import Stream

__all__ = [
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionWriteTimeoutError",
    "ControlQueueFullError",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayCode",
    "GoAwayError",
    "KeepaliveTimeoutError",
    "ProtocolError",
    "RemoteGoAwayError",
    "Server",
    "Session",
    "SessionClosedError",
    "SessionError",
    "Stream",
    "StreamClosedError",
    "StreamError",
    "StreamOpenTimeoutError",
    "StreamResetError",
    "StreamTimeoutError",
    "TooManyStreamsError",
    "YamuxError",
    "connect",
    "connect_pipes",
    "start_server",
]
