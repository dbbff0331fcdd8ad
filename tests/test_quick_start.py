"""The README's quick start, verbatim, in a fresh clone of this repository.

Its first command (apt-get, a virtual environment, a secret in a 0600 file, the relay
in the foreground on port 7000) really runs; a forwarder and redis-cli then follow the
README's third block (with the relay's host and the service's port changed). The
second command is the one .ci/run runs (test_docs.py); running it here would run
this suite inside itself. ``pipx install .``, the README's other way to get ``relay``
on PATH, is run too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_program

from relay_support import HOST, REPO, Processes

pytestmark = pytest.mark.install

README = REPO / "README.md"
PORT = 7000
"""The README's control port: the command runs verbatim."""


def quick_start_blocks() -> list[str]:
    section = README.read_text().split("\n## ", 2)[1]
    return re.findall(r"```(?:sh|console)\n(.*?)\n```", section, re.S)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh clone of this repository (its committed HEAD)."""
    git = require_program("git")
    where = tmp_path_factory.mktemp("quick-start") / "relay"
    subprocess.run(
        [git, "clone", "--quiet", str(REPO), str(where)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    yield where
    shutil.rmtree(where, ignore_errors=True)


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


@pytest.mark.e2e
def test_the_readme_quick_start_runs_verbatim(procs: Processes, clone: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the quick start is written for root (apt-get)")
    if port_taken(PORT):
        pytest.fail(f"port {PORT} is in use: the README's command needs it")
    first, second, third = quick_start_blocks()[:3]
    assert second == "bash scripts/install-test-deps.sh && .venv/bin/python -m pytest"
    relay = procs.start(["bash", "-c", first], "quick-start", cwd=clone, new_session=True)
    relay.wait_line(rf"Serving relay requests on port {PORT} \(auth: shared secret", timeout=600)

    secret = clone / "relay.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    value = secret.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert value not in processes  # never on a command line
    untracked = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    )
    assert untracked.stdout == ""  # relay.secret, .venv and the build are ignored

    # The forwarder as the README shows it, from the activated venv (relay on PATH).
    redis_port = procs.redis(require_program("redis-server"))[1]
    lines = [line[2:] for line in third.splitlines() if line.startswith("$ ")]
    forward, ping = (shlex.split(line) for line in lines)
    assert forward[:2] == ["relay", "--localForwardPort=6379"]
    forward[1] = f"--localForwardPort={redis_port}"
    forward[forward.index("relay.example.com")] = HOST
    forwarder = procs.start(
        ["bash", "-c", ". .venv/bin/activate && exec " + shlex.join(forward)],
        "forwarder",
        cwd=clone,
    )
    public = forwarder.wait_line(rf"^{re.escape(HOST)}:(\d+)$", stream="stdout")[1].group(1)
    assert ping[:3] == ["redis-cli", "-h", "relay.example.com"]
    ping[0], ping[2], ping[4] = require_program("redis-cli"), HOST, public
    assert subprocess.run(ping, capture_output=True, text=True, timeout=30).stdout == "PONG\n"


@pytest.mark.e2e
def test_pipx_install_puts_relay_on_path(clone: Path, tmp_path: Path) -> None:
    pipx = require_program("pipx")
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [pipx, "install", "."], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version = subprocess.run(
        ["relay", "--version"],
        env={**env, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("relay 0.")
