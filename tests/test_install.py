"""deploy/install.sh and the units it installs, run the way systemd runs them.

The install recipe builds a wheel of this repository and installs it into a virtual
environment (Debian's own python3, as on a fresh machine); ``systemd-analyze verify``
checks the installed units; then the relay and a forwarder run as their units say
(``unit_support``: an unprivileged user, ``/`` as working directory, a read-only tree
but the state directory, the secret as a credential, READY over sd_notify), with
redis-benchmark traffic through them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_program
from unit_support import Sandbox, Unit, require_root, start_unit

from relay_support import HOST, REPO, Processes, free_port, free_port_block

pytestmark = pytest.mark.install

DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """``deploy/install.sh`` into a fresh root (PREFIX, CONFIG_DIR, UNIT_DIR under it),
    which the service user can traverse."""
    require_root()
    if not DEBIAN_PYTHON.exists():
        pytest.fail(f"{DEBIAN_PYTHON} is missing (Debian's python3)")
    root = Path(tempfile.mkdtemp(prefix="relay-install-"))
    root.chmod(0o755)
    try:
        done = subprocess.run(
            ["bash", str(REPO / "deploy" / "install.sh")],
            env={
                **os.environ,
                "PREFIX": str(root / "opt" / "relay"),
                "CONFIG_DIR": str(root / "etc" / "relay"),
                "UNIT_DIR": str(root / "units"),
                "PYTHON": str(DEBIAN_PYTHON),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.match(r"relay \S+ \(yamux-relay, Python 3", done.stdout), done.stdout
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_puts_everything_in_place(installed: Path) -> None:
    etc = installed / "etc" / "relay"
    secret = etc / "relay.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", secret.read_text())  # 256 bits
    assert (etc / "relay.toml").read_text() == (REPO / "deploy" / "relay.toml").read_text()
    relay = installed / "opt" / "relay" / "bin" / "relay"
    assert os.path.realpath(installed / "opt" / "relay" / "bin" / "python").startswith("/usr/")
    assert Unit.read(installed / "units" / "relay.service").exec_start[:2] == [
        str(relay),
        "server",
    ]


@pytest.mark.parametrize("unit", ["relay.service", "relay-forward.service"])
def test_installed_units_verify(installed: Path, unit: str) -> None:
    analyze = require_program("systemd-analyze")
    done = subprocess.run(
        [analyze, "verify", str(installed / "units" / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert unit not in done.stderr, done.stderr  # not even a warning about ours


def probe(endpoint: str, path: str) -> int:
    with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=5) as response:
        return int(response.status)


@pytest.mark.e2e
def test_relay_and_forwarder_run_as_their_units_do(procs: Processes, installed: Path) -> None:
    redis_port = procs.redis(require_program("redis-server"))[1]
    etc = installed / "etc" / "relay"
    port, metrics = free_port(), free_port()
    low, high = free_port_block(10)
    # What an operator edits after installing: addresses and ports.
    relay_toml = (etc / "relay.toml").read_text()
    relay_toml = relay_toml.replace("port = 7000", f'port = {port}\nbind = "{HOST}"')
    relay_toml = relay_toml.replace('"20000-20999"', f'"{low}-{high}"')
    (etc / "relay.toml").write_text(relay_toml.replace("127.0.0.1:9100", f"{HOST}:{metrics}"))
    forward_toml = (etc / "forward.toml").read_text()
    forward_toml = forward_toml.replace("relay.example.com:7000", f"{HOST}:{port}")
    forward_toml = forward_toml.replace("local-port = 6379", f"local-port = {redis_port}")
    (etc / "forward.toml").write_text(forward_toml.replace("127.0.0.1:9101", f"{HOST}:0"))

    forwarder_box = Sandbox(installed, "relay-forward")
    relay_box = Sandbox(installed, "relay")
    try:
        # The forwarder first: no READY while the relay cannot be reached, and the log says why.
        forwarder = start_unit(
            procs, Unit.read(installed / "units" / "relay-forward.service"), forwarder_box, "fwd"
        )
        forwarder.wait_line(rf'"cannot register (\S+ )?with the relay at {HOST}:{port}: .*refused')
        relay = start_unit(
            procs, Unit.read(installed / "units" / "relay.service"), relay_box, "relay"
        )
        ready = relay_box.messages()
        assert ready["READY"] == "1"
        assert str(port) in ready["STATUS"]
        state = installed / "var" / "lib" / "relay"
        start_line = relay.wait_line(r'"event": "Serving relay requests')[1].string
        assert '"auth": "shared secret"' in start_line
        assert f'"leases": "{state}"' in start_line
        assert (state / "leases.sqlite3").stat().st_uid == 65534  # written by nobody
        assert probe(f"{HOST}:{metrics}", "/readyz") == 200

        ready = forwarder_box.messages()
        assert ready["READY"] == "1"
        public = int(re.search(r":(\d+)$", ready["STATUS"]).group(1))
        assert low <= public <= high
        assert forwarder.wait_line(r"^127\.0\.0\.1:(\d+)$", stream="stdout")[1].group(1) == str(
            public
        )
        bench = subprocess.run(
            [
                *(require_program("redis-benchmark"), "-h", HOST, "-p", str(public), "-q"),
                *("-n", "2000", "-c", "10", "-t", "set,get"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bench.returncode == 0, bench.stdout + bench.stderr
        assert len(re.findall(r"requests per second", bench.stdout)) == 2, bench.stdout

        for proc, box in ((forwarder, forwarder_box), (relay, relay_box)):
            proc.send_signal(signal.SIGTERM)
            assert box.messages()["STOPPING"] == "1"
            assert proc.wait(30) == 0
        assert "Read-only file system" not in relay.stderr_text + forwarder.stderr_text
    finally:
        forwarder_box.close()
        relay_box.close()
