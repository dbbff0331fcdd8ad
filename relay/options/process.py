"""The process's options, for both commands: logging, event loop, metrics, drain."""

from __future__ import annotations

from dataclasses import dataclass

from ..ops.logs import LOG_FORMATS
from .declare import Options, option
from .kinds import Choice, Endpoint, Flag, Seconds

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


@dataclass(frozen=True, kw_only=True)
class ProcessOptions(Options):
    """How ``relay`` runs as a program (the Python API leaves these to its caller)."""

    event_loop: str = option(
        EVENT_LOOPS[0],
        Choice(EVENT_LOOPS),
        "asyncio's own loop or uvloop; auto uses uvloop when it is installed.",
    )
    verbose: bool = option(False, Flag(), "Debug logging (same as --log-level debug).", short="-v")
    log_level: str = option(
        "info",
        Choice(LOG_LEVELS, case_sensitive=False),
        "Logging threshold (logs go to stderr).",
    )
    log_format: str = option(
        LOG_FORMATS[0],
        Choice(LOG_FORMATS),
        "text: TIME LEVEL logger: message key=value...; logfmt; json: one "
        "object per line. Times are UTC ISO-8601.",
    )
    metrics: tuple[str, int] | None = option(
        None,
        Endpoint(),
        "Serve Prometheus metrics at http://HOST:PORT/metrics and a JSON status of every "
        "registration at /status.  [default: off]",
    )
    drain_timeout: float = option(
        30.0,
        Seconds(zero_off=True),
        "On SIGTERM stop taking new connections at once (Go Away) and give the ones in "
        "flight this long to finish; 0 closes them at once. A second signal stops at once.",
        metavar="SECONDS",
    )
    connection_log: bool = option(
        True,
        Flag(),
        "One INFO line per relayed connection when it ends (bytes both ways, duration).",
        negatable=True,
    )

    @property
    def level(self) -> str:
        return "debug" if self.verbose else self.log_level
