"""The auth file edited while the relay runs, with real relay and forwarder processes.

Deleted, emptied or without clients, it revokes everyone: sessions are cut
and the forwarders, refused for good on their next try, exit 78. An edit that
does not parse keeps the clients in force, logged at ERROR once per change,
and shows in /status and relay_auth_file_ok; within a file that parses, one
bad client table keeps that client's previous entry while the rest (a removed
client) takes effect. A client's secret file is watched too.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from registration_support import listening_ports

from relay.client.forwarder import EXIT_REFUSED
from relay_support import HOST, Proc, Processes, echo_roundtrip, wait_until

pytestmark = pytest.mark.e2e

ALICE = "alice: 6f0d3b9e2c71a845"
BOB = "bob: 1e9c4a7d5f208b36"
METRICS = r"metrics on http://([\d.]+:\d+)/metrics"


def table(name: str, secret: str, extra: str = "") -> str:
    return f'[clients.{name}]\nsecret = "{secret}"\n{extra}'


class Relay:
    """A relay process with an auth file and metrics, and its forwarders."""

    def __init__(self, procs: Processes, auth: Path, echo_port: int) -> None:
        self.procs = procs
        self.auth = auth
        self.echo_port = echo_port
        self.proc, self.control = procs.relay("--auth-file", str(auth), "--metrics", f"{HOST}:0")
        self.metrics = self.proc.wait_line(METRICS)[1].group(1)

    def forwarder(self, name: str, secret: str) -> tuple[Proc, int]:
        return self.procs.forwarder(
            self.control, self.echo_port, "--client-name", name, "--secret", secret
        )

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.metrics}/status", timeout=10) as response:
            return json.load(response)["auth_file"]

    def gauges(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("relay_auth_file_")
        }

    def errors(self, text: str) -> int:
        return sum(
            1 for line in self.proc.stderr_text.splitlines() if " ERROR " in line and text in line
        )


@pytest.fixture
def relay(procs: Processes, echo_port: int, tmp_path: Path) -> Relay:
    auth = tmp_path / "clients.toml"
    auth.write_text(table("alice", ALICE) + table("bob", BOB))
    return Relay(procs, auth, echo_port)


EMPTIED: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "deleted": (Path.unlink, "the file is gone", "the auth file is gone"),
    "emptied": (lambda p: p.write_text(""), "it names no clients", "names no clients"),
    "no-clients": (
        lambda p: p.write_text("# every client revoked\n[clients]\n"),
        "it names no clients",
        "names no clients",
    ),
}


@pytest.mark.parametrize("edit", EMPTIED)
def test_a_deleted_or_emptied_file_revokes_everyone(relay: Relay, edit: str) -> None:
    change, error, why = EMPTIED[edit]
    alice, alice_port = relay.forwarder("alice", ALICE)
    bob, bob_port = relay.forwarder("bob", BOB)
    assert relay.status()["ok"] is True
    change(relay.auth)
    # Cut, then refused for good on their next try: they stop.
    assert alice.wait(15) == EXIT_REFUSED
    assert bob.wait(15) == EXIT_REFUSED
    relay.proc.wait_line(rf" ERROR relay.auth: auth file .*: {error}: every client it named")
    relay.proc.wait_line(rf" WARNING .*cut, client alice was revoked: .*{why}")
    relay.proc.wait_line(rf" WARNING .*cut, client bob was revoked: .*{why}")
    assert alice_port not in listening_ports(relay.proc.pid)
    assert bob_port not in listening_ports(relay.proc.pid)
    status = relay.status()
    assert status["ok"] is False
    assert status["clients"] == 0
    assert error in status["error"]
    assert status["since"].endswith("Z")
    assert relay.gauges() == {"relay_auth_file_ok": 0.0, "relay_auth_file_clients": 0.0}
    relay.auth.write_text(table("alice", ALICE))  # back: alice may register again
    wait_until(lambda: relay.status()["ok"], 15)
    _, again = relay.forwarder("alice", ALICE)
    assert echo_roundtrip(again) == b"ping through the relay\n"
    assert relay.gauges() == {"relay_auth_file_ok": 1.0, "relay_auth_file_clients": 1.0}


def test_an_edit_that_does_not_parse_keeps_the_clients_and_says_so_once(relay: Relay) -> None:
    alice, alice_port = relay.forwarder("alice", ALICE)
    relay.auth.write_text("[clients.alice\n")
    relay.proc.wait_line(r" ERROR .*not valid TOML.*; the clients in force stay until it is fixed")
    status = relay.status()
    assert status["ok"] is False
    assert status["clients"] == 2
    assert "not valid TOML" in status["error"]
    assert relay.gauges() == {"relay_auth_file_ok": 0.0, "relay_auth_file_clients": 2.0}
    time.sleep(3)  # three more looks at the unchanged file: no more lines
    assert relay.errors("not valid TOML") == 1
    relay.auth.write_text(table("alice", ALICE) + "[servers]\n")  # another broken edit
    relay.proc.wait_line(r" ERROR .*unknown table\(s\) servers; the clients in force stay")
    assert relay.errors("the clients in force stay") == 2
    assert alice.alive
    assert echo_roundtrip(alice_port) == b"ping through the relay\n"
    relay.auth.write_text(table("alice", ALICE) + table("bob", BOB))
    relay.proc.wait_line(r"auth file .* is in force as written again")
    assert relay.status()["ok"] is True
    assert relay.status()["error"] is None


def test_a_removed_client_is_revoked_even_beside_a_typo(relay: Relay) -> None:
    """The operator removes bob and mistypes alice's ports: bob is revoked all the same;
    alice keeps her previous entry, and the ERROR says so."""
    alice, alice_port = relay.forwarder("alice", ALICE)
    bob, _ = relay.forwarder("bob", BOB)
    relay.auth.write_text(table("alice", ALICE, 'ports = "5000-"\n'))
    assert bob.wait(15) == EXIT_REFUSED
    relay.proc.wait_line(r"cut, client bob was removed from the auth file")
    relay.proc.wait_line(
        r" ERROR .*clients\.alice\.ports: .*; alice keeps its previous entry until it is fixed"
    )
    assert "unknown client or wrong secret" in bob.stderr_text
    assert alice.alive
    assert echo_roundtrip(alice_port) == b"ping through the relay\n"
    status = relay.status()
    assert status["ok"] is False
    assert status["clients"] == 1


def test_a_secret_file_edited_later_is_noticed(
    procs: Processes, echo_port: int, tmp_path: Path
) -> None:
    old, new = "bob's old secret: 4b8e1f6c", "bob's new secret: 9d2a7c05"
    secret_file = tmp_path / "bob.secret"
    secret_file.write_text(old + "\n")
    auth = tmp_path / "clients.toml"
    auth.write_text(table("alice", ALICE) + '[clients.bob]\nsecret_file = "bob.secret"\n')
    relay = Relay(procs, auth, echo_port)
    with_old, _ = relay.forwarder("bob", old)
    secret_file.write_text(new + "\n")  # rotated: the old secret no longer opens bob
    assert with_old.wait(15) == EXIT_REFUSED
    relay.proc.wait_line(r"cut, client bob had its secret or ports changed in the auth file")
    with_new, port = relay.forwarder("bob", new)
    assert echo_roundtrip(port) == b"ping through the relay\n"
    assert relay.status()["ok"] is True
    secret_file.unlink()  # bob's secret withdrawn
    assert with_new.wait(15) == EXIT_REFUSED
    relay.proc.wait_line(rf"cut, client bob lost its secret file {secret_file}")
    relay.proc.wait_line(rf" ERROR .*clients\.bob: secret file {secret_file} is gone or empty")
    assert relay.status()["ok"] is False
