"""The Containerfile: built and run with podman, the relay and a forwarder in containers.

No image registry is reachable here, so the base image is made from Debian's packages
with mmdebstrap (as docs/operations.md says) and cached: as a podman image, and as a
tarball in ``$RELAY_TEST_CACHE`` (``~/.cache/relay-tests``) that a later run imports
instead of bootstrapping again. The image is built from the tracked sources and a
wheelhouse (``pip wheel`` from this machine's cache), run non-root with a read-only
root filesystem, its leases in a named volume and its secret a podman secret (the
forwarder finds its own as a credential, by name); a forwarder from the same image
registers through it and redis-benchmark traffic goes
through both. Everything the test makes is removed by name (the base image stays).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_program

from relay_support import HOST, REPO, Processes, free_port

pytestmark = pytest.mark.install

CONTAINERS_CONF = REPO / "interop" / "containers.conf"
BASE_IMAGE = "localhost/relay-test-base:bookworm-python3"
CACHE = Path(os.environ.get("RELAY_TEST_CACHE", Path.home() / ".cache" / "relay-tests"))
BASE_TARBALL = CACHE / "debian-bookworm-python3.tar"
MMDEBSTRAP = [
    "--variant=essential",
    "--include=python3-venv",
    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")),
    "bookworm",
]
"""Debian 12's essential packages and python3-venv, without docs (about 150 MB)."""
SERVICE_UID = 10001
SECRET = "a secret handed to the container as a file"


