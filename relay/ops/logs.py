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
(``--no-connection-log`` raises that logger to WARNING). That line is on the
relay's per-connection path, so it takes a short way to the same output
(``log_later``): the connection's figures are kept as they are, and the line
is built and written with the next ones, at most ``BATCH_DELAY`` later. Built
one after the other, lines cost a third of what each costs between two
connections' work (which leaves none of the formatting code in the CPU's
caches). A plain record (no exception, no stack) also takes a short way: no
copy of the record, no processor chain, ``logfmt_fields`` instead of
structlog's ``LogfmtRenderer`` (a property test checks the two agree byte for
byte), and a time stamp whose date and time of day are rendered once a
second. Records with an exception go through structlog's whole chain.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from itertools import filterfalse
from typing import Any, TextIO

import structlog

LOG_FORMATS = ("text", "logfmt", "json")
CONNECTIONS_LOGGER = "relay.connections"

FIELDS = (
    "session",
    "client",
    "peer",
    "public_port",
    "host",
    "stream",
    "bytes_in",
    "bytes_out",
    "duration",
    "reason",
    "worker",
)
"""The stable field names; a line carries those that apply (see docs/operations.md)."""

_FRONT = ("time", "level", "logger", "event")
_RECORD_KEYS = frozenset(logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__)
"""The attributes every LogRecord has; the others came in ``extra`` and are fields."""
_LEVELS = {"warn": "warning", "exception": "error"}
"""structlog's names for the levels it renames (``add_log_level``)."""


EventDict = MutableMapping[str, Any]


