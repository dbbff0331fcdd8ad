"""The yamux families the interop scenarios run against, and how to start each one's peer.

Every family's peer takes the Go ``yamux-peer`` command line (SCENARIOS.md, "Go peer command
line") and prints the same ``OK``/``FAIL`` lines, so ``py_peer.run_against`` drives them all:

* ``go``: hashicorp/yamux from Debian 12 (2019 snapshot), in a podman container (harness.py);
* ``js``: ``@chainsafe/libp2p-yamux`` 8.0.1 on Node 20 (interop/js/, pinned by package-lock.json);
* ``libp2p``: py-libp2p 0.8.1's trio yamux, in its own venv (interop/libp2p/, interop/.venv-libp2p).

scripts/install-test-deps.sh installs all three. Missing tools: a reason to skip outside CI, a
:class:`harness.HarnessError` under ``CI=true`` (never a skip there).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import harness
from .harness import GoProcess, HarnessError, LocalProcess

JS_DIR: Final = harness.INTEROP_DIR / "js"
LIBP2P_DIR: Final = harness.INTEROP_DIR / "libp2p"
LIBP2P_VENV: Final = harness.INTEROP_DIR / ".venv-libp2p"
NODE_FALLBACK: Final = harness.INTEROP_DIR / ".node" / "node_modules" / ".bin" / "node"
"""Node 20 from the npm registry, installed where the distribution's node is older."""
INSTALL_HINT: Final = "run scripts/install-test-deps.sh"


@dataclass(frozen=True)
class Family:
    """One yamux implementation: what it is, whether it is installed, how to start its peer."""

    name: str
    description: str
    missing: Callable[[], str | None]
    """None when the peer can run, else what is missing."""
    command: Callable[[list[str]], list[str]] | None
    """argv of a local peer process for yamux-peer arguments (None: the Go container)."""

    def unavailable_reason(self) -> str | None:
        """None if the peer can run; else why not (raises HarnessError under CI=true)."""
        if self.command is None:
            return harness.unavailable_reason()
        problem = self.missing()
        if problem is None:
            return None
        reason = f"{self.description}: {problem} -- {INSTALL_HINT}"
        if harness.in_ci():
            raise HarnessError(f"CI=true but an interop peer is missing: {reason}")
        return reason

    def start_peer(
        self, role: str, addr: str, scenario: str, **knobs: object
    ) -> GoProcess | LocalProcess:
        """Start this family's peer, dialing ``addr`` in yamux ``role`` ("client" = active)."""
        if self.command is None:
            return harness.start_peer(role, addr, scenario, **knobs)
        args = harness.peer_args(role, addr, scenario, **knobs)
        return LocalProcess(f"{self.name}-peer", self.command(args), args)


def _node_version(node: str) -> int:
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
        return int(done.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError):
        return 0


def node() -> str:
    """The node to run: the system's if it is >= 20, else interop/.node's (npm's node@20)."""
    system = shutil.which("node")
    if system is not None and _node_version(system) >= 20:
        return system
    return str(NODE_FALLBACK) if NODE_FALLBACK.exists() else (system or "node")


def _js_missing() -> str | None:
    if _node_version(node()) < 20:
        return "Node.js 20 or newer is needed (apt-get install nodejs npm; npm's node@20)"
    if not (JS_DIR / "node_modules" / "@chainsafe" / "libp2p-yamux").is_dir():
        return f"{JS_DIR}/node_modules is not installed (npm ci)"
    return None


def _libp2p_python() -> Path:
    return LIBP2P_VENV / "bin" / "python"


def _libp2p_missing() -> str | None:
    python = _libp2p_python()
    if not python.exists():
        return f"{LIBP2P_VENV} is missing"
    done = subprocess.run(
        [str(python), "-c", "import libp2p.stream_muxer.yamux.yamux"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"py-libp2p does not import in {LIBP2P_VENV}: {done.stderr.strip()[-300:]}"
    return None


FAMILIES: Final = {
    "go": Family("go", "hashicorp/yamux (Debian 12, Go)", lambda: None, None),
    "js": Family(
        "js",
        "@chainsafe/libp2p-yamux 8.0.1 (Node.js)",
        _js_missing,
        lambda args: [node(), str(JS_DIR / "yamux-peer.mjs"), *args],
    ),
    "libp2p": Family(
        "libp2p",
        "py-libp2p 0.8.1 yamux (trio)",
        _libp2p_missing,
        lambda args: [str(_libp2p_python()), str(LIBP2P_DIR / "yamux_peer.py"), *args],
    ),
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown yamux family {name!r}; one of {sorted(FAMILIES)}") from None


if __name__ == "__main__":
    for fam in FAMILIES.values():
        print(f"{fam.name:7s} {fam.description}: {fam.unavailable_reason() or 'ready'}")
    sys.exit(0)
