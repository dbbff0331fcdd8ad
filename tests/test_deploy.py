"""systemd: sd_notify over a real unix datagram socket, and the units under deploy/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from relay.cli import COMMON, FORWARDER, RELAY, option_names
from relay.cli.build import ReadyWhenAllRegistered
from relay.ops import config as config_file
from relay_support import ECHO_SCRIPT, ENDPOINT, HOST, REPO, free_port, relay_command

DEPLOY = REPO / "deploy"


@pytest.fixture
def notify_socket(tmp_path):
    """A unix datagram socket like systemd's; yields (socket, address for NOTIFY_SOCKET)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)
        yield sock, str(path)


def messages(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_relay_notifies_ready_once_listening_and_stopping_on_drain(procs, notify_socket):
    sock, address = notify_socket
    port = free_port()
    relay = procs.start(
        [*relay_command(), "server", "--bind", HOST, str(port)],
        "relay",
        env={"NOTIFY_SOCKET": address},
    )
    ready = messages(sock)
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(relay.pid)
    assert str(port) in ready["STATUS"]
    socket.create_connection((HOST, port), timeout=5).close()  # listening when READY came
    relay.send_signal(signal.SIGTERM)
    assert messages(sock)["STOPPING"] == "1"
    assert relay.wait(10) == 0


def test_forwarder_notifies_ready_once_registered(procs, notify_socket):
    sock, address = notify_socket
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    _, relay_port = procs.relay()
    forwarder = procs.start(
        [*relay_command(), "forward", str(echo_port), f"{HOST}:{relay_port}"],
        "forwarder",
        env={"NOTIFY_SOCKET": address},
    )
    ready = messages(sock)
    assert ready["READY"] == "1"
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout", timeout=1)
    assert f"{HOST}:{match.group(1)}" in ready["STATUS"]


def test_abstract_notify_socket(procs):
    name = f"relay-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        procs.start(
            [*relay_command(), "--bind", HOST, str(free_port())],
            "relay",
            env={"NOTIFY_SOCKET": "@" + name},
        )
        assert messages(sock)["READY"] == "1"


def test_no_notify_socket_is_fine(procs):
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    relay = procs.start([*relay_command(), "--bind", HOST, str(free_port())], "relay", env=env)
    relay.wait_line(r"Serving relay requests")
    assert "notify" not in relay.stderr_text


@pytest.mark.parametrize(
    ("unit", "example"),
    [("relay.service", "relay.toml"), ("relay-forward.service", "forward.toml")],
)
def test_systemd_units_command_lines_parse(unit, example):
    """ExecStart with this checkout's relay for /opt/relay's (test_install.py verifies the
    units as deploy/install.sh installs them)."""
    (exec_start,) = [
        line.split("=", 1)[1].split()
        for line in (DEPLOY / unit).read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert exec_start[0] == "/opt/relay/bin/relay"  # where deploy/install.sh puts it
    args = [
        str(DEPLOY / example) if arg.startswith("/etc/relay/") else arg for arg in exec_start[1:]
    ]
    parsed = subprocess.run(
        [*relay_command(), *args, "--help"], capture_output=True, text=True, timeout=30
    )
    assert parsed.returncode == 0, parsed.stderr


@pytest.mark.parametrize("example", ["relay.toml", "forward.toml"])
def test_deploy_config_examples_load(example):
    loaded = config_file.load(
        DEPLOY / example,
        common=option_names(COMMON),
        server=option_names(RELAY),
        forward=option_names(FORWARDER),
    )
    assert loaded.server or loaded.forward


def test_forwarder_ready_waits_for_every_service_even_one_registering_twice(
    notify_socket, monkeypatch, capsys
):
    sock, address = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    ready = ReadyWhenAllRegistered(2)
    ready("redis 127.0.0.1:7201")
    ready("redis 127.0.0.1:7201")  # reconnected before web registered once
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    sock.settimeout(5)
    ready("web 127.0.0.1:7202")
    first = messages(sock)
    assert first["READY"] == "1"
    assert (
        first["STATUS"] == "forwarding; public endpoints redis 127.0.0.1:7201, web 127.0.0.1:7202"
    )
    ready("web 127.0.0.1:7203")  # a later registration: only the status changes
    later = messages(sock)
    assert "READY" not in later
    assert later["STATUS"].endswith("redis 127.0.0.1:7201, web 127.0.0.1:7203")
    assert capsys.readouterr().out.splitlines() == [
        "redis 127.0.0.1:7201",
        "redis 127.0.0.1:7201",
        "web 127.0.0.1:7202",
        "web 127.0.0.1:7203",
    ]
