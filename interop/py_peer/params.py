"""The knobs of a scenario (shared with the peer, which gets them all explicitly) and constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import yamux

from .. import harness

INITIAL_WINDOW: Final = 256 * 1024
CHUNK: Final = 256 * 1024
"""Size of our write() calls for streamed payloads (as the Go peer)."""
READ_CHUNK: Final = 1 << 20
MAX_LINE: Final = 256
PATTERN_LEN: Final = (1 << 20) + 7
"""Not a power of two, so a reordered or duplicated frame changes the digest."""
BUSY_LIMIT: Final = 5.0
"""closebusy: pending operations must end within this many seconds of the session's end."""
HANDLER_GRACE: Final = 10.0
"""Passive side: how long stream handlers may run on after the session ended."""

ROLES: Final = ("client", "server")
SCENARIOS: Final = harness.SCENARIOS
COMMAND_ARITY: Final = {
    "ECHO": 1, "XFER": 2, "HALFCLOSE": 1, "HALFCLOSE-REV": 1, "EXPECT-RST": 0, "SEND-RST": 0,
    "PING": 1, "EXPECT-GOAWAY": 0, "SEND-GOAWAY": 0, "BIGWRITE": 1, "HOLD": 0, "FLOOD": 0,
    "STALL": 0, "BYE": 0,
}  # fmt: skip


class ScenarioError(Exception):
    """A check of the Python side failed; the message says what was seen and expected."""


@dataclass(frozen=True)
class Params:
    """The knobs of one scenario, shared by both peers (passed to Go explicitly).

    Defaults are those of yamux-peer (SCENARIOS.md, "Go peer command line").
    """

    scenario: str
    size: int
    down: int
    window: int = INITIAL_WINDOW
    streams: int = 1
    backlog: int = 256
    count: int = 1
    seed: int = 1
    keepalive_interval: float = 0.0
    """Seconds; 0 = keepalive off on both sides."""
    idle: float = 1.0
    write_timeout: float = 10.0
    timeout: float = 120.0
    """Go's overall deadline (-timeout); the Python side gets a little more."""
    grants_on_synack: bool = True
    """The peer grants a window beyond 256 KiB on its SYN/ACK (hashicorp) -- the libp2p peers
    start at 256 KiB and grow it by themselves, so bigwindow's one-frame checks do not apply."""
    grants_on_consume: bool = True
    """The peer grants window only for data its application consumed (hashicorp). The libp2p
    peers grant on receipt, so a stream whose reader stalls is bounded only by what they
    granted: closebusy then checks that no side sent beyond the granted window."""

    @classmethod
    def for_scenario(cls, scenario: str, **overrides: Any) -> Params:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        backlog = overrides.get("backlog", 256)
        window = overrides.get("window", INITIAL_WINDOW)
        d: dict[str, Any] = {"size": 1 << 20}
        if scenario == "parallel":
            d.update(size=8 << 20, streams=100)
        elif scenario == "bulk":
            d.update(size=1 << 30)
        elif scenario in ("rst", "goaway"):
            d.update(size=64 << 10)
        elif scenario == "ping":
            d.update(count=5)
        elif scenario == "keepalive":
            d.update(size=64 << 20, keepalive_interval=0.1)
        elif scenario == "bigwindow":
            window = overrides.get("window", 16 << 20)
            d.update(window=window, size=window - (64 << 10))
        elif scenario == "openstorm":
            d.update(size=32, streams=5 * backlog)
        elif scenario == "closebusy":
            d.update(streams=4)
        d.update(overrides)
        d.setdefault("down", d["size"])
        return cls(scenario=scenario, **d)

    def go_knobs(self) -> dict[str, object]:
        """Every knob, explicitly, so Go's defaults can never differ from ours."""
        return {
            "size": self.size,
            "down": self.down,
            "window": self.window,
            "streams": self.streams,
            "backlog": self.backlog,
            "count": self.count,
            "seed": self.seed,
            "keepalive_interval": self.keepalive_interval,  # 0 = off in yamux-peer too
            "idle": self.idle,
            "write_timeout": self.write_timeout,
            "timeout": self.timeout,
        }

    def config(self) -> yamux.Config:
        """Our session's Config, configured alike with the Go peer's."""
        return yamux.Config(
            accept_backlog=self.backlog,
            enable_keepalive=self.keepalive_interval > 0,
            keepalive_interval=self.keepalive_interval or 30.0,
            connection_write_timeout=self.write_timeout,
            max_stream_window_size=self.window,
            # bigwindow: our single big write may then leave as one Data frame too.
            max_frame_size=max(64 * 1024, self.window if self.scenario == "bigwindow" else 0),
        )
