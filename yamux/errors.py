"""Exception hierarchy: every error the package raises derives from YamuxError."""

from __future__ import annotations


class YamuxError(Exception):
    """Base class of all yamux errors."""


class ConfigError(YamuxError, ValueError):
    """A Config field has an invalid value; the message names the field."""


class ProtocolError(YamuxError):
    """The peer sent something the protocol forbids; the session ends with Go Away 1."""


class SessionError(YamuxError):
    """The session can no longer be used for the requested operation."""


class SessionClosedError(SessionError):
    """The session is closed; ``reason`` is the error that ended it, if any."""

    def __init__(self, message: str = "session closed", reason: BaseException | None = None):
        super().__init__(message if reason is None else f"{message}: {reason}")
        self.reason = reason


class NoNewStreamsError(SessionError):
    """The peer sent Go Away (hashicorp's ErrRemoteGoAway): it takes no new streams.

    Streams already open go on; ``code`` is the Go Away code (0, normal).
    """

    def __init__(self, code: int):
        super().__init__(f"peer sent go away (code {code}): no new streams")
        self.code = code


class PeerTerminatedError(SessionError):
    """The peer ended the session with a Go Away error code (1 protocol, 2 internal error)."""

    def __init__(self, code: int):
        super().__init__(f"peer ended the session with go away code {code}")
        self.code = code


class KeepaliveTimeoutError(SessionError, TimeoutError):
    """A keepalive ping got no answer in time: the peer or the path is dead."""


class ConnectionWriteTimeoutError(SessionError, TimeoutError):
    """The transport accepted no bytes for longer than the write timeout."""


class StreamOpenTimeoutError(SessionError, TimeoutError):
    """An opened stream was not acknowledged in time; like hashicorp, the session ends."""


class ControlQueueFullError(SessionError):
    """The peer stopped reading while it kept us owing control frames (pongs, updates, resets)."""


class TooManyStreamsError(SessionError):
    """Opening one more stream would exceed Config.max_streams."""


class StreamError(YamuxError):
    """An operation on one stream failed; the session goes on."""


class StreamResetError(StreamError, ConnectionResetError):
    """The stream was reset (RST), by the peer or locally."""


class StreamClosedError(StreamError, BrokenPipeError):
    """Writing to a stream whose sending side is already closed."""


class StreamTimeoutError(StreamError, TimeoutError):
    """A read or write deadline set on the stream passed."""
