"""Session settings: hashicorp/yamux's knobs with its defaults, plus two limits of our own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .const import INITIAL_STREAM_WINDOW
from .errors import ConfigError
from .flow import WindowBudget


@dataclass(frozen=True, slots=True)
class Config:
    """Validated on construction; a bad value raises ConfigError naming the field."""

    accept_backlog: int = 256
    """Inbound streams waiting for accept(); also caps our own opens awaiting ACK."""
    enable_keepalive: bool = True
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 10.0
    """After a keepalive ping, how long the peer may stay silent (no pong, no frame at all)
    before the session is declared dead. Any frame counts: a busy session is alive."""
    connection_write_timeout: float = 10.0
    """How long the transport may refuse bytes before the session ends."""
    max_stream_window_size: int = INITIAL_STREAM_WINDOW
    """Receive window per stream; the excess over 256 KiB is granted on SYN/ACK. With
    window_autotune, the most a stream's window may grow to instead."""
    window_autotune: bool = False
    """Start every stream at 256 KiB and double its window (up to max_stream_window_size,
    within max_session_window) while the window, not the reader, limits it; see flow.py.
    Off: hashicorp's fixed window. On with the default 256 KiB maximum: no change at all."""
    max_session_window: int = 64 * 1024 * 1024
    """With window_autotune: growth stops while the sum of the session's stream windows
    would pass this (each stream's first 256 KiB is the protocol's and always granted)."""
    window_budget: WindowBudget | None = None
    """With window_autotune: a budget shared by every session built with this Config (and
    its replace() copies), counted like max_session_window, so that many sessions together
    pin at most its limit beyond their streams' first 256 KiB; e.g. one per process.
    None: each session is bounded by max_session_window alone."""
    stream_open_timeout: float = 75.0
    """An opened stream not ACKed in time ends the session (as hashicorp does); 0 disables."""
    stream_close_timeout: float = 300.0
    """A stream we closed whose peer never sends FIN is reset after this; 0 disables."""
    go_away_timeout: float = 10.0
    """Once Go Away is sent or received, a stream on which the peer sends nothing for this
    long is reset (between one and two times this after its last frame), and a session
    left without streams this long closes: libp2p peers drop their streams on Go Away
    without FIN or RST and keep the socket. 0 disables."""
    max_streams: int = 65536
    """Live streams per session; beyond it inbound SYNs are refused with RST."""
    max_frame_size: int = 64 * 1024
    """Largest Data body we send. Incoming bodies are bounded by our window instead."""
    tcp_notsent_lowat: int = 128 * 1024
    """TCP_NOTSENT_LOWAT for a session's TCP socket: the kernel holds at most about this
    much unsent data, the rest waits in our queues where pongs and window updates
    overtake it. 0 leaves the kernel's default (unbounded: megabytes on a slow link)."""
    control_queue_limit: int = 256 * 1024
    """Bytes of control frames (12 each: pongs, window updates, RSTs) held for a peer
    that does not read; one more ends the session with ControlQueueFullError."""

    def __post_init__(self) -> None:
        for name in ("accept_backlog", "max_streams", "max_frame_size", "control_queue_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("keepalive_interval", "keepalive_timeout", "connection_write_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        lowat = self.tcp_notsent_lowat
        if type(lowat) is not int or lowat < 0:
            raise ConfigError(
                f"tcp_notsent_lowat must be an integer >= 0 (0: kernel default), got {lowat!r}"
            )
        for name in ("stream_open_timeout", "stream_close_timeout", "go_away_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"{name} must be >= 0 seconds (0 disables), got {value!r}")
        window = self.max_stream_window_size
        if type(window) is not int or window < INITIAL_STREAM_WINDOW:
            raise ConfigError(
                f"max_stream_window_size must be an integer >= {INITIAL_STREAM_WINDOW}, "
                f"got {window!r}"
            )
        if window > 0xFFFFFFFF:
            raise ConfigError(f"max_stream_window_size must fit in 32 bits, got {window!r}")
        for name in ("enable_keepalive", "window_autotune"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        budget = self.max_session_window
        if type(budget) is not int or budget < INITIAL_STREAM_WINDOW:
            raise ConfigError(
                f"max_session_window must be an integer >= {INITIAL_STREAM_WINDOW}, got {budget!r}"
            )
        if self.window_budget is not None and not isinstance(self.window_budget, WindowBudget):
            raise ConfigError(
                f"window_budget must be a yamux.WindowBudget or None, got {self.window_budget!r}"
            )

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