def _front_first(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """time, level, logger and event first, then the fields in the order they were given."""
    front = {key: event_dict.pop(key) for key in _FRONT if key in event_dict}
    front.update(event_dict)
    return front


def logfmt_fields(fields: EventDict) -> str:
    """``key=value ...`` exactly as structlog's ``LogfmtRenderer()`` writes it, faster.

    Keys are our own field names (``extra=``), checked once each; values are
    quoted when they hold a space, ``=`` or ``"``.
    """
    parts = []
    for key, value in fields.items():
        if key not in _valid_keys:
            if any(c <= " " for c in key):
                raise ValueError(f'Invalid key: "{key}"')
            _valid_keys.add(key)
        kind = type(value)
        if kind is int or kind is float:
            parts.append(f"{key}={value}")
            continue
        if kind is str:
            text = value
        elif value is None:
            parts.append(f"{key}=")
            continue
        elif value is True:
            parts.append(key)
            continue
        elif value is False:
            parts.append(f"{key}=false")
            continue
        else:
            text = str(value)
        if " " in text or "=" in text or '"' in text:
            if "\\" in text:
                text = text.replace("\\", "\\\\")
            text = text.replace('"', '\\"').replace("\n", "\\n")
            parts.append(f'{key}="{text}"')
        elif "\n" in text:
            parts.append(key + "=" + text.replace("\n", "\\n"))
        else:
            parts.append(f"{key}={text}")  # the usual case: nothing to quote or escape
    return " ".join(parts)


_valid_keys: set[str] = set()


def _text_renderer(_logger: Any, _name: str, event_dict: EventDict) -> str:
    """The classic line, ``TIME LEVEL logger: message``, with the fields appended as k=v."""
    head = (
        f"{event_dict.pop('time', '')} {str(event_dict.pop('level', '')).upper()} "
        f"{event_dict.pop('logger', '')}: {event_dict.pop('event', '')}"
    )
    exception = event_dict.pop("exception", None)
    fields = logfmt_fields(event_dict)
    line = f"{head} {fields}" if fields else head
    return f"{line}\n{exception}" if exception else line


def _logfmt_renderer(_logger: Any, _name: str, event_dict: EventDict) -> str:
    """logfmt; time, level, logger and event are first already (``_front_first``)."""
    return logfmt_fields(event_dict)


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with a short way for a plain record (see the module doc)."""

    def __init__(self, renderer: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._renderer = renderer

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        attrs = record.__dict__
        extra = {key: attrs[key] for key in filterfalse(_RECORD_KEYS.__contains__, attrs)}
        return self.plain_line(record.levelname, record.name, record.getMessage(), extra)

    def plain_line(
        self, levelname: str, name: str, message: str, fields: EventDict, time_ns: int = 0
    ) -> str:
        """The line of a record without exception or stack: ``fields`` are its extras;
        ``time_ns`` when it was logged (0: now)."""
        level = levelname.lower()
        event_dict: EventDict = {
            "time": None,
            "level": _LEVELS.get(level, level),
            "logger": name,
            "event": message,
        }
        event_dict.update(fields)
        event_dict["time"] = _utc_now(time_ns or time.time_ns())
        return str(self._renderer(None, level, event_dict))


_second: tuple[int, str] = (-1, "")
"""The last whole second stamped, and its ``YYYY-MM-DDTHH:MM:SS`` (one tuple: threads)."""


def _utc_now(time_ns: int) -> str:
    """``time_ns`` as ``TimeStamper(fmt="iso", utc=True)`` writes it (datetime's
    ``isoformat``: no fraction when it is zero), with the date and time of day rendered
    once per second."""
    global _second
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    second = _second
    if second[0] != seconds:
        _second = second = (
            seconds,
            datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        )
    micros = nanoseconds // 1000
    return f"{second[1]}.{micros:06d}Z" if micros else f"{second[1]}Z"


def formatter(log_format: str) -> logging.Formatter:
    """A ``logging.Formatter`` rendering records in ``log_format`` (one of LOG_FORMATS)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
    elif log_format == "logfmt":
        renderer = _logfmt_renderer
    else:
        renderer = _text_renderer
    exceptions: Any = (
        structlog.processors.dict_tracebacks
        if log_format == "json"
        else structlog.processors.format_exc_info
    )
    return _Formatter(
        renderer,
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


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines of one event-loop iteration with one write, and the
    per-connection lines in batches.

    Each write to a pipe (journald, a supervisor, a terminal) wakes its reader;
    once per line, that was a quarter of the per-connection line's cost. A line
    logged in the event loop's thread is written when the callbacks that are
    ready now have run (``call_soon``). A per-connection line (``log_later``)
    is built and written up to ``BATCH_DELAY`` later (at once when
    ``BATCH_LINES`` wait), with the others of that time, as an access log with
    a buffer does. Any other line, a line from another thread, ``flush()`` and
    ``close()`` (``logging.shutdown`` at exit) write what waits first, so the
    order of the lines never changes.
    """

    def __init__(self, stream: TextIO, *, shared: bool = False) -> None:
        super().__init__(stream)
        self._shared = shared
        """Other processes write to the same stream (the workers of one relay): write whole
        lines, at most PIPE_BUF bytes per write, so that lines never interleave."""
        self._pending: list[str | _Later] = []
        """Lines, and per-connection lines to build."""
        self._last: logging.LogRecord | None = None
        """The last record pending, for ``handleError`` if the write fails."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        """The loop that logged last and its thread: a thread runs one loop at a time, so
        while that loop runs, a line from that thread is logged inside it (no
        ``get_running_loop()``, whose fork check is a getpid() system call)."""
        self._scheduled = False
        """A flush is scheduled on ``_loop`` for the end of this iteration."""
        self._batch: asyncio.TimerHandle | None = None
        """The flush of the waiting per-connection lines, ``BATCH_DELAY`` after the first."""
        self._later = 0
        """Per-connection lines waiting."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._last = record
        self.emit_line(line)

    def emit_line(self, line: str) -> None:
        """Write ``line`` (formatted already) with the others of this loop iteration."""
        self._pending.append(line + self.terminator)
        loop = self._running_loop()
        if loop is None:
            self._write_pending()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)

    def emit_later(self, later: _Later) -> None:
        """Build and write a per-connection line with the others of the next
        ``BATCH_DELAY``."""
        self._pending.append(later)
        loop = self._running_loop()
        if loop is None:
            self._write_pending()
            return
        self._later += 1
        if self._scheduled:
            return
        if self._later >= BATCH_LINES:
            self._scheduled = True
            loop.call_soon(self.flush)
        elif self._batch is None:
            self._batch = loop.call_later(BATCH_DELAY, self.flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop running in this thread, if any: the one that logged last while it
        still runs (no ``get_running_loop()``, whose fork check is a getpid() system
        call)."""
        loop = self._loop
        if loop is None or self._loop_thread != threading.get_ident() or not loop.is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
            self._loop, self._loop_thread = loop, threading.get_ident()
            # A flush scheduled on a loop that stopped never runs.
            self._scheduled, self._batch = False, None
        return loop

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            if self._batch is not None:
                self._batch.cancel()
                self._batch = None
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._later = 0
        text = "".join([item if isinstance(item, str) else self._build(item) for item in pending])
        try:
            if self._shared:
                self._write_lines(text)
                return
            self.stream.write(text)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(self._last or logging.makeLogRecord({"msg": text}))

    def _build(self, later: _Later) -> str:
        """The line of a per-connection line kept by ``log_later``."""
        time_ns, name, build, args = later
        try:
            message, fields = build(*args)
            formatter = self.formatter
            assert isinstance(formatter, _Formatter)
            return formatter.plain_line("INFO", name, message, fields, time_ns) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({"name": name, "msg": repr(args)}))
            return ""

    def _write_lines(self, text: str) -> None:
        """``text`` in writes of whole lines of at most PIPE_BUF bytes (a longer line on
        its own), each atomic on a pipe, so another process's lines never cut into ours."""
        self.stream.flush()
        data = text.encode(self.stream.encoding or "utf-8", "backslashreplace")
        fd = self.stream.fileno()
        while data:
            end = data.rfind(b"\n", 0, select.PIPE_BUF) + 1 or data.find(b"\n") + 1 or len(data)
            chunk = memoryview(data)[:end]
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
            data = data[end:]


class _WorkerField(logging.Filter):
    """Every line of a relay process that shares its stream says which process wrote it."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


BATCH_DELAY = 0.1
"""Seconds a per-connection line may wait to be written with the next ones."""
BATCH_LINES = 256
"""Per-connection lines waiting that are written at once, without waiting longer."""

LineBuilder = Callable[..., tuple[str, EventDict]]
"""``build(*args) -> (message, fields)`` of a per-connection line."""
_Later = tuple[int, str, LineBuilder, tuple[Any, ...]]
"""A per-connection line to build: (time logged in ns, logger name, build, args)."""

_direct: _Handler | None = None
"""The handler ``setup`` installed, which ``log_plain`` may write to directly."""


def log_later(logger: logging.Logger, build: LineBuilder, *args: Any) -> None:
    """``logger.info(message, extra=fields)`` for a line on the per-connection path, where
    ``build(*args)`` returns ``(message, fields)``; ``args`` are values that do not change.

    While the handler of ``setup`` is the only one the record would reach (no
    other handler, no filter: e.g. not under pytest's caplog), the line is built
    and written with the next ones (see the module doc), the same line without
    a ``LogRecord``, its extras copied twice and logging's dispatch. Else it is
    logged now, through logging.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _direct
    if (
        handler is not None
        and handler.level <= logging.INFO
        and not handler.filters
        and _reaches_only(logger, handler)
    ):
        with handler.lock:  # type: ignore[union-attr]
            handler.emit_later((time.time_ns(), logger.name, build, args))
    else:
        message, fields = build(*args)
        logger.info("%s", message, extra=fields)


def _reaches_only(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether ``handler``, on the root logger, is all that a record of ``logger`` meets."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return False
        handlers = node.handlers
        if node.parent is None:
            return len(handlers) == 1 and handlers[0] is handler
        if handlers or not node.propagate:
            return False
        node = node.parent
    return False


def setup(
    level: str,
    log_format: str = "text",
    *,
    connection_log: bool = True,
    stream: TextIO | None = None,
    worker: int | None = None,
) -> None:
    """Send every log record to stderr (or ``stream``) in ``log_format``, at ``level``.

    ``worker``: this process is one of a relay's (``relay server --workers``; 0 for the
    supervisor): every line gets a ``worker`` field, and lines are written whole.
    """
    global _direct
    handler = _Handler(stream or sys.stderr, shared=worker is not None)
    handler.setFormatter(formatter(log_format))
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    _direct = handler
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    # No format shows where a line came from, nor its thread or process: skip finding
    # them for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger(CONNECTIONS_LOGGER).setLevel(
        logging.NOTSET if connection_log else logging.WARNING
    )
