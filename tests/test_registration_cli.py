"""Registration v2 as a user runs it: the real ``relay`` program, relay and forwarder.

What the relay process allocates is read from /proc/PID (its listening sockets),
before and after each attempt.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import (
    PUBLIC_CLIENT,
    Certificates,
    ask_proxy_receiver,
    listening_ports,
    make_certificates,
    read_line,
    start_proxy_receiver,
)

from relay.client.forwarder import EXIT_REFUSED
from relay.wire.v2 import parse_challenge, response_line
from relay_support import (
    HOST,
    SERVING,
    Proc,
    Processes,
    echo_roundtrip,
    free_port,
    relay_command,
)

pytestmark = pytest.mark.e2e

SECRET = "a secret for the command line"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    require_program("openssl")
    return make_certificates(tmp_path_factory.mktemp("cli-certs"))


def test_seed_client_against_relay_with_secret(procs: Processes) -> None:
    relay, control = procs.relay("--secret", SECRET)
    before = listening_ports(relay.pid)
    assert before == {control}
    with socket.create_connection((HOST, control), timeout=10) as sock:
        line = read_line(sock)
        assert line.startswith(b"error: v2 needed: this relay requires registration v2")
        time.sleep(0.2)
        assert listening_ports(relay.pid) == before
    relay.wait_line(r"refusing registration from 127\.0\.0\.1:\d+: closed the connection")
    assert listening_ports(relay.pid) == before


def test_right_secret_registers_and_carries_traffic(procs: Processes, echo_port: int) -> None:
    relay, control = procs.relay("--secret", SECRET)
    _, public = procs.forwarder(control, echo_port, "--secret", SECRET)
    assert listening_ports(relay.pid) == {control, public}
    assert echo_roundtrip(public) == b"ping through the relay\n"


def test_secret_from_the_environment_and_a_file(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    _, control = procs.relay("--secret-file", str(secret_file))
    forwarder = procs.start(
        [*relay_command(), f"--localForwardPort={echo_port}", HOST, str(control)],
        "forwarder",
        env={"RELAY_SECRET": SECRET},
    )
    _, endpoint = forwarder.wait_line(r"^127\.0\.0\.1:(\d+)$", stream="stdout")
    assert echo_roundtrip(int(endpoint.group(1))) == b"ping through the relay\n"


def test_wrong_secret_forwarder_exits_non_zero_saying_so(procs: Processes) -> None:
    relay, control = procs.relay("--secret", SECRET)
    before = listening_ports(relay.pid)
    forwarder = procs.start_forwarder(
        control, 9, "--secret", "not the right one, but strong", "--no-reconnect"
    )
    assert forwarder.wait(15) == EXIT_REFUSED
    assert "the relay refused our secret: auth failed: wrong secret" in forwarder.stderr_text
    assert forwarder.stdout_text == ""
    assert listening_ports(relay.pid) == before
    relay.wait_line(r"refusing registration from 127\.0\.0\.1:\d+: auth failed: wrong secret")


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_require_v2_forwarder_exits_against_a_seed_relay(
    procs: Processes, echo_port: int, tmp_path: Path, how: str
) -> None:
    """--require-v2 (RELAY_REQUIRE_V2, require-v2 in [forward]): a relay without options
    (the seed protocol) is refused with a clear error; a relay with a secret is not."""
    _, seed = procs.relay()
    _, v2 = procs.relay("--secret", SECRET)
    config = tmp_path / "forward.toml"
    config.write_text("[forward]\nrequire-v2 = true\n")

    def forwarder(control: int) -> Proc:
        if how == "flag":  # the seed form; env and config: the subcommand
            return procs.start_forwarder(
                control, echo_port, "--require-v2", "--secret", SECRET, "--no-reconnect"
            )
        from_file = ["--config", str(config)] if how == "config" else []
        return procs.start(
            [
                *relay_command(),
                "forward",
                *from_file,
                "--no-reconnect",
                "--secret",
                SECRET,
                str(echo_port),
                f"{HOST}:{control}",
            ],
            "forwarder",
            env={"RELAY_REQUIRE_V2": "1"} if how == "env" else {},
        )

    refused = forwarder(seed)
    assert refused.wait(15) == EXIT_REFUSED
    assert "the relay did not offer registration v2 (it sent a port line" in refused.stderr_text
    assert refused.stdout_text == ""  # no endpoint announced
    served = forwarder(v2)
    _, endpoint = served.wait_line(r"^127\.0\.0\.1:(\d+)$", stream="stdout")
    assert echo_roundtrip(int(endpoint.group(1))) == b"ping through the relay\n"


def test_forwarder_without_secret_against_relay_with_one(procs: Processes) -> None:
    _, control = procs.relay("--secret", SECRET)
    forwarder = procs.start_forwarder(control, 9, "--no-reconnect")
    assert forwarder.wait(15) == EXIT_REFUSED
    assert "this relay requires a secret and none is configured" in forwarder.stderr_text


def test_replayed_exchange_is_refused_with_nothing_allocated(procs: Processes) -> None:
    relay, control = procs.relay("--secret", SECRET)
    with socket.create_connection((HOST, control), timeout=10) as sock:
        challenge = parse_challenge(read_line(sock).rstrip(b"\n"))
        recorded = response_line(challenge, secret=SECRET.encode(), name="recorded")
        sock.sendall(recorded)
        port = int(read_line(sock))
        assert listening_ports(relay.pid) == {control, port}
    relay.wait_line(r"session 1 .*ended")
    before = listening_ports(relay.pid)
    assert before == {control}
    with socket.create_connection((HOST, control), timeout=10) as sock:
        read_line(sock)  # a new challenge, with a new nonce
        sock.sendall(recorded)
        assert read_line(sock) == b"error: auth failed: wrong secret; refusal=permanent\n"
        assert sock.recv(100) == b""
    assert listening_ports(relay.pid) == before


def test_auth_file_names_the_client(procs: Processes, echo_port: int, tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text(
        '[clients.alice]\nsecret = "alice secret 1, strong enough"\n\n'
        '[clients.bob]\nsecret = "bob secret 22, strong enough"\n'
    )
    relay, control = procs.relay("--auth-file", str(auth))
    _, public = procs.forwarder(
        control, echo_port, "--client-name", "bob", "--secret", "bob secret 22, strong enough"
    )
    assert echo_roundtrip(public) == b"ping through the relay\n"
    relay.wait_line(rf"\(client bob\): public port {public}")
    refused = procs.start_forwarder(
        control,
        echo_port,
        "--client-name",
        "alice",
        "--secret",
        "bob secret 22, strong enough",
        "--no-reconnect",
    )
    assert refused.wait(15) == EXIT_REFUSED
    assert "unknown client or wrong secret" in refused.stderr_text


def test_tls_relay_and_forwarder(procs: Processes, echo_port: int, certs: Certificates) -> None:
    relay, control = procs.relay(
        "--secret", SECRET, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)
    )
    _, public = procs.forwarder(control, echo_port, "--secret", SECRET, "--tls-ca", str(certs.ca))
    assert echo_roundtrip(public) == b"ping through the relay\n"
    wrong_ca = procs.start_forwarder(
        control, echo_port, "--secret", SECRET, "--tls-ca", str(certs.other_ca), "--no-reconnect"
    )
    assert wrong_ca.wait(15) == 1
    assert "TLS certificate was not accepted" in wrong_ca.stderr_text
    wrong_name = procs.start_forwarder(
        control,
        echo_port,
        "--secret",
        SECRET,
        "--tls-ca",
        str(certs.ca),
        "--tls-server-name",
        "relay.example",
        "--no-reconnect",
    )
    assert wrong_name.wait(15) == 1
    assert "Hostname mismatch" in wrong_name.stderr_text
    _, by_name = procs.forwarder(
        control,
        echo_port,
        "--secret",
        SECRET,
        "--tls-ca",
        str(certs.ca),
        "--tls-server-name",
        "localhost",
    )
    assert echo_roundtrip(by_name) == b"ping through the relay\n"
    plaintext = procs.start_forwarder(
        control, echo_port, "--secret", SECRET, "--no-reconnect", "--connect-timeout", "2"
    )
    assert plaintext.wait(15) == 1
    assert listening_ports(relay.pid) == {control, public, by_name}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_forwarder_sends_proxy_protocol_to_nginx(
    version: str, procs: Processes, tmp_path: Path
) -> None:
    nginx = require_program("nginx")
    _, receiver = start_proxy_receiver(procs, "nginx", nginx, tmp_path)
    _, control = procs.relay("--secret", SECRET)
    _, public = procs.forwarder(control, receiver, "--secret", SECRET, "--proxy-protocol", version)
    said, source = ask_proxy_receiver("nginx", public)
    assert said == source
    assert said.startswith(PUBLIC_CLIENT + " ")


def test_help_shows_the_new_options() -> None:
    import subprocess

    text = subprocess.run(
        [*relay_command(), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for option in (
        "--secret",
        "RELAY_SECRET",
        "--secret-file",
        "--auth-file",
        "--tls-cert",
        "--tls-ca",
        "--tls-client-ca",
        "--proxy-protocol",
        "--require-v2",
        "RELAY_REQUIRE_V2",
    ):
        assert option in text


def test_clients_from_the_config_file(procs: Processes, echo_port: int, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        '[[server.clients]]\nname = "carol"\nsecret = "carol secret 333, strong enough"\n'
        'ports = "1024-65535"\n'
    )
    relay, control = procs.relay("--config", str(config))
    forwarder = procs.start(
        [
            *relay_command(),
            f"--localForwardPort={echo_port}",
            "--client-name",
            "carol",
            HOST,
            str(control),
        ],
        "forwarder",
        env={"RELAY_SECRET": "carol secret 333, strong enough"},
    )
    _, endpoint = forwarder.wait_line(r"^127\.0\.0\.1:(\d+)$", stream="stdout")
    assert echo_roundtrip(int(endpoint.group(1))) == b"ping through the relay\n"
    relay.wait_line(r"\(client carol\)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret", "password"], "too weak: about 38 bits"),
        (["--secret", "a long enough secret", "--secret-file", "x"], "not both"),
        (["--tls-cert", "/nonexistent.pem"], "no such file"),
        (["--tls-client-ca", "ca.pem"], "need --tls-cert"),
    ],
)
def test_bad_registration_options_are_usage_errors(args: list[str], message: str) -> None:
    import subprocess

    done = subprocess.run(
        [*relay_command(), "--bind", HOST, *args, "7000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_editing_the_auth_file_revokes_a_client_without_a_restart(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    auth = tmp_path / "auth.toml"
    alice = '[clients.alice]\nsecret = "alice secret 1, strong enough"\n'
    auth.write_text(alice + '\n[clients.bob]\nsecret = "bob secret 22, strong enough"\n')
    relay, control = procs.relay("--auth-file", str(auth))
    _, alice_public = procs.forwarder(
        control, echo_port, "--client-name", "alice", "--secret", "alice secret 1, strong enough"
    )
    bob, bob_public = procs.forwarder(
        control,
        echo_port,
        "--client-name",
        "bob",
        "--secret",
        "bob secret 22, strong enough",
        "--no-reconnect",
    )
    assert echo_roundtrip(bob_public) == b"ping through the relay\n"
    auth.write_text("# bob's secret leaked\n" + alice)
    assert bob.wait(15) == 1  # disconnected, and with --no-reconnect it exits
    relay.wait_line(r"access ended or changed for bob")
    relay.wait_line(rf"client bob was removed from the auth file; public port {bob_public} closed")
    assert bob_public not in listening_ports(relay.pid)
    assert echo_roundtrip(alice_public) == b"ping through the relay\n"
    again = procs.start_forwarder(
        control,
        echo_port,
        "--client-name",
        "bob",
        "--secret",
        "bob secret 22, strong enough",
        "--no-reconnect",
    )
    assert again.wait(15) == EXIT_REFUSED
    assert "unknown client or wrong secret" in again.stderr_text
    # A broken edit keeps the clients in force.
    auth.write_text("[clients.alice\n")
    relay.wait_line(r"auth file .*: .*the clients in force stay")
    _, alice_again = procs.forwarder(
        control, echo_port, "--client-name", "alice", "--secret", "alice secret 1, strong enough"
    )
    assert echo_roundtrip(alice_again) == b"ping through the relay\n"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_relay_out_of_file_descriptors_pauses_and_recovers(
    procs: Processes, echo_port: int, certs: Certificates, loop: str
) -> None:
    """A TLS relay accepts its control connections itself: when accept() fails (here
    RLIMIT_NOFILE 64 and 100 silent connections, no per-source limit) it says so once
    and pauses, and serves again once descriptors are free."""
    relay = procs.start(
        [
            "sh",
            "-c",
            'ulimit -n 64 && exec "$@"',
            "sh",
            *relay_command(),
            "--bind",
            HOST,
            "--event-loop",
            loop,
            "--tls-cert",
            str(certs.server_cert),
            "--tls-key",
            str(certs.server_key),
            "--max-pending-registrations-per-source",
            "0",
            str(free_port()),
        ],
        "relay",
    )
    _, match = relay.wait_line(SERVING)
    control = int(match.group(1))
    # From another address: their ends count as failed handshakes, which block that address.
    silent = [
        socket.create_connection((HOST, control), timeout=10, source_address=("127.0.0.2", 0))
        for _ in range(100)
    ]
    try:
        relay.wait_line(
            r"ERROR relay\.accept: cannot accept on the control port: Too many open files "
            r"\(EMFILE\); not accepting there for 0\.1 s at a time"
        )
    finally:
        for sock in silent:
            sock.close()
    _, public = procs.forwarder(control, echo_port, "--tls-ca", str(certs.ca))
    assert echo_roundtrip(public) == b"ping through the relay\n"
    assert relay.alive()
    relay.wait_line(r"accepting on the control port again: \d+ failed tries")
    assert relay.stderr_text.count("relay.accept") == 2  # one episode, two lines


def test_mutual_tls_from_the_command_line(
    procs: Processes, echo_port: int, certs: Certificates
) -> None:
    _, control = procs.relay(
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--tls-client-ca",
        str(certs.ca),
    )
    no_cert = procs.start_forwarder(control, echo_port, "--tls-ca", str(certs.ca), "--no-reconnect")
    assert no_cert.wait(15) == 1
    assert "client certificate" in no_cert.stderr_text
    _, public = procs.forwarder(
        control,
        echo_port,
        "--tls-ca",
        str(certs.ca),
        "--tls-cert",
        str(certs.client_cert),
        "--tls-key",
        str(certs.client_key),
    )
    assert echo_roundtrip(public) == b"ping through the relay\n"
