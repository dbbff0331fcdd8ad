"""Build the Go programs of interop/go (peers, relay, forwarders, loadgen, echo servers) once.

One build for tests, interop and bench: ``interop/build.sh`` in GOPATH mode against
Debian's hashicorp/yamux (nothing downloaded), into ``interop/build/``, under an
flock on ``interop/build/.lock`` so parallel processes never write the same
binary at once. Go's build cache makes an unchanged rebuild take a fraction of a
second, so every process simply builds on first use.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
BUILD_DIR: Final = REPO / "interop" / "build"
BUILD_SCRIPT: Final = REPO / "interop" / "build.sh"
YAMUX_SRC: Final = Path("/usr/share/gocode/src/github.com/hashicorp/yamux")
PROGRAMS: Final = (
    "yamux-peer",
    "go-relay",
    "go-forwarder",
    "loadgen",
    "echo-server",
    "echo-peer",
)


class GoBuildError(RuntimeError):
    """The Go programs cannot be built (tools missing or the build failed)."""


_lock = threading.Lock()
_built: dict[Path, float] = {}


def missing_tools() -> list[str]:
    """What the build needs and this machine lacks, each with its Debian package."""
    problems = []
    if shutil.which("go") is None:
        problems.append("`go` not found (apt-get install golang-go)")
    if not YAMUX_SRC.is_dir():
        problems.append(f"{YAMUX_SRC} missing (apt-get install golang-github-hashicorp-yamux-dev)")
    return problems


def build_go(build_dir: Path = BUILD_DIR) -> float:
    """Build every program into ``build_dir`` (once per process); return the seconds it took.

    Raises GoBuildError with the tool's message when it cannot.
    """
    with _lock:
        if build_dir in _built:
            return 0.0
        problems = missing_tools()
        if problems:
            raise GoBuildError("cannot build the Go programs: " + "; ".join(problems))
        build_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(build_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            proc = subprocess.run(
                ["bash", str(BUILD_SCRIPT), str(build_dir)],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise GoBuildError(f"interop/build.sh failed ({proc.returncode}):\n{proc.stderr}")
        _built[build_dir] = took = time.monotonic() - t0
        return took


def program(name: str, build_dir: Path = BUILD_DIR) -> Path:
    """Path of one built program (call build_go first)."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown Go program {name!r}; one of {PROGRAMS}")
    return build_dir / name
