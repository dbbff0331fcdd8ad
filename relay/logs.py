"""Log output: ``--log-format text|logfmt|json``, UTC ISO-8601 times, stable key=value fields.

The code logs with the standard ``logging`` module under named loggers; the
fields of a line go in ``extra={...}`` with the stable names of ``FIELDS``.
structlog's ``ProcessorFormatter`` renders every record, ours and any
library's, the same way:

* text:   ``2026-11-26T02:30:01.123456Z INFO relay.server: message key=value ...``
* logfmt: ``time=... level=info logger=relay.server event="message" key=value ...``
* json:   one object per line: ``{"time": ..., "level": ..., "logger": ...,
  "event": ..., key: value, ...}`` (a traceback goes in ``exception``).

``relay.connections`` logs one INFO line per public connection when it ends
(``--no-connection-log`` raises that logger to WARNING).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LOG_FORMATS = ("text", "logfmt", "json")
CONNECTIONS_LOGGER = "relay.connections"

FIELDS = (
    "session", "client", "peer", "public_port", "stream", "bytes_in", "bytes_out",
    "duration", "reason",
)
"""The stable field names; a line carries those that apply (see the README)."""

_FRONT = ("time", "level", "logger", "event")

EventDict = MutableMapping[str, Any]


def _front_first(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """time, level, logger and event first, then the fields in the order they were given."""
    front = {key: event_dict.pop(key) for key in _FRONT if key in event_dict}
    front.update(event_dict)
    return front


def _text_renderer(_logger: Any, _name: str, event_dict: EventDict) -> str:
    """The classic line, ``TIME LEVEL logger: message``, with the fields appended as k=v."""
    head = (f"{event_dict.pop('time', '')} {str(event_dict.pop('level', '')).upper()} "
            f"{event_dict.pop('logger', '')}: {event_dict.pop('event', '')}")
    exception = event_dict.pop("exception", None)
    fields = structlog.processors.LogfmtRenderer()(_logger, _name, event_dict)
    line = f"{head} {fields}" if fields else head
    return f"{line}\n{exception}" if exception else line


def formatter(log_format: str) -> logging.Formatter:
    """A ``logging.Formatter`` rendering records in ``log_format`` (one of LOG_FORMATS)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
    elif log_format == "logfmt":
        renderer = structlog.processors.LogfmtRenderer(key_order=list(_FRONT),
                                                       drop_missing=True)
    else:
        renderer = _text_renderer
    exceptions: Any = (structlog.processors.dict_tracebacks if log_format == "json"
                       else structlog.processors.format_exc_info)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            _front_first,
            renderer,
        ],
    )


def setup(level: str, log_format: str = "text", *, connection_log: bool = True,
          stream: TextIO | None = None) -> None:
    """Send every log record to stderr (or ``stream``) in ``log_format``, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    logging.getLogger(CONNECTIONS_LOGGER).setLevel(
        logging.NOTSET if connection_log else logging.WARNING)
