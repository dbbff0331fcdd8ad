"""Mistakes an operator makes in the first minutes, and messages that name the fix.

Real relay and forwarder processes; TLS with certificates made by openssl.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import make_certificates

from relay_support import HOST, SERVING, Processes, free_port, relay_command

SECRET = "the secret of alice, long enough"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*relay_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.e2e
def test_a_plaintext_forwarder_against_a_tls_relay_is_told_to_use_tls(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    """The relay answers a client that stays silent on its TLS port with a refusal line,
    before its handshake timeout (5 s) and long before the forwarder's connect timeout
    (30 s); the fix is the client's configuration, so the refusal is permanent (exit 78)."""
    require_program("openssl")
    certs = make_certificates(tmp_path)
    _, port = procs.relay("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    forwarder = procs.start_forwarder(port, echo_port, "--connect-timeout", "30")
    assert forwarder.wait(8) == 78
    assert "control port speaks TLS: connect with TLS (relay forward --tls" in (
        forwarder.stderr_text
    )


@pytest.mark.e2e
def test_a_missing_client_name_names_the_option(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    auth = tmp_path / "clients.toml"
    auth.write_text(f'[clients.alice]\nsecret = "{SECRET}"\n')
    _, port = procs.relay("--auth-file", str(auth))
    forwarder = procs.start_forwarder(port, echo_port, "--no-reconnect", "--secret", SECRET)
    assert forwarder.wait(15) == 78  # refused for good: the configuration needs the name
    assert "give our name in its auth file with --client-name" in forwarder.stderr_text


@pytest.mark.e2e
def test_a_second_forwarder_under_one_name_is_a_warning_with_both_addresses(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    auth = tmp_path / "clients.toml"
    auth.write_text(f'[clients.alice]\nsecret = "{SECRET}"\n')
    relay, port = procs.relay("--auth-file", str(auth))
    args = ("--client-name", "alice", "--secret", SECRET, "--name", "web")
    _, first = procs.forwarder(port, echo_port, *args)
    _, second = procs.forwarder(port, echo_port, *args)
    assert second != first
    _, match = relay.wait_line(
        r"WARNING relay.server: client 'alice' name 'web' is already registered from"
    )
    line = match.string
    peers = re.findall(r"\b127\.0\.0\.1:\d+\b", line.split(" peer=")[0])
    assert len(set(peers)) == 2, line
    assert f"(public port {first})" in line
    assert "two forwarders with one name?" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("port = 7100\n", "'port' belongs in [server]"),
        ('relay = "relay.example.com:7000"\n', "'relay' belongs in [forward]"),
        ("[server]\nlocal-port = 6379\n", "'server.local-port' belongs in [forward]"),
        ("state-dir = 'x'\n", "'state-dir' belongs in [server]"),
    ],
)
def test_a_key_in_the_wrong_table_names_the_table(
    tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(content)
    done = run("server", "--config", str(config), "7000")
    assert done.returncode == 2
    assert expected in done.stderr


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_usage_errors_follow_the_log_format_from_every_source(tmp_path: Path, source: str) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        'log-format = "json"\n[server]\nmax-sessions = 0\n'
        if source == "file"
        else "[server]\nmax-sessions = 0\n"
    )
    args = ["server", "--config", str(config), "7000"]
    if source == "flag":
        args[1:1] = ["--log-format", "json"]
    done = run(*args, env={"RELAY_LOG_FORMAT": "json"} if source == "env" else {})
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert "'--max-sessions'" in record["event"]
    assert str(config) in record["event"]


def test_the_start_line_says_what_protection_is_on(procs: Processes, tmp_path: Path) -> None:
    relay, _ = procs.relay()
    assert "(auth: none; tls: off; leases: in memory; protocol: seed)" in (
        relay.wait_line(SERVING)[1].string
    )
    secret = tmp_path / "relay.secret"
    secret.write_text(SECRET)
    port = free_port()
    state = tmp_path / "state"
    guarded = procs.start(
        [
            *relay_command(),
            *("server", "--bind", HOST, "--secret-file", str(secret)),
            *("--state-dir", str(state), "--log-format", "json", str(port)),
        ],
        "relay",
    )
    _, match = guarded.wait_line(r'"event": "Serving relay requests')
    record = json.loads(match.string)
    assert {k: record[k] for k in ("auth", "tls", "leases", "protocol")} == {
        "auth": "shared secret",
        "tls": "off",
        "leases": str(state),
        "protocol": "v2",
    }