def podman(*args: str, timeout: float = 600, check: bool = True) -> str:
    """One podman command (runc, the project's containers.conf); its stdout."""
    done = subprocess.run(
        [require_program("podman"), "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout


def base_image(timings: dict[str, float]) -> str:
    """The Debian base image: podman's copy, else the cached tarball, else mmdebstrap."""
    started = time.monotonic()
    if (
        subprocess.run(
            ["podman", "image", "exists", BASE_IMAGE],
            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
            check=False,
        ).returncode
        == 0
    ):
        timings["base image (in podman)"] = time.monotonic() - started
        return BASE_IMAGE
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "base.lock", "w") as lock:  # another test run may be making it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not BASE_TARBALL.exists():
            # mmdebstrap picks its output format by the name: keep ".tar" at the end.
            partial = BASE_TARBALL.with_suffix(f".{os.getpid()}.tar")
            subprocess.run(
                [require_program("mmdebstrap"), *MMDEBSTRAP, str(partial)],
                check=True,
                capture_output=True,
                timeout=900,
            )
            partial.rename(BASE_TARBALL)
            timings["base tarball (mmdebstrap)"] = time.monotonic() - started
        podman("import", str(BASE_TARBALL), BASE_IMAGE)
    timings["base image (imported)"] = time.monotonic() - started
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The relay's image, built from the tracked sources and a wheelhouse."""
    require_program("podman")
    timings: dict[str, float] = {}
    base = base_image(timings)
    context = tmp_path_factory.mktemp("container-context")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if (REPO / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, context / name)
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--wheel-dir", str(context / "wheels"), ".[fast]"],
        cwd=context,
        check=True,
        capture_output=True,
        timeout=600,
    )
    subprocess.run(  # build dependencies, for pip's isolated build of the sources; and what
        # the image's older Python needs beside (redis wants async-timeout before 3.11.3)
        [
            *pip,
            *("download", "--dest", str(context / "wheels")),
            *("setuptools>=68", "wheel", "async-timeout>=4.0.3"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    timings["wheelhouse"] = time.monotonic() - started
    tag = f"localhost/relay-test:{os.getpid()}"
    started = time.monotonic()
    podman(
        *("build", "--pull=never", "--network=none", "--layers=false", "-q", "-t", tag),
        *("--build-arg", f"BASE={base}"),
        *("--build-arg", "PIP_OPTIONS=--no-index --find-links /src/wheels"),
        str(context),
    )
    timings["image build"] = time.monotonic() - started
    print("container image:", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag, check=False)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers, volumes and secrets a test made; removed by name after it."""
    made: list[str] = []
    yield made
    for kind, name in (item.split(":", 1) for item in reversed(made)):
        if kind == "container":
            podman("rm", "-f", "-t", "5", name, check=False)
        else:
            podman(kind, "rm", "-f" if kind == "volume" else "--", name, check=False)


def container_logs(name: str) -> str:
    done = subprocess.run(
        ["podman", "logs", name],
        capture_output=True,
        text=True,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        check=False,
    )
    return done.stdout + done.stderr


def wait_for_log(name: str, pattern: str, timeout: float = 60) -> re.Match[str]:
    """The first match of ``pattern`` in the container's output, once it is there."""
    deadline = time.monotonic() + timeout
    while (found := re.search(pattern, logs := container_logs(name))) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: no {pattern!r} within {timeout:g} s:\n{logs}")
        time.sleep(0.2)
    return found


@pytest.mark.e2e
def test_the_image_runs_relay_and_forwarder(
    image: str, containers: list[str], procs: Processes, tmp_path: Path
) -> None:
    redis_port = procs.redis(require_program("redis-server"))[1]
    tag = f"relay-test-{os.getpid()}"
    secret_file = tmp_path / "relay.secret"
    secret_file.write_text(SECRET + "\n")
    podman("secret", "create", tag, str(secret_file))
    containers.append(f"secret:{tag}")
    podman("volume", "create", tag)
    containers.append(f"volume:{tag}")
    port, metrics = free_port(), free_port()
    run = ("run", "-d", "--network=host", "--read-only", "--pull=never")
    secret = f"{tag},target=/run/credentials/secret-file,uid={SERVICE_UID},mode=0400"

    relay = f"{tag}-relay"
    containers.append(f"container:{relay}")
    podman(
        *run,
        *("--name", relay, "--secret", secret, "-v", f"{tag}:/var/lib/relay", image),
        *("server", "--secret-file", "/run/credentials/secret-file", "--bind", HOST),
        *("--metrics", f"{HOST}:{metrics}", str(port)),
    )
    start = json.loads(
        wait_for_log(relay, r'(?m)^\{.*"event": "Serving relay requests.*$').group(0)
    )
    assert (start["auth"], start["leases"]) == ("shared secret", "/var/lib/relay")

    forwarder = f"{tag}-forwarder"
    containers.append(f"container:{forwarder}")
    podman(
        *run,
        *("--name", forwarder, "--secret", secret, image),
        *("forward", "--service", f"cache={redis_port}", f"{HOST}:{port}"),
    )
    public = wait_for_log(forwarder, r"(?m)^127\.0\.0\.1:(\d+)$").group(1)  # its endpoint
    bench = subprocess.run(
        [
            *(require_program("redis-benchmark"), "-h", HOST, "-p", public, "-q"),
            *("-n", "2000", "-c", "10", "-t", "set,get"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert len(re.findall(r"requests per second", bench.stdout)) == 2, bench.stdout

    # Not root, a read-only root, the leases in the volume, the page and probes served.
    pid = podman("inspect", "--format", "{{.State.Pid}}", relay).strip()
    uids = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert int(uids.group(1)) == SERVICE_UID
    touched = subprocess.run(
        ["podman", "exec", relay, "/opt/relay/bin/python", "-c", "open('/x', 'w')"],
        capture_output=True,
        text=True,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        check=False,
    )
    assert "Read-only file system" in touched.stderr
    volume = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", tag).strip())
    assert (volume / "leases.sqlite3").stat().st_uid == SERVICE_UID
    page = subprocess.run(
        [
            require_program("curl"),
            "-sf",
            f"http://{HOST}:{metrics}/",
            f"http://{HOST}:{metrics}/readyz",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "<title>relay status</title>" in page
    assert page.endswith(f"ready: serving on port {port}\n")

    podman("stop", "-t", "20", forwarder, relay)  # SIGTERM: both drain and exit 0
    for name in (forwarder, relay):
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).strip() == "0"
