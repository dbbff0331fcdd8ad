"""The flow-control rule, in one place: all window arithmetic, receive and send,
with optional receive-window auto-tuning.

Each direction of a stream has credit. The sender may only put Data payload
bytes on the wire while it has credit, at most ``max_frame_size`` per frame,
and debits what it sent; the receiver hands credit back with a Window Update
once the application has consumed at least half of its window, which keeps
memory per stream bounded by the window while letting a fast reader stream at
full speed (hashicorp's rule; an update per Data frame would defeat
backpressure). After the peer's FIN nothing more can arrive, so no update is
sent any more.

One stream moves at most about window / RTT, so a fixed 256 KiB window caps a
stream at a few MB/s over real distances, while a fixed large window lets
every slow or hostile stream pin that much memory. ``WindowTuner`` (off unless
``Config.window_autotune``) grows a stream's window only when the window, not
the reader, is the limit: when the next update is due within a few round trips
of the previous one (the reader consumed half the window that fast), the window
doubles, up to ``max_stream_window_size``, taken from a per-session budget
(``max_session_window``) that the sum of all windows never exceeds beyond the
256 KiB every stream starts with. A stream whose updates come after a long
pause gets half its window back (it grants less), returning budget.

A per-session budget still lets N sessions pin N times it, so sessions may also
share one ``WindowBudget`` (``Config.window_budget``, e.g. one per process):
growth then needs room in both, and shrinking or a stream's end returns to
both. Only the tuner touches either budget: the connection reports streams
opening and closing through ``stream_opened`` and ``stream_closed``.
"""

from __future__ import annotations

from collections.abc import Callable

from .const import INITIAL_STREAM_WINDOW
from .errors import ConfigError, ProtocolError

Clock = Callable[[], float]
"""Seconds on any clock; only differences are used."""


def no_clock() -> float:
    """For callers without window auto-tuning: its clock is never read then."""
    return 0.0


GROW_WITHIN_RTTS = 4
"""Double the window when its next update is due within this many round trips."""
IDLE_AFTER_RTTS = 16
"""Halve it when the next update comes after this many round trips ..."""
IDLE_AFTER_MIN = 1.0
"""... and at least this many seconds."""


