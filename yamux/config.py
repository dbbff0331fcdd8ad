"""Session settings: hashicorp/yamux's knobs with its defaults, plus two limits of our own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .const import INITIAL_STREAM_WINDOW
from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    """Validated on construction; a bad value raises ConfigError naming the field."""

    accept_backlog: int = 256
    """Inbound streams waiting for accept(); also caps our own opens awaiting ACK."""
    enable_keepalive: bool = True
    keepalive_interval: float = 30.0
    connection_write_timeout: float = 10.0
    """How long the transport may refuse bytes, and how long a keepalive ping may go unanswered."""
    max_stream_window_size: int = INITIAL_STREAM_WINDOW
    """Receive window per stream; the excess over 256 KiB is granted on SYN/ACK."""
    stream_open_timeout: float = 75.0
    """An opened stream not ACKed in time ends the session (as hashicorp does); 0 disables."""
    stream_close_timeout: float = 300.0
    """A stream we closed whose peer never sends FIN is reset after this; 0 disables."""
    max_streams: int = 65536
    """Live streams per session; beyond it inbound SYNs are refused with RST."""
    max_frame_size: int = 64 * 1024
    """Largest Data body we send. Incoming bodies are bounded by our window instead."""
    control_queue_limit: int = 256 * 1024
    """Bytes of control frames (12 each: pongs, window updates, RSTs) held for a peer
    that does not read; one more ends the session with ControlQueueFullError."""

    def __post_init__(self) -> None:
        for name in ("accept_backlog", "max_streams", "max_frame_size", "control_queue_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("keepalive_interval", "connection_write_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("stream_open_timeout", "stream_close_timeout"):
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
        if not isinstance(self.enable_keepalive, bool):
            raise ConfigError(f"enable_keepalive must be a bool, got {self.enable_keepalive!r}")

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
