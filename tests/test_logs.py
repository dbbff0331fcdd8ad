"""--log-format text|logfmt|json and the per-connection log line, on the real console script."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import subprocess

import pytest

from relay_support import ECHO_SCRIPT, echo_roundtrip, free_port, relay_command

PAYLOAD = b"ping through the relay\n"


def utc_time(text: str) -> datetime.datetime:
    assert text.endswith("Z"), text
    parsed = datetime.datetime.fromisoformat(text[:-1] + "+00:00")
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - parsed).total_seconds()) < 300, text  # UTC, not local time
    return parsed


def through_the_relay(procs, *args: str):
    """Relay and forwarder with ``args``, one echo connection through them, both stopped."""
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay(*args)
    forwarder, public_port = procs.forwarder(relay_port, echo_port, *args)
    assert echo_roundtrip(public_port, PAYLOAD) == PAYLOAD
    forwarder.send_signal(signal.SIGTERM)
    assert forwarder.wait(10) == 0
    relay.wait_line(rf"public port {public_port} closed")
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(10) == 0
    return relay, forwarder, public_port


def test_json_every_line_is_an_object_with_time_level_event_and_fields(procs):
    relay, forwarder, public_port = through_the_relay(procs, "--log-format", "json")
    for proc in (relay, forwarder):
        assert proc.stderr, proc.describe()
        records = [json.loads(line) for line in proc.stderr]  # every line, or this fails
        for record in records:
            assert {"time", "level", "event", "logger"} <= record.keys(), record
            utc_time(record["time"])
            assert record["level"] in ("debug", "info", "warning", "error", "critical")
    relay_records = [json.loads(line) for line in relay.stderr]
    connection = [r for r in relay_records if r["logger"] == "relay.connections"]
    assert len(connection) == 1, relay_records
    line = connection[0]
    assert line["level"] == "info"
    assert line["public_port"] == public_port
    assert line["bytes_in"] == len(PAYLOAD)
    assert line["bytes_out"] == len(PAYLOAD)
    assert isinstance(line["session"], int)
    assert isinstance(line["stream"], int)
    assert line["peer"].startswith("127.0.0.1:")
    assert 0 <= line["duration"] < 30
    assert line["reason"] == "closed"
    ended = [r for r in relay_records if r.get("reason") and r["logger"] == "relay.server"]
    assert ended
    assert ended[-1]["public_port"] == public_port
    forwarded = [json.loads(line) for line in forwarder.stderr]
    stream_lines = [r for r in forwarded if r["logger"] == "relay.connections"]
    assert stream_lines
    assert stream_lines[0]["bytes_in"] == len(PAYLOAD)


def test_logfmt_lines_are_key_value_pairs(procs):
    relay, _, public_port = through_the_relay(procs, "--log-format", "logfmt")
    for line in relay.stderr:
        pairs = dict(part.split("=", 1) for part in shlex.split(line))
        assert list(pairs)[:4] == ["time", "level", "logger", "event"], line
        utc_time(pairs["time"])
    connection = [line for line in relay.stderr if "logger=relay.connections" in line]
    assert len(connection) == 1
    pairs = dict(part.split("=", 1) for part in shlex.split(connection[0]))
    assert pairs["public_port"] == str(public_port)
    assert pairs["bytes_in"] == pairs["bytes_out"] == str(len(PAYLOAD))


def test_text_lines_have_utc_iso_times_and_fields(procs):
    relay, _, public_port = through_the_relay(procs)
    for line in relay.stderr:
        utc_time(line.split(" ", 1)[0])
    (line,) = [line for line in relay.stderr if " relay.connections: " in line]
    assert re.search(
        rf"INFO relay\.connections: session \d+: connection from .* closed: "
        rf"{len(PAYLOAD)} bytes in, {len(PAYLOAD)} out .*public_port={public_port}"
        rf" .*stream=\d+ bytes_in=\d+ bytes_out=\d+ duration=",
        line,
    ), line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_connection_log_can_be_switched_off(procs, how):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay_args = ("--no-connection-log",) if how == "flag" else ()
    env = {"RELAY_CONNECTION_LOG": "false"} if how == "env" else None
    relay = procs.start(
        [*relay_command(), "--bind", "127.0.0.1", *relay_args, str(free_port())], "relay", env=env
    )
    _, match = relay.wait_line(r"Serving relay requests on port (\d+)")
    forwarder, public_port = procs.forwarder(int(match.group(1)), echo_port)
    assert echo_roundtrip(public_port, PAYLOAD) == PAYLOAD
    forwarder.send_signal(signal.SIGTERM)
    forwarder.wait(10)
    relay.wait_line(rf"public port {public_port} closed")
    assert "relay.connections" not in relay.stderr_text


@pytest.mark.parametrize("env", [{}, {"RELAY_LOG_FORMAT": "json"}])
def test_json_usage_errors_are_json_lines_too(env):
    args = ["--log-format", "json"] if not env else []
    done = subprocess.run(
        [*relay_command(), *args, "--max-sessions", "0", "7000"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert "Invalid value for '--max-sessions'" in record["event"]
    assert record["usage"].startswith("Usage: relay")
