"""Where file options come from: paths in a config file are relative to the file, and
systemd's credentials ($CREDENTIALS_DIRECTORY) stand for the file options not given.

Real processes started with ``/`` as their working directory, as systemd starts them,
TLS with certificates made by openssl, and a real echo service behind the forwarder.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import make_certificates

from relay.options.sources import CREDENTIALS_DIRECTORY, credential_files, in_config_file
from relay_support import (
    HOST,
    SERVING,
    Processes,
    echo_roundtrip,
    free_port,
    relay_command,
)

SECRET = "a secret of forty characters, or nearly\n"


def localhost_endpoint(proc) -> int:  # type: ignore[no-untyped-def]
    _, match = proc.wait_line(r"^(?:echo )?localhost:(\d+)$", stream="stdout")
    return int(match.group(1))


def test_every_path_option_of_a_config_file_is_relative_to_it() -> None:
    values = {
        "secret_file": "relay.secret",
        "tls_cert": "tls/relay.pem",
        "tls_key": "/etc/ssl/private/relay.key",
        "tls_ca": "ca.pem",
        "tls_client_ca": "../ca.pem",
        "auth_file": "clients.toml",
        "state_dir": "state",
        "bind": "relative-looking.example",
        "metrics": ("127.0.0.1", 9100),
    }
    resolved = in_config_file(values, Path("/etc/relay"))
    assert resolved == {
        **values,
        "secret_file": "/etc/relay/relay.secret",
        "tls_cert": "/etc/relay/tls/relay.pem",
        "tls_ca": "/etc/relay/ca.pem",
        "tls_client_ca": "/etc/relay/../ca.pem",
        "auth_file": "/etc/relay/clients.toml",
        "state_dir": "/etc/relay/state",
    }


def test_credentials_stand_only_for_file_options_not_given(tmp_path: Path) -> None:
    for name in ("secret-file", "tls-cert", "tls-key", "state-dir", "unrelated"):
        (tmp_path / name).write_text("x")
    env = {CREDENTIALS_DIRECTORY: str(tmp_path)}
    names = {"secret", "secret_file", "tls_cert", "tls_key", "state_dir", "auth_file"}
    assert credential_files(names, set(), env) == {
        "secret_file": str(tmp_path / "secret-file"),
        "tls_cert": str(tmp_path / "tls-cert"),
        "tls_key": str(tmp_path / "tls-key"),
    }
    # Given some other way (flag, RELAY_*, config file), or stood for by --secret: not used.
    assert credential_files(names, {"secret", "tls_cert"}, env) == {
        "tls_key": str(tmp_path / "tls-key")
    }
    assert credential_files(names, set(), {}) == {}


@pytest.mark.e2e
def test_a_relay_and_forwarder_configured_by_files_run_from_the_root(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    """Every path in both files is relative; both processes run with ``/`` as working
    directory, as under systemd: TLS, an auth file, a state dir, a secret file."""
    require_program("openssl")
    etc = tmp_path / "etc"
    (etc / "tls").mkdir(parents=True)
    certs = make_certificates(etc / "tls")
    (etc / "alice.secret").write_text(SECRET)
    (etc / "clients.toml").write_text('[clients.alice]\nsecret_file = "alice.secret"\n')
    port = free_port()
    (etc / "relay.toml").write_text(
        f'[server]\nport = {port}\nbind = "{HOST}"\nauth-file = "clients.toml"\n'
        f'tls-cert = "tls/{certs.server_cert.name}"\ntls-key = "tls/{certs.server_key.name}"\n'
        f'state-dir = "state"\n'
    )
    relay = procs.start(
        [*relay_command(), "server", "--config", str(etc / "relay.toml")], "relay", cwd="/"
    )
    line = relay.wait_line(SERVING)[1].string
    assert "auth: 1 named client (auth file" in line
    assert "tls: on" in line
    assert f"leases: {etc / 'state'}" in line
    assert (etc / "state" / "leases.sqlite3").exists()

    home = tmp_path / "forwarder"
    home.mkdir()
    (home / "ca.pem").write_bytes(certs.ca.read_bytes())
    (home / "alice.secret").write_text(SECRET)
    (home / "forward.toml").write_text(
        'secret-file = "alice.secret"\n'
        f'[forward]\nrelay = "localhost:{port}"\nclient-name = "alice"\ntls-ca = "ca.pem"\n'
        f'[[forward.services]]\nname = "echo"\nlocal-port = {echo_port}\n'
    )
    forwarder = procs.start(
        [*relay_command(), "forward", "--config", str(home / "forward.toml")], "forwarder", cwd="/"
    )
    assert echo_roundtrip(localhost_endpoint(forwarder)) == b"ping through the relay\n"
    assert "client=alice" in relay.stderr_text


@pytest.mark.e2e
def test_systemd_credentials_are_the_secret_and_tls_files(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    """LoadCredential=secret-file:... and tls-cert/tls-key on the relay, secret-file and
    tls-ca on the forwarder: no option names a file."""
    require_program("openssl")
    certs = make_certificates(tmp_path)
    relay_creds, forwarder_creds = tmp_path / "relay-creds", tmp_path / "forwarder-creds"
    for directory, files in (
        (relay_creds, {"tls-cert": certs.server_cert, "tls-key": certs.server_key}),
        (forwarder_creds, {"tls-ca": certs.ca}),
    ):
        directory.mkdir(mode=0o700)
        (directory / "secret-file").write_text(SECRET)
        for name, source in files.items():
            (directory / name).write_bytes(source.read_bytes())
    port = free_port()
    relay = procs.start(
        [*relay_command(), "server", "--bind", HOST, str(port)],
        "relay",
        cwd="/",
        env={CREDENTIALS_DIRECTORY: str(relay_creds)},
    )
    line = relay.wait_line(SERVING)[1].string
    assert "auth: shared secret; tls: on" in line
    forwarder = procs.start(
        [*relay_command(), "forward", str(echo_port), f"localhost:{port}"],
        "forwarder",
        cwd="/",
        env={CREDENTIALS_DIRECTORY: str(forwarder_creds)},
    )
    assert echo_roundtrip(localhost_endpoint(forwarder)) == b"ping through the relay\n"

    # A bad credential is a usage error that says where the value came from.
    (forwarder_creds / "secret-file").write_text("short\n")
    done = subprocess.run(
        [*relay_command(), "forward", "--no-reconnect", str(echo_port), f"localhost:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, CREDENTIALS_DIRECTORY: str(forwarder_creds)},
    )
    assert done.returncode == 2
    assert re.search(
        r"Invalid value for '--secret-file' \(systemd credential .*forwarder-creds/secret-file\)"
        r".*too weak: .*at least 128",
        done.stderr.replace("\n", " "),
    ), done.stderr
