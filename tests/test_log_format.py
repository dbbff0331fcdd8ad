"""The short way a plain log record takes (relay.logs) writes what structlog's chain writes."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import threading

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.ops import logs

keys = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=8)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(alphabet=' =\\"\nab', max_size=10),
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.dictionaries(keys, values, max_size=6))
def test_logfmt_fields_match_structlogs_logfmt_renderer(fields):
    expected = structlog.processors.LogfmtRenderer()(None, "info", dict(fields))
    assert logs.logfmt_fields(dict(fields)) == expected


def test_logfmt_fields_refuse_a_key_with_whitespace():
    with pytest.raises(ValueError, match="Invalid key"):
        logs.logfmt_fields({"bad key": 1})


def without_time(log_format: str, line: str) -> str:
    if log_format == "json":
        record = json.loads(line)
        assert record.pop("time").endswith("Z")
        return json.dumps(record)
    return line.split(" ", 1)[1]


@pytest.mark.parametrize("log_format", logs.LOG_FORMATS)
@SETTINGS
@given(
    fields=st.dictionaries(st.sampled_from(logs.FIELDS), values, max_size=5),
    message=st.text(max_size=30),
    level=st.sampled_from([logging.INFO, logging.WARNING]),
)
def test_plain_records_render_as_through_structlogs_chain(log_format, fields, message, level):
    formatter = logs.formatter(log_format)
    record = logging.getLogger("relay.connections").makeRecord(
        "relay.connections", level, __file__, 1, "%s", (message,), None, extra=fields
    )
    assert isinstance(formatter, structlog.stdlib.ProcessorFormatter)
    chain = structlog.stdlib.ProcessorFormatter.format(formatter, record)
    assert without_time(log_format, formatter.format(record)) == without_time(log_format, chain)


@pytest.mark.parametrize("log_format", logs.LOG_FORMATS)
def test_a_record_with_an_exception_keeps_its_traceback(log_format):
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        record = logging.getLogger("relay.server").makeRecord(
            "relay.server",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            (type(exc), exc, exc.__traceback__),
        )
    line = logs.formatter(log_format).format(record)
    assert "RuntimeError" in line
    assert "boom" in line


@pytest.mark.parametrize(
    "ns",
    [
        1_700_000_000_000_000_000,
        1_700_000_000_123_456_789,
        1_700_000_000_000_000_999,
        1_700_000_059_999_999_000,
    ],
)
def test_time_stamps_are_written_as_structlogs_iso_utc_stamper_writes_them(ns):
    seconds, fraction = divmod(ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(
        microsecond=fraction // 1000
    )
    assert logs._utc_now(ns) == moment.isoformat().replace("+00:00", "Z")


def test_lines_logged_in_the_event_loop_go_out_together_and_in_order():
    out = io.StringIO()
    handler = logs._Handler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.logs.batched")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)

    async def main() -> None:
        log.info("one")
        log.info("two")
        assert out.getvalue() == ""  # written once the callbacks ready now have run
        await asyncio.sleep(0)
        assert out.getvalue() == "one\ntwo\n"
        log.info("three")
        other = threading.Thread(target=log.info, args=("four",))
        other.start()  # a line from another thread writes what waits before it
        other.join()
        assert out.getvalue() == "one\ntwo\nthree\nfour\n"
        log.info("five")

    try:
        asyncio.run(main())
        handler.flush()  # logging.shutdown at exit does this
        assert out.getvalue() == "one\ntwo\nthree\nfour\nfive\n"
        log.info("six")  # no loop running: at once
        assert out.getvalue().endswith("five\nsix\n")

        async def again() -> None:  # a new loop in the same thread schedules its own flush
            log.info("seven")
            await asyncio.sleep(0)
            assert out.getvalue().endswith("six\nseven\n")

        asyncio.run(again())
    finally:
        log.removeHandler(handler)


def closed_line(session: int, fields: dict[str, object]) -> tuple[str, dict[str, object]]:
    return f"session {session}: closed", dict(fields)


@pytest.mark.parametrize("log_format", logs.LOG_FORMATS)
def test_the_connection_line_is_the_same_straight_to_the_handler_or_through_logging(log_format):
    """``log_later`` skips logging's record while ``setup``'s handler is the only one; with
    another handler (or a filter) on the way it logs through logging: the same line."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    log = logging.getLogger(logs.CONNECTIONS_LOGGER)
    fields = {"session": 3, "peer": "127.0.0.1:5000", "duration": 0.25, "reason": "a b"}
    seen: list[logging.LogRecord] = []
    try:
        logs.setup("info", log_format, stream=out)
        logs.log_later(log, closed_line, 3, fields)  # straight (no loop: written now)
        log.addFilter(seen.append)  # a filter returning None: seen, and dropped
        logs.log_later(log, closed_line, 3, fields)
        log.removeFilter(seen.append)
        assert len(seen) == 1
        log.info("session 3: closed", extra=dict(fields))  # through logging
        logs.setup("info", log_format, connection_log=False, stream=out)
        logs.log_later(log, closed_line, 4, {})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        log.setLevel(logging.NOTSET)
    direct, through = out.getvalue().splitlines()
    assert without_time(log_format, direct) == without_time(log_format, through)
    assert "127.0.0.1:5000" in direct


