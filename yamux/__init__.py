"""A pure-Python asyncio implementation of the yamux stream multiplexer.

Wire-compatible with hashicorp/yamux. What a user imports is in ``__all__``:

- ``connect``, ``connect_pipes``, ``start_server`` (a ``Server``) and
  ``Session.attach`` make sessions; a ``Session`` opens and accepts ``Stream``
  objects, which offer asyncio's StreamReader/StreamWriter API. Session,
  Stream and Server close the asyncio way: ``close()``, then ``await
  wait_closed()`` (or ``async with``).
- ``Config`` with its ``WindowBudget``; ``GoAwayCode`` for ``Session.go_away``;
  ``State``, what ``Stream.state`` returns; ``TaskOwner``, which
  ``Session.serve`` can put handler tasks in.
- ``YamuxError`` and the errors derived from it.
- ``Connection``, the sans-IO protocol core, for those who drive it
  themselves: bytes go in (``receive_data``), ``events`` come out and the
  frames to write wait in its ``outbox``. The events are a module of their own,
  as in h2 and wsproto: they are what a driver matches on, and nobody else
  needs them. Frames stay inside the core (a driver handles bytes, never
  ``Frame`` objects), so the frame codec is not public.

Every other module and name is internal: the relay and the tests of this
repository import what they share from its module (``yamux.ratelimit``,
``yamux.frame``, ...), with no promise that it stays.
"""

from . import events
from .config import Config
from .connection import Connection
from .const import GoAwayCode
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
)
from .flow import WindowBudget
from .server import Server, start_server
from .session import Session
from .stream import Stream
from .stream_state import State
from .tasks import TaskOwner
from .transport import connect, connect_pipes

__all__ = [
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionWriteTimeoutError",
    "ControlQueueFullError",
    "GoAwayCode",
    "KeepaliveTimeoutError",
    "NoNewStreamsError",
    "PeerTerminatedError",
    "ProtocolError",
    "Server",
    "Session",
    "SessionClosedError",
    "SessionError",
    "State",
    "Stream",
    "StreamClosedError",
    "StreamError",
    "StreamOpenTimeoutError",
    "StreamResetError",
    "StreamTimeoutError",
    "TaskOwner",
    "TooManyStreamsError",
    "WindowBudget",
    "YamuxError",
    "connect",
    "connect_pipes",
    "events",
    "start_server",
]
