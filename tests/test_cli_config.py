"""Subcommands, RELAY_* environment variables and the TOML config file, as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess

import pytest

from relay_support import (
    ECHO_SCRIPT,
    ENDPOINT,
    HOST,
    SERVING,
    connection_refused,
    echo_roundtrip,
    free_port,
    relay_command,
    wait_until,
)


def run_relay(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*relay_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


LIMITS = r"at most (\d+) sessions of (\d+) connections each"


def relay_limits(procs, *args: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Start a relay with ``args`` and -v, and read the limits it logs that it runs with."""
    proc = procs.start([*relay_command(), *args, "-v"], "relay", env=env)
    _, match = proc.wait_line(LIMITS)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    return int(match.group(1)), int(match.group(2))


def test_subcommand_help_is_complete_and_shows_env_vars():
    server = run_relay("server", "--help")
    assert server.returncode == 0
    assert "Usage: relay server [OPTIONS] [PORT]" in server.stdout
    for text in (
        "--bind",
        "RELAY_BIND",
        "--port-range",
        "RELAY_PORT_RANGE",
        "--max-sessions",
        "--protocol",
        "--config",
        "RELAY_CONFIG",
        "--log-level",
        "--version",
    ):
        assert text in server.stdout, text
    assert "--reconnect" not in server.stdout  # a forwarder option
    forward = run_relay("forward", "--help")
    assert forward.returncode == 0
    assert "relay forward [OPTIONS] LOCAL_PORT HOST PORT" in forward.stdout
    assert "relay forward [OPTIONS] LOCAL_PORT HOST:PORT" in forward.stdout
    for text in (
        "--local-forward-host",
        "RELAY_LOCAL_FORWARD_HOST",
        "--no-reconnect",
        "RELAY_RECONNECT_DELAY",
        "--connect-timeout",
        "--keepalive-interval",
    ):
        assert text in forward.stdout, text
    assert "--port-range" not in forward.stdout
    top = run_relay("--help")
    assert "relay server [OPTIONS] PORT" in top.stdout
    assert "relay forward [OPTIONS] LOCAL_PORT HOST PORT" in top.stdout


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    done = run_relay(flag)
    assert done.returncode == 0
    assert done.stdout.startswith("relay ")
    assert "yamux-relay" in done.stdout


def test_env_bind_applies_to_the_seed_form(procs):
    """RELAY_BIND=127.0.0.1 relay PORT listens on 127.0.0.1 only (127.0.0.2 is refused)."""
    port = free_port()
    relay = procs.start([*relay_command(), str(port)], "relay", env={"RELAY_BIND": HOST})
    relay.wait_line(SERVING)
    with socket.create_connection((HOST, port), timeout=5):
        pass
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.2", port), timeout=5),
    ):
        pass


def test_precedence_flag_over_env_over_file_over_default(procs, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nbind = "127.0.0.1"\nmax-sessions = 3\nmax_connections = 7\n')
    env = {"RELAY_MAX_SESSIONS": "4"}
    assert relay_limits(
        procs, "server", "--config", str(config), "--max-sessions", "5", str(free_port()), env=env
    ) == (5, 7)
    assert relay_limits(procs, "server", "--config", str(config), str(free_port()), env=env) == (
        4,
        7,
    )
    assert relay_limits(procs, "--config", str(config), str(free_port())) == (3, 7)
    assert relay_limits(procs, "--bind", HOST, str(free_port())) == (100, 10000)
    # the file itself from the environment, its PORT argument from [server] port
    port = free_port()
    config.write_text(f'[server]\nbind = "127.0.0.1"\nport = {port}\nmax-sessions = 3\n')
    relay = procs.start([*relay_command(), "server"], "relay", env={"RELAY_CONFIG": str(config)})
    _, match = relay.wait_line(SERVING)
    assert int(match.group(1)) == port


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[server]\nbogus = 1\n", "unknown key server.'bogus'"),
        ("[server\n", "is not valid TOML"),
        ('[server]\nmax-sessions = "many"\n', "Invalid value for '--max-sessions' (in "),
        ('[forward]\nrelay = "h:1"\n[[forward.services]]\nname = "x"\n', "has no local-port"),
    ],
)
def test_config_file_errors_name_the_file_and_key(tmp_path, content, expected):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    mode = "forward" if "forward" in content else "server"
    done = run_relay(mode, "--config", str(config), *(["7000"] if mode == "server" else []))
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_env_value_error_names_the_variable():
    done = run_relay("7000", env={"RELAY_PORT_RANGE": "6000-5000"})
    assert done.returncode == 2
    assert "'--port-range' (env var RELAY_PORT_RANGE)" in done.stderr