async def test_connection_lines_wait_for_the_next_ones_and_keep_their_order_and_time():
    """Per-connection lines are built and written together, at most BATCH_DELAY after the
    first; any other line writes those waiting before it; each keeps the time it was
    logged at."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    connections = logging.getLogger(logs.CONNECTIONS_LOGGER)
    built: list[int] = []

    def line(n: int) -> tuple[str, dict[str, object]]:
        built.append(n)
        return f"connection {n} closed", {"stream": n}

    try:
        logs.setup("info", "text", stream=out)
        logs.log_later(connections, line, 1)
        logged_at = datetime.datetime.now(datetime.UTC)
        logs.log_later(connections, line, 2)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert out.getvalue() == ""  # waiting for the next ones
        assert built == []
        await asyncio.sleep(logs.BATCH_DELAY)  # the batch's timer, set before, runs first
        first, second = out.getvalue().splitlines()
        assert first.endswith("relay.connections: connection 1 closed stream=1")
        assert second.endswith("connection 2 closed stream=2")
        stamp = datetime.datetime.fromisoformat(first.split()[0].replace("Z", "+00:00"))
        assert abs((stamp - logged_at).total_seconds()) < 0.05  # when logged, not written

        logs.log_later(connections, line, 3)
        logging.getLogger("relay.server").warning("a warning")  # writes what waits first
        await asyncio.sleep(0)
        lines = out.getvalue().splitlines()
        assert len(lines) == 4
        assert lines[2].endswith("connection 3 closed stream=3")
        assert lines[3].endswith("WARNING relay.server: a warning")

        for n in range(4, 4 + logs.BATCH_LINES):  # so many waiting: written at once
            logs.log_later(connections, line, n)
        await asyncio.sleep(0)
        assert len(out.getvalue().splitlines()) == 4 + logs.BATCH_LINES
        assert built == list(range(1, 4 + logs.BATCH_LINES))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("log_format", logs.LOG_FORMATS)
async def test_a_worker_writes_whole_lines_with_its_worker_field(log_format, monkeypatch):
    """Several relay processes share one stderr: every line says which wrote it, and each
    write is whole lines of at most PIPE_BUF bytes (atomic on a pipe)."""
    import os
    import select

    read_end, write_end = os.pipe()
    writes: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(logs.os, "write", recording)
    stream = os.fdopen(write_end, "w", encoding="utf-8")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.setup("info", log_format, stream=stream, worker=2)
        for n in range(300):
            logging.getLogger("relay.test").info("line %d %s", n, "x" * 60, extra={"stream": n})
        await asyncio.sleep(0)  # the lines of one loop iteration go out together
        await asyncio.sleep(0)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        stream.close()
    text = b""
    while chunk := os.read(read_end, 1 << 16):
        text += chunk
    os.close(read_end)
    assert len(writes) > 1
    assert all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes)
    lines = text.decode().splitlines()
    assert len(lines) == 300
    for n, line in enumerate(lines):
        if log_format == "json":
            assert json.loads(line)["worker"] == 2
            assert json.loads(line)["stream"] == n
        else:
            assert line.endswith(f"stream={n} worker=2")
