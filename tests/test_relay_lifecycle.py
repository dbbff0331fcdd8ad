"""Processes dying and coming back: ports freed at once, forwarder reconnects and re-registers."""

from __future__ import annotations

import contextlib
import signal
import socket
import time

import pytest

from relay_support import (
    ENDPOINT,
    HOST,
    connection_refused,
    echo_roundtrip,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.e2e

FAST_RECONNECT = ("--reconnect-delay", "0.1", "--reconnect-max-delay", "0.4")


def test_forwarder_killed_public_port_closes_within_a_second(procs, echo_port):
    relay, relay_port = procs.relay()
    forwarder, public_port = procs.forwarder(relay_port, echo_port)
    assert echo_roundtrip(public_port) == b"ping through the relay\n"
    with socket.create_connection((HOST, public_port), timeout=5) as open_conn:
        open_conn.sendall(b"x")
        assert open_conn.recv(1) == b"x"  # a live relayed connection
        forwarder.kill()  # SIGKILL: no goodbye on the control connection
        killed = time.monotonic()
        open_conn.settimeout(1.0)
        with contextlib.suppress(ConnectionResetError):  # reset is fine too
            assert open_conn.recv(1) == b""  # closed by the relay, not left hanging
    waited = wait_until(
        lambda: connection_refused(public_port),
        timeout=1.0,
        message=f"public port {public_port} still accepts",
    )
    assert time.monotonic() - killed < 1.0, waited
    relay.wait_line(rf"ended: .*public port {public_port} closed")
    # The relay goes on: a new forwarder registers and works.
    _, new_port = procs.forwarder(relay_port, echo_port)
    assert echo_roundtrip(new_port) == b"ping through the relay\n"


def test_relay_killed_and_restarted_forwarder_reregisters(procs, echo_port):
    relay, relay_port = procs.relay()
    forwarder, first_port = procs.forwarder(relay_port, echo_port, *FAST_RECONNECT)
    assert echo_roundtrip(first_port) == b"ping through the relay\n"
    relay.kill()
    forwarder.wait_line(
        r"lost the relay at 127\.0\.0\.1:\d+: (peer closed the connection"
        r"|connection lost).*; public endpoint 127\.0\.0\.1:\d+ is gone"
    )
    forwarder.wait_line(r"cannot register with the relay .*refused")  # it keeps trying
    assert forwarder.popen.poll() is None
    procs.relay(port=relay_port)  # same control port, new process
    index, match = forwarder.wait_line(ENDPOINT, stream="stdout", after=1)
    assert index == 1  # a second endpoint line, printed on its own
    second_port = int(match.group(1))
    assert echo_roundtrip(second_port, b"after the restart\n") == b"after the restart\n"


def test_no_reconnect_exits_when_relay_lost(procs, echo_port):
    relay, relay_port = procs.relay()
    forwarder, _ = procs.forwarder(relay_port, echo_port, "--no-reconnect")
    relay.kill()
    assert forwarder.wait(10) == 1
    assert "lost the relay" in forwarder.stderr_text
    assert "Traceback" not in forwarder.stderr_text


def test_forwarder_started_before_relay_registers_when_it_comes_up(procs, echo_port):
    relay_port = free_port()
    forwarder = procs.start_forwarder(relay_port, echo_port, *FAST_RECONNECT)
    forwarder.wait_line(
        r"WARNING relay.api: cannot register with the relay at 127\.0\.0\.1:\d+: "
        r"connection refused.*; retrying in 0\.\d\d s"
    )
    procs.relay(port=relay_port)
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout")
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"


def test_reconnect_backoff_doubles_and_is_capped(procs, echo_port):
    forwarder = procs.start_forwarder(
        free_port(),
        echo_port,
        "--reconnect-delay",
        "0.05",
        "--reconnect-max-delay",
        "0.2",
        "--log-level",
        "debug",
    )
    delays: list[float] = []
    after = 0
    while len(delays) < 6:
        index, match = forwarder.wait_line(
            r"DEBUG relay.api: cannot register .* retrying in "
            r"(\d+\.\d\d) s \(attempt",
            after=after,
        )
        delays.append(float(match.group(1)))
        after = index + 1
    # 0.05 s doubling, +-20 % jitter, capped at 0.2 s.
    assert 0.04 <= delays[0] <= 0.06, delays
    assert 0.08 <= delays[1] <= 0.12, delays
    assert 0.16 <= delays[2] <= 0.2, delays
    assert all(0.16 <= delay <= 0.2 for delay in delays[3:]), delays
    assert forwarder.popen.poll() is None  # still trying


def test_failed_attempts_are_one_warning_not_one_error_each(procs, echo_port):
    relay_port = free_port()
    forwarder = procs.start_forwarder(
        relay_port, echo_port, "--reconnect-delay", "0.05", "--reconnect-max-delay", "0.1"
    )
    forwarder.wait_line(r"WARNING relay.api: cannot register with the relay .*refused")
    time.sleep(1.5)  # some 15 more attempts
    procs.relay(port=relay_port)
    forwarder.wait_line(ENDPOINT, stream="stdout")
    _, match = forwarder.wait_line(
        r"INFO relay.api: cannot register with the relay .*: "
        r"succeeded after (\d+) failed attempt\(s\)"
    )
    assert int(match.group(1)) >= 10
    log = forwarder.stderr_text
    assert log.count("cannot register with the relay") == 2, log  # first failure, recovery
    assert " ERROR " not in log


def test_frozen_forwarder_detected_by_relay_keepalive(procs, echo_port):
    """A registered side that stops answering (SIGSTOP) does not hold its public port."""
    relay, relay_port = procs.relay("--keepalive-interval", "0.2", "--keepalive-timeout", "0.5")
    forwarder, public_port = procs.forwarder(relay_port, echo_port, *FAST_RECONNECT)
    forwarder.send_signal(signal.SIGSTOP)
    try:
        relay.wait_line(
            rf"ended: keepalive failed: nothing from the peer within 0.5 s of a ping; "
            rf"public port {public_port} closed",
            timeout=10,
        )
        assert connection_refused(public_port)
    finally:
        forwarder.send_signal(signal.SIGCONT)
    # Thawed, the forwarder finds its session gone and registers again.
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout", after=1)
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"


def test_frozen_relay_detected_by_forwarder_keepalive(procs, echo_port):
    relay, relay_port = procs.relay()
    forwarder, _ = procs.forwarder(
        relay_port,
        echo_port,
        "--keepalive-interval",
        "0.2",
        "--keepalive-timeout",
        "0.5",
        "--connect-timeout",
        "1",
        *FAST_RECONNECT,
    )
    relay.send_signal(signal.SIGSTOP)
    try:
        forwarder.wait_line(r"lost the relay at .*: keepalive failed", timeout=10)
    finally:
        relay.send_signal(signal.SIGCONT)
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout", after=1)
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"