class WindowBudget:
    """Receive-window bytes that several sessions' tuners draw on together.

    ``used`` sums the windows of every live stream of those sessions: 256 KiB
    each at open (the protocol grants that much whatever we want), plus
    growth, which is only granted while ``used`` stays within ``limit``.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if type(limit) is not int or limit < INITIAL_STREAM_WINDOW:
            raise ConfigError(
                f"window budget limit must be an integer >= {INITIAL_STREAM_WINDOW}, got {limit!r}"
            )
        self.limit = limit
        self.used = 0

    def __repr__(self) -> str:
        return f"WindowBudget(limit={self.limit}, used={self.used})"


class WindowTuner:
    """A session's auto-tuning policy, its round-trip estimate and its window budget.

    ``used`` and ``limit`` are the session's own budget, counted like a
    WindowBudget's; ``shared``, if any, is a budget it shares with other
    sessions.
    """

    __slots__ = ("limit", "max_window", "rtt", "shared", "used")

    def __init__(self, max_window: int, limit: int, shared: WindowBudget | None = None) -> None:
        self.max_window = max_window
        self.limit = limit
        self.shared = shared
        self.rtt: float | None = None
        """Smoothed round-trip time in seconds, from the session's pings; None: unknown."""
        self.used = 0

    @property
    def can_grow(self) -> bool:
        """Whether windows may ever exceed 256 KiB (else the wire is hashicorp's exactly)."""
        return self.max_window > INITIAL_STREAM_WINDOW

    def stream_opened(self, window: int) -> None:
        """A stream with a receive window of ``window`` bytes now counts against the budgets."""
        self._count(window)

    def stream_closed(self, window: int) -> None:
        """A stream whose window was ``window`` bytes ended: its window returns to the budgets."""
        self._count(-window)

    def resize(self, window: int, since_last_update: float) -> int:
        """The window for an update due now, ``since_last_update`` seconds after the previous."""
        rtt = self.rtt
        if rtt is not None and since_last_update < GROW_WITHIN_RTTS * rtt:
            extra = min(window, self.max_window - window, self.limit - self.used)
            shared = self.shared
            if shared is not None:
                extra = min(extra, shared.limit - shared.used)
            if extra > 0:
                self._count(extra)
                return window + extra
            return window
        idle_after = max(IDLE_AFTER_MIN, IDLE_AFTER_RTTS * rtt if rtt is not None else 0.0)
        if since_last_update > idle_after and window > INITIAL_STREAM_WINDOW:
            smaller = max(INITIAL_STREAM_WINDOW, window // 2)
            self._count(smaller - window)
            return smaller
        return window

    def _count(self, change: int) -> None:
        self.used += change
        if self.shared is not None:
            self.shared.used += change


class ReceiveWindow:
    """Credit we granted the peer for one stream, and bytes it has used but we not consumed.

    ``max_window`` is the stream's window: fixed, or moved by a WindowTuner.
    """

    __slots__ = ("buffered", "credit", "ended", "max_window", "updated_at")

    def __init__(self, max_window: int) -> None:
        self.max_window = max_window
        self.credit = INITIAL_STREAM_WINDOW
        self.buffered = 0
        self.updated_at = 0.0
        """When the last window update was granted (auto-tuning only)."""
        self.ended = False
        """The peer sent FIN: it cannot use credit any more, so none is granted."""

    def end(self) -> None:
        """The peer's FIN arrived."""
        self.ended = True

    def initial_grant(self) -> int:
        """The delta to put on our SYN or ACK so the peer may use our whole window."""
        delta = self.max_window - self.buffered - self.credit
        self.credit += delta
        return delta

    def try_receive(self, length: int) -> bool:
        """Account a Data frame if it is within the credit granted; False leaves all as it was."""
        if length > self.credit:
            return False
        self.credit -= length
        self.buffered += length
        return True

    def receive(self, stream_id: int, length: int) -> None:
        """Account a Data frame; a frame beyond the granted credit is a protocol violation."""
        if length > self.credit:
            raise ProtocolError(
                f"stream {stream_id}: data frame of {length} bytes exceeds the receive "
                f"window of {self.credit} bytes"
            )
        self.credit -= length
        self.buffered += length

    def consume(
        self, length: int, tuner: WindowTuner | None = None, clock: Clock = no_clock
    ) -> int:
        """The application consumed ``length`` bytes; return the update to send, or 0.

        With a ``tuner``, an update that is due may first resize the window;
        ``clock()`` (the caller's, in seconds) is read only then: most calls owe
        no update.
        """
        self.buffered -= length
        window = self.max_window
        delta = window - self.buffered - self.credit
        if self.ended or delta < window // 2:
            return 0
        if tuner is not None:
            now = clock()
            resized = tuner.resize(window, now - self.updated_at)
            self.updated_at = now
            if resized != window:
                # Shrinking is safe: an update is due, so the peer holds at most half.
                self.max_window = window = resized
                delta = window - self.buffered - self.credit
                if delta < window // 2:
                    return 0
        self.credit += delta
        return delta


class SendWindow:
    """Credit the peer granted us for one stream."""

    __slots__ = ("credit",)

    def __init__(self) -> None:
        self.credit = INITIAL_STREAM_WINDOW

    def grant(self, stream_id: int, delta: int) -> None:
        """Add a peer's Window Update; the sum may not exceed what 32 bits can say."""
        self.credit += delta
        if self.credit > 0xFFFFFFFF:
            raise ProtocolError(
                f"stream {stream_id}: window update of {delta} bytes grows the send window "
                f"past 2**32-1"
            )

    def try_debit(self, size: int) -> bool:
        """Take ``size`` bytes of credit for a frame going out now, if there is that much."""
        if size > self.credit:
            return False
        self.credit -= size
        return True

    def frame_size(self, pending: int, max_frame: int) -> int:
        """Payload bytes the next Data frame may carry: within credit and the frame limit."""
        return min(pending, self.credit, max_frame)

    def debit(self, size: int) -> None:
        """``size`` payload bytes went on the wire."""
        self.credit -= size