@pytest.mark.parametrize("relay_args", [["HOSTPORT"], ["HOST", "PORT"]])
def test_subcommands_relay_end_to_end(procs, relay_args):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    port = free_port()
    relay = procs.start([*relay_command(), "server", "--bind", HOST, str(port)], "relay")
    relay.wait_line(SERVING)
    where = {"HOSTPORT": f"{HOST}:{port}", "HOST": HOST, "PORT": str(port)}
    forwarder = procs.start(
        [*relay_command(), "forward", str(echo_port), *(where[a] for a in relay_args)], "forwarder"
    )
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout")
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"


def test_forward_with_a_wrong_address_says_how_to_write_it():
    done = run_relay("forward", "6379", "relay.example.com")
    assert done.returncode == 2
    assert "relay forward 6379 relay.example.com 7000" in done.stderr


def test_config_file_forwards_several_services(procs, tmp_path):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    _, other_port = procs.script(ECHO_SCRIPT, "0", name="echo2")
    _, relay_port = procs.relay()
    config = tmp_path / "services.toml"
    config.write_text(
        f'[forward]\nrelay = "{HOST}:{relay_port}"\nreconnect-delay = 0.5\n'
        f'[[forward.services]]\nname = "one"\nlocal-port = {echo_port}\n'
        f'[[forward.services]]\nname = "two"\nlocal_port = {other_port}\n'
        f'local-host = "{HOST}"\n'
    )
    forwarder = procs.start([*relay_command(), "forward", "--config", str(config)], "forwarder")
    named = re.compile(rf"^(one|two) {re.escape(HOST)}:(\d+)$")  # NAME HOST:PORT each
    first, _ = forwarder.wait_line(named, stream="stdout")
    index, _ = forwarder.wait_line(named, stream="stdout", after=first + 1)
    lines = dict(named.match(line).groups() for line in forwarder.stdout[: index + 1])
    assert sorted(lines) == ["one", "two"]
    ports = [int(port) for port in lines.values()]
    assert len(set(ports)) == 2
    for public_port in ports:
        assert echo_roundtrip(public_port) == b"ping through the relay\n"
    forwarder.send_signal(signal.SIGTERM)
    assert forwarder.wait(10) == 0
    wait_until(lambda: all(connection_refused(p) for p in ports), timeout=10)


def test_closed_stdout_is_logged_and_the_forwarder_goes_on(procs, tmp_path):
    """``relay forward ... | head -1``: after the reader is gone, reconnects still work."""
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay()
    log = tmp_path / "forwarder.log"
    with log.open("w") as stderr:
        forwarder = subprocess.Popen(
            [
                *relay_command(),
                "forward",
                "--reconnect-delay",
                "0.2",
                str(echo_port),
                f"{HOST}:{relay_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    try:
        first = forwarder.stdout.readline().strip()  # what head -1 reads
        forwarder.stdout.close()  # ... and then head exits
        assert ENDPOINT.match(first)
        relay.send_signal(signal.SIGINT)  # the relay restarts: the forwarder prints again
        relay.wait(10)
        relay, _ = procs.relay(port=relay_port)
        wait_until(lambda: "cannot print the endpoint to stdout" in log.read_text(), timeout=15)
        wait_until(lambda: log.read_text().count("public endpoint") >= 2, timeout=15)
        endpoint = log.read_text().rsplit("public endpoint ", 1)[1].split()[0]
        assert echo_roundtrip(int(endpoint.rsplit(":", 1)[1])) == b"ping through the relay\n"
        assert forwarder.poll() is None
    finally:
        forwarder.send_signal(signal.SIGTERM)
        assert forwarder.wait(10) == 0
    assert "Traceback" not in log.read_text()


def test_config_file_service_asks_for_its_public_port(procs, tmp_path):
    """A [[forward.services]] remote-port is requested from a v2 relay (a secret)."""
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    secret = "config-file-secret, strong enough"
    relay, relay_port = procs.relay("--secret", secret)
    wanted = free_port()
    config = tmp_path / "services.toml"
    config.write_text(
        f'[forward]\nrelay = "{HOST}:{relay_port}"\nsecret = "{secret}"\n'
        f'[[forward.services]]\nname = "echo"\nlocal-port = {echo_port}\n'
        f"remote-port = {wanted}\n"
    )
    forwarder = procs.start([*relay_command(), "forward", "--config", str(config)], "forwarder")
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout")
    assert int(match.group(1)) == wanted
    assert echo_roundtrip(wanted) == b"ping through the relay\n"
    relay.wait_line(r"client echo")


def test_local_port_argument_with_the_relay_from_the_file(procs, tmp_path):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    _, relay_port = procs.relay()
    config = tmp_path / "forward.toml"
    config.write_text(f'[forward]\nrelay = "{HOST}:{relay_port}"\n')
    forwarder = procs.start(
        [*relay_command(), "forward", "--config", str(config), str(echo_port)], "forwarder"
    )
    _, match = forwarder.wait_line(ENDPOINT, stream="stdout")
    assert echo_roundtrip(int(match.group(1))) == b"ping through the relay\n"
