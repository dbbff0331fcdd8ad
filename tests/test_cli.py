"""The ``relay`` command line, run as the real console script."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from relay_support import (
    ECHO_SCRIPT,
    HOST,
    connection_refused,
    echo_roundtrip,
    free_port,
    relay_command,
    wait_until,
)


def run_relay(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*relay_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def test_help_documents_both_forms_with_examples():
    done = run_relay("--help")
    assert done.returncode == 0
    out = done.stdout
    assert "Usage: relay [OPTIONS] PORT" in out
    assert "relay [OPTIONS] --local-forward-port LOCAL_PORT HOST PORT" in out
    assert "relay --localForwardPort=6379 relay.example.com 7000" in out
    for option in (
        "--bind",
        "--port-range",
        "--max-sessions",
        "--max-connections",
        "--handshake-timeout",
        "--local-forward-port",
        "--localForwardPort",
        "--local-forward-host",
        "--no-reconnect",
        "--reconnect-delay",
        "--reconnect-max-delay",
        "--connect-timeout",
        "--keepalive-interval",
        "--keepalive-timeout",
        "--verbose",
        "--log-level",
    ):
        assert option in out, option


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "missing argument: PORT"),
        (("0",), "Invalid value for 'PORT': 0 is not a port number (1-65535)"),
        (("65536",), "Invalid value for 'PORT': 65536 is not a port number"),
        (("http",), "Invalid value for 'PORT': 'http' is not a port number"),
        (("a", "b", "c"), "too many arguments (3)"),
        (("relay.example.com", "7000"), "no --local-forward-port"),
        (("--localForwardPort=6379", "7000"), "takes two arguments, HOST and PORT"),
        (("--localForwardPort=0", "h", "7000"), "Invalid value for '--local-forward-port'"),
        (("--localForwardPort=6379", "h", "99999"), "Invalid value for 'PORT': 99999"),
        (
            ("--port-range", "6000-5000", "7000"),
            "Invalid value for '--port-range': '6000-5000': LOW must not be greater than HIGH",
        ),
        (
            ("--port-range", "5000", "7000"),
            "Invalid value for '--port-range': '5000' is not a port range LOW-HIGH",
        ),
        (("--port-range", "0-10", "7000"), "ports must be 1-65535"),
        (("--max-sessions", "0", "7000"), "Invalid value for '--max-sessions'"),
        (("--handshake-timeout", "-1", "7000"), "Invalid value for '--handshake-timeout'"),
        (("--log-level", "loud", "7000"), "Invalid value for '--log-level'"),
        (
            ("--port-range", "5000-5100", "--localForwardPort=1", "h", "7000"),
            "--port-range is a relay option; it does not apply to forwarder mode",
        ),
        (
            ("--no-reconnect", "7000"),
            "--reconnect is a forwarder option; it does not apply to relay mode",
        ),
        (
            (
                "--reconnect-delay",
                "5",
                "--reconnect-max-delay",
                "1",
                "--localForwardPort=1",
                "h",
                "2",
            ),
            "Invalid value for '--reconnect-max-delay': 1: must not be less than "
            "--reconnect-delay (5)",
        ),
        (("--no-such-option", "7000"), "--no-such-option"),  # click's wording varies by version
        (
            ("--name", "b", "--http", "80", "--https", "443", "h", "1"),
            "--http or --https, not both",
        ),
        (("--name", "b", "--http", "80", "--localForwardPort=80", "h", "1"), "or --http/--https"),
        (
            ("--https", "8443", "--route", "http", "h", "1"),
            "--https is --route tls, not --route http",
        ),
        (("--http", "8080", "h", "7000"), "--http needs --name (or --client-name)"),
    ],
)
def test_usage_errors_exit_2_and_name_the_argument(args, expected):
    done = run_relay(*args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Try 'relay -h' for help." in done.stderr or "Try 'relay --help'" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_control_port_in_use_exits_1_with_a_message():
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_relay("--bind", HOST, str(port))
    assert done.returncode == 1
    assert f"cannot listen on port {port}: address already in use" in done.stderr.lower()
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_relay_exits_cleanly_on_signal_with_live_sessions(procs, signum, code):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay("--drain-timeout", "0.5")  # the open connection is idle
    forwarder, public_port = procs.forwarder(relay_port, echo_port, "--no-reconnect")
    with socket.create_connection((HOST, public_port), timeout=10) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"  # a relayed connection is open during the shutdown
        relay.send_signal(signum)
        assert relay.wait(10) == code
    what = "draining" if signum == signal.SIGTERM else "shutting down"  # SIGTERM drains
    assert f"{signal.Signals(signum).name} received: {what}" in relay.stderr_text
    assert "ended: relay shutting down" in relay.stderr_text
    assert "Traceback" not in relay.stderr_text
    assert forwarder.wait(10) == 1  # the forwarder noticed (and --no-reconnect made it exit)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_forwarder_exits_cleanly_on_signal(procs, signum, code):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay()
    forwarder, public_port = procs.forwarder(relay_port, echo_port)
    assert echo_roundtrip(public_port) == b"ping through the relay\n"
    forwarder.send_signal(signum)
    assert forwarder.wait(10) == code
    assert "Traceback" not in forwarder.stderr_text
    relay.wait_line(rf"ended: .*public port {public_port} closed")


def test_forwarder_prints_only_the_endpoint_on_stdout(procs):
    _, relay_port = procs.relay()
    forwarder, public_port = procs.forwarder(relay_port, free_port(), "-v")
    forwarder.wait_line(r"DEBUG", timeout=10)  # -v: debug logs, on stderr
    forwarder.send_signal(signal.SIGTERM)
    forwarder.wait(10)
    assert forwarder.stdout == [f"{HOST}:{public_port}"]


def test_log_level_warning_hides_info(procs):
    port = free_port()
    relay = procs.start(
        [*relay_command(), "--log-level", "warning", "--bind", HOST, str(port)], "relay"
    )
    wait_until(lambda: not connection_refused(port), timeout=15)  # no INFO line to wait for
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"garbage, not yamux")
        relay.wait_line(r"WARNING relay\.server: session \d+ .* ended: yamux protocol error")
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(10) == 0
    assert "INFO" not in relay.stderr_text  # not even "Serving relay requests"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--max-stream-window", "lots", "7000"),
            "Invalid value for '--max-stream-window': 'lots' is not a size",
        ),
        (
            ("--max-stream-window", "100KiB", "7000"),
            "Invalid value for '--max-stream-window': '100KiB': must be at least 256KiB",
        ),
        (
            ("--max-session-window", "1KiB", "7000"),
            "Invalid value for '--max-session-window': '1KiB': must be at least 256KiB",
        ),
    ],
)
def test_window_sizes_are_checked_with_a_clear_error(args, expected):
    done = run_relay(*args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--max-total-window", "100KiB", "7000"],
            {},
            "Invalid value for '--max-total-window': '100KiB': must be at least 256KiB",
        ),
        (
            ["forward", "6379", f"{HOST}:7000"],
            {"RELAY_MAX_TOTAL_WINDOW": "lots"},
            "Invalid value for '--max-total-window' (env var RELAY_MAX_TOTAL_WINDOW): "
            "'lots' is not a size",
        ),
    ],
)
def test_cli_rejects_a_bad_total_window_naming_it(args, env, expected):
    done = run_relay(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_help_documents_the_window_options():
    out = run_relay("server", "--help").stdout
    for option in (
        "--max-stream-window",
        "--max-session-window",
        "--max-total-window",
        "--window-autotune",
    ):
        assert option in out, option
