"""The bench's processes: started in their own process group, logged, always stopped.

Every program the bench runs (Go relay and forwarder, the project's relay, the
load generator, echo and redis servers, iperf3, link emulators) is a
``testkit.procs.Proc`` in the one group ``PROCS``, with RLIMIT_NOFILE raised and
its output in the log directory; ``stop_all()`` (also at exit and on
SIGTERM/SIGHUP/Ctrl-C) ends every one of them.
"""

from __future__ import annotations

import contextlib
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from testkit import gobuild
from testkit.procs import Proc, ProcessError, ProcGroup, Stream

REPO: Final = Path(__file__).resolve().parent.parent
BUILD_DIR: Final = gobuild.BUILD_DIR
GO_PROGRAMS: Final = ("go-relay", "go-forwarder", "loadgen", "echo-server", "echo-peer")
HOST: Final = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A run could not be done (a process did not start, died, or timed out)."""


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


PROCS = ProcGroup(new_session=True, more_files=True)
"""Every process of the bench (in its own process group, descriptors raised); stop_all ends them."""


def start(
    name: str,
    argv: Sequence[str],
    logdir: Path,
    *,
    env: dict[str, str] | None = None,
    stdin: bool = False,
    cwd: Path = REPO,
) -> Proc:
    return PROCS.start(argv, name, env=env, stdin=stdin, log_dir=logdir, cwd=cwd)


def stop(proc: Proc) -> None:
    """SIGTERM the process group, SIGKILL it after 3 s."""
    PROCS.stop(proc, grace=3.0)


def stop_all() -> None:
    with contextlib.suppress(Exception):
        PROCS.close(grace=3.0)


def wait_for(proc: Proc, pattern: str, timeout: float, stream: Stream = "stdout") -> re.Match[str]:
    try:
        return proc.wait_line(pattern, stream=stream, timeout=timeout)[1]
    except ProcessError:
        raise BenchError(
            f"{proc.name} printed no /{pattern}/ within {timeout:g} s "
            f"(exit status {proc.returncode}): {proc.tail()}"
        ) from None


def run_to_end(proc: Proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{proc.name} still running after {timeout:g} s: {proc.tail()}") from None


def build_go() -> None:
    if shutil.which("go") is None:
        missing = [p for p in GO_PROGRAMS if not (BUILD_DIR / p).exists()]
        if missing:
            raise BenchError(
                f"`go` not found and {', '.join(missing)} not built "
                "(apt-get install golang-go golang-github-hashicorp-yamux-dev)"
            )
        log("`go` not found; using the programs already in interop/build/")
        return
    try:
        took = gobuild.build_go(BUILD_DIR)
    except gobuild.GoBuildError as exc:
        raise BenchError(str(exc)) from None
    log(f"Go programs built in {took:.1f} s")
