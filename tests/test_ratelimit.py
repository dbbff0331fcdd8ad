"""The rate-limited log helper: a burst, then exponentially rarer lines, with counts."""

from __future__ import annotations

import logging

import pytest

from yamux.ratelimit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_suppressed_with_counts_on_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("t.rl"), burst=3, interval=10, clock=clock)
    with caplog.at_level(logging.INFO, "t.rl"):
        written = [log.log(logging.WARNING, "bad", "bad frame %d", n) for n in range(100)]
        assert written == [True] * 3 + [False] * 97
        clock.now = 10.0
        assert log.log(logging.WARNING, "bad", "bad frame %d", 100)
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame 0",
        "bad frame 1",
        "bad frame 2",
        "bad frame 100 (97 similar messages suppressed)",
    ]
    assert log.suppressed == {"bad": 97}


def test_lines_grow_logarithmically_with_time_and_keys_are_separate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RateLimitedLog(
        logging.getLogger("t.rl2"), burst=5, interval=10, max_interval=3600, clock=clock
    )
    with caplog.at_level(logging.INFO, "t.rl2"):
        for n in range(100_000):  # one bad frame a second for 28 hours
            clock.now = float(n)
            log.log(logging.WARNING, "refused", "refused %d", n)
        log.log(logging.WARNING, "other", "another kind")
        log.summary(logging.WARNING, "session 1 ended")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) < 100
    assert "another kind" in lines
    assert "suppressed log messages" in lines[-1]
    logged = len(lines) - 2  # minus "another kind" and the summary
    suppressed_in_lines = sum(
        int(line.split("(")[1].split()[0])
        for line in lines
        if "similar messages suppressed" in line
    )
    pending = int(lines[-1].split(": ")[-1].split(" x ")[0])
    assert logged + suppressed_in_lines + pending == 100_000


def test_disabled_level_costs_nothing_and_counts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("t.rl3"), burst=1)
    with caplog.at_level(logging.WARNING, "t.rl3"):
        for _ in range(10):
            assert not log.log(logging.DEBUG, "k", "debug")
    assert caplog.records == []
    assert log.suppressed == {}
