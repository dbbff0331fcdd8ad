"""Config: hashicorp/yamux's DefaultConfig values, and validation that names the bad field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from yamux import Config, ConfigError
from yamux.const import INITIAL_STREAM_WINDOW

KIB = 1024


def test_defaults_match_hashicorp_default_config() -> None:
    config = Config()
    assert config.accept_backlog == 256
    assert config.enable_keepalive is True
    assert config.keepalive_interval == 30.0
    assert config.connection_write_timeout == 10.0
    assert config.max_stream_window_size == 256 * KIB == INITIAL_STREAM_WINDOW
    assert config.stream_open_timeout == 75.0
    assert config.stream_close_timeout == 300.0
    assert config.max_frame_size == 64 * KIB


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().accept_backlog = 1  # type: ignore[misc]


POSITIVE_INTS = ["accept_backlog", "max_streams", "max_frame_size", "control_queue_limit"]
POSITIVE_SECONDS = ["keepalive_interval", "keepalive_timeout", "connection_write_timeout"]
NON_NEGATIVE_SECONDS = ["stream_open_timeout", "stream_close_timeout", "go_away_timeout"]

INVALID = (
    [(name, value) for name in POSITIVE_INTS for value in (0, -1, 1.5, 2.0, True, "8", None)]
    + [
        (name, value)
        for name in POSITIVE_SECONDS
        for value in (0, 0.0, -0.5, True, False, "30", None, math.nan)
    ]
    + [
        (name, value)
        for name in NON_NEGATIVE_SECONDS
        for value in (-1, -0.001, True, "75", None, math.nan)
    ]
    + [
        ("max_stream_window_size", value)
        for value in (
            0,
            INITIAL_STREAM_WINDOW - 1,
            -INITIAL_STREAM_WINDOW,
            float(INITIAL_STREAM_WINDOW * 2),
            True,
            "262144",
            None,
            2**32,
        )
    ]
    + [("enable_keepalive", value) for value in (1, 0, "yes", None)]
    + [("tcp_notsent_lowat", value) for value in (-1, 1.5, True, "0", None)]
)


@pytest.mark.parametrize(("field", "value"), INVALID, ids=lambda v: repr(v))
def test_invalid_value_is_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}\b") as info:
        Config(**{field: value})
    assert isinstance(info.value, ValueError)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(("field", "value"), INVALID[::5], ids=lambda v: repr(v))
def test_replace_validates_too(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        Config().replace(**{field: value})


@pytest.mark.parametrize(
    "window",
    [INITIAL_STREAM_WINDOW, INITIAL_STREAM_WINDOW + 1, 512 * KIB, 16 * 1024 * KIB, 2**32 - 1],
)
def test_window_of_256_kib_or_more_is_allowed(window: int) -> None:
    assert Config(max_stream_window_size=window).max_stream_window_size == window


@pytest.mark.parametrize(
    "changes",
    [
        {"accept_backlog": 1, "max_streams": 1, "max_frame_size": 1},
        {"keepalive_interval": 1, "connection_write_timeout": 0.001},
        {"stream_open_timeout": 0, "stream_close_timeout": 0},
        {"stream_open_timeout": 0.5, "stream_close_timeout": 2},
        {"enable_keepalive": False},
    ],
)
def test_boundary_values_are_allowed(changes: dict[str, object]) -> None:
    config = Config(**changes)
    for name, value in changes.items():
        assert getattr(config, name) == value


def test_replace_returns_a_changed_copy() -> None:
    base = Config()
    changed = base.replace(accept_backlog=8, enable_keepalive=False)
    assert (changed.accept_backlog, changed.enable_keepalive) == (8, False)
    assert (base.accept_backlog, base.enable_keepalive) == (256, True)
