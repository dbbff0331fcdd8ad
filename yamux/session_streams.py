"""The Stream objects of a session, on the adapter's side of the core: by id, with the
deadlines the protocol puts on them and the writers waiting for their bytes to go out.

The core knows each stream's state (``Connection``); this is what the asyncio
side keeps per stream: the ``Stream`` it feeds, the open timeout (our SYN
awaits its ACK), the close timeout (our FIN awaits the peer's), and the streams
whose ``drain()``, ``wait_closed()`` or protocol wait for unsent bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .config import Config
from .const import GoAwayCode
from .errors import StreamOpenTimeoutError, StreamResetError, YamuxError
from .ratelimit import RateLimitedLog
from .stream import Stream
from .stream_state import State
from .timers import StreamDeadlines

_LOCAL_CLOSE = State.LOCAL_CLOSE
"""Bound once: a class attribute lookup of an Enum member is slow on Python 3.11."""


class SessionStreams:
    """A session's streams (see the module docstring). An open that is not ACKed in time
    ends the session: ``fail(error, go_away_code)``; a peer that does not close a stream
    in time gets it reset: ``reset(stream_id)`` (and one rate-limited line in ``log``)."""

    __slots__ = ("_close", "_config", "_fail", "_log", "_open", "_reset", "_waiting", "by_id")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        log: RateLimitedLog,
        *,
        fail: Callable[[YamuxError, int], None],
        reset: Callable[[int], None],
    ) -> None:
        self.by_id: dict[int, Stream] = {}
        """Read it freely; ``add`` and ``forget`` change it."""
        self._waiting: dict[int, Stream] = {}
        """Streams waiting for their unsent bytes (``watch_pending``)."""
        self._config = config
        self._log = log
        self._fail = fail
        self._reset = reset
        self._open = StreamDeadlines(loop, config.stream_open_timeout, self._open_timed_out)
        self._close = StreamDeadlines(loop, config.stream_close_timeout, self._close_timed_out)

    def add(self, stream: Stream, *, opened_by_us: bool = False) -> None:
        """A new stream; one we opened must be ACKed within the open timeout."""
        self.by_id[stream.id] = stream
        if opened_by_us:
            self._open.arm(stream.id)

    def acknowledged(self, stream_id: int) -> None:
        self._open.cancel(stream_id)

    def closed_locally(self, stream_id: int) -> None:
        """Our FIN is queued: no ACK awaited any more; the peer's FIN now is, unless it came."""
        self._open.cancel(stream_id)
        stream = self.by_id.get(stream_id)
        if stream is not None and stream.state is _LOCAL_CLOSE:
            self._close.arm(stream_id)

    def ended(self, stream_id: int) -> None:
        """The peer's FIN arrived."""
        stream = self.by_id.get(stream_id)
        if stream is not None:
            stream.feed_eof()
        self._close.cancel(stream_id)

    def forget(self, stream_id: int) -> Stream | None:
        """The stream is over (its waiters are still told that nothing is left unsent);
        returns it if it was known."""
        self._open.cancel(stream_id)
        self._close.cancel(stream_id)
        return self.by_id.pop(stream_id, None)

    def reset(self, stream_id: int, reason: str) -> None:
        """A reset stream, ours or the peer's, leaves at once; its users see the reason."""
        stream = self.forget(stream_id)
        self._waiting.pop(stream_id, None)
        if stream is not None:
            stream.set_exception(StreamResetError(reason))

    def watch_pending(self, stream: Stream) -> None:
        self._waiting[stream.id] = stream

    def wake_drained(self, pending_bytes: Callable[[int], int]) -> None:
        """Tell the waiting streams what is still unsent; those done stop waiting."""
        waiting = self._waiting
        if waiting:
            for stream_id, stream in list(waiting.items()):
                if not stream.pending_changed(pending_bytes(stream_id)):
                    waiting.pop(stream_id, None)  # a failing protocol may have reset it

    def _open_timed_out(self, stream_id: int) -> None:
        self._fail(
            StreamOpenTimeoutError(
                f"stream {stream_id} was not acknowledged within "
                f"{self._config.stream_open_timeout} s (stream open timeout)"
            ),
            GoAwayCode.INTERNAL_ERROR,
        )

    def _close_timed_out(self, stream_id: int) -> None:
        self._log.log(
            logging.WARNING,
            "close-timeout",
            "stream %d: peer sent no FIN within %s s of our close; resetting",
            stream_id,
            self._config.stream_close_timeout,
        )
        self._reset(stream_id)

    def end(self, error: YamuxError) -> None:
        """The session ended with ``error``: every stream ends with it, every deadline goes."""
        self._open.cancel_all()
        self._close.cancel_all()
        for stream in list(self.by_id.values()):
            stream.set_exception(error)
        self.by_id.clear()
        self._waiting.clear()
