"""What the relay and the registering side share: the secret, TLS files, keepalive, windows.

On the command line these are the "Common options" of both modes. The
keepalive defaults are yamux's own (``yamux.Config``); the window defaults are
the relay's: auto-tuned windows of up to 16 MiB, which fill 1 Gbit/s at 50 ms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self

import yamux
from yamux.const import INITIAL_STREAM_WINDOW

from .declare import OptionError, Options, option
from .kinds import MIB, ByteSize, Flag, Seconds, Secret
from .kinds import Path as PathKind
from .secret import SecretError, read_secret_file

_YAMUX = yamux.Config()
"""yamux's defaults, which keepalive and the session window keep."""


@dataclass(frozen=True, kw_only=True)
class SharedOptions(Options):
    """Options of both roles (``relay server`` and ``relay forward`` alike)."""

    secret: str | bytes | None = option(
        None,
        Secret(),
        "Shared secret: the relay requires it (registration v2), the forwarder proves it; "
        "at least 128 bits (relay gen-secret makes one). Prefer RELAY_SECRET or "
        "--secret-file: a flag shows in the process list.",
        metavar="SECRET",
    )
    secret_file: str | None = option(
        None,
        PathKind(),
        "Read the secret from FILE (its content without the final newline).",
        metavar="FILE",
    )
    tls_cert: str | None = option(
        None,
        PathKind(),
        "Relay: its TLS certificate (chain), so the control port speaks TLS. Forwarder: "
        "a client certificate for mutual TLS.",
        metavar="FILE",
    )
    tls_key: str | None = option(
        None,
        PathKind(),
        "The private key of --tls-cert (if not in the same file).",
        metavar="FILE",
    )
    keepalive_interval: float = option(
        _YAMUX.keepalive_interval,
        Seconds(),
        "Interval of yamux keepalive pings on the relay connection.",
        metavar="SECONDS",
    )
    keepalive_timeout: float = option(
        _YAMUX.keepalive_timeout,
        Seconds(),
        "After a keepalive ping, nothing at all from the peer this long ends the "
        "session (any frame proves it alive; a busy link is not a dead one).",
        metavar="SECONDS",
    )
    max_stream_window: int = option(
        16 * MIB,
        ByteSize(INITIAL_STREAM_WINDOW, 0xFFFFFFFF),
        "Largest receive window of one yamux stream. With --window-autotune (the default) a "
        "stream starts at 256 KiB and grows towards this only while the window limits its "
        "throughput (16MiB fills 1 Gbit/s at 50 ms); without, every stream is granted all "
        "of it at once. 256KiB: hashicorp's fixed window, the seed's wire exactly.",
    )
    max_session_window: int = option(
        _YAMUX.max_session_window,
        ByteSize(INITIAL_STREAM_WINDOW),
        "With --window-autotune: windows grow only while the sum of one session's stream "
        "windows stays within this (each stream's first 256 KiB always counts).",
    )
    max_total_window: int = option(
        256 * MIB,
        ByteSize(INITIAL_STREAM_WINDOW),
        "With --window-autotune: the same bound for all sessions of this process together "
        "(every registration, every reconnect), so many sessions cannot pin many times "
        "--max-session-window; a relay of several --workers splits it evenly among them. "
        "At least 256KiB.",
    )
    window_autotune: bool = option(
        True,
        Flag(),
        "Grow stream windows as measured (needs --max-stream-window above 256KiB); "
        "--no-window-autotune: hashicorp's fixed window of --max-stream-window.",
        negatable=True,
    )

    def check_together(self) -> None:
        super().check_together()
        if self.secret is not None and self.secret_file is not None:
            raise OptionError("secret_file", "give {secret} or {secret_file}, not both")

    def with_secret_read(self) -> Self:
        """These options with the secret file's content as ``secret`` (read once, here)."""
        if self.secret_file is None:
            return self
        try:
            secret = read_secret_file(self.secret_file)
        except SecretError as exc:
            raise OptionError("secret_file", str(exc)) from None
        return dataclasses.replace(self, secret=secret, secret_file=None)

    def session_config(self) -> yamux.Config:
        """The yamux settings for the sessions of one owner (a relay, a forwarder, ...).

        With auto-tuning they share one new window budget of ``max_total_window``.
        """
        return yamux.Config(
            keepalive_interval=self.keepalive_interval,
            keepalive_timeout=self.keepalive_timeout,
            max_stream_window_size=self.max_stream_window,
            max_session_window=self.max_session_window,
            window_autotune=self.window_autotune,
            window_budget=(
                yamux.WindowBudget(self.max_total_window) if self.window_autotune else None
            ),
        )
