"""Build and run the Go interop programs (yamux-peer, go-relay, go-forwarder).

Why this exists: the Python yamux must be checked against a real hashicorp/yamux
peer on the wire. The Go programs are built from Debian's packaged sources (no
downloads are possible), packed into a FROM-scratch image and run with podman,
so a test gets a reproducible, isolated peer whose output and exit status it can
inspect. Everything here is stdlib-only and synchronous (threads); the ``a*``
coroutine variants let asyncio tests wait without blocking their event loop,
which must keep serving the Python side of the scenario meanwhile.

Policy (see also interop/SCENARIOS.md):

* ``podman`` missing and ``CI`` is not ``"true"``: the binaries run directly on
  the host, with a warning.  ``RELAY_INTEROP_DIRECT=1`` forces that too.
* ``CI=true``: a missing ``go`` or ``podman`` (or a failing build) raises
  :class:`HarnessError`; it never turns into a skip.
* Every container is started with a unique name and ``--cidfile`` and removed by
  id (``podman rm -f``) when its handle closes, whatever happened.

Use from pytest (asyncio tests; the repository root must be on sys.path)::

    reason = harness.unavailable_reason()        # raises HarnessError in CI
    if reason:
        pytest.skip(reason)
    # Python listens on 127.0.0.1:PORT; the Go peer (here ACTIVE) dials it.
    with harness.start_peer("client", f"127.0.0.1:{port}", "echo") as go:
        ...                                       # serve the passive half in Python
        res = await go.await_exit(within=60)      # Finished(returncode, stdout, stderr)
    res.check()                                   # raises with Go's output unless exit 0
    assert res.ok_line and res.ok_line.startswith("OK echo client")

    relay, control_port = harness.start_relay()  # go-relay; close() / with removes it
    fwd, public = harness.start_forwarder(f"127.0.0.1:{control_port}", "127.0.0.1:6379")

Self-test (Go client peer against Go server peer, then go-relay + go-forwarder in
front of redis-server)::

    python -m interop.harness selftest [--direct] [--scenarios echo,rst] [--bulk-size 1GiB]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from testkit import gobuild
from testkit.ports import free_port as free_port  # re-exported: the one free-port helper
from testkit.procs import Proc, ProcessError

INTEROP_DIR: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = INTEROP_DIR.parent
BUILD_DIR: Final = gobuild.BUILD_DIR
CONTAINERFILE: Final = INTEROP_DIR / "Containerfile"
CONTAINERS_CONF: Final = INTEROP_DIR / "containers.conf"
PROGRAMS: Final = ("yamux-peer", "go-relay", "go-forwarder")
IMAGE_REPO: Final = "localhost/relay-interop-go"
CONTAINER_LABEL: Final = "relay-interop=1"

SCENARIOS: Final = (
    "echo",
    "parallel",
    "bulk",
    "halfclose",
    "rst",
    "ping",
    "keepalive",
    "goaway",
    "bigwindow",
    "openstorm",
    "closebusy",
)

# Knobs whose Go flag is a time.Duration: Python passes seconds (float).
_DURATION_KNOBS: Final = frozenset(
    {"keepalive_interval", "idle", "write_timeout", "timeout", "linger"}
)


class HarnessError(RuntimeError):
    """The Go side cannot be provided or misbehaved (never a reason to skip in CI)."""


class GoProcessTimeout(HarnessError, TimeoutError):
    """A Go program did not finish (or print) in time; carries what it printed."""


def in_ci() -> bool:
    """CI sets ``CI=true``; there a missing tool must fail loudly instead of skipping."""
    return os.environ.get("CI") == "true"


def _log(msg: str) -> None:
    print(f"[interop] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


@dataclass
class _State:
    """Per-process memo: binaries and image are built once per test run."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    image: str | None = None
    direct: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)


_STATE = _State()


def unavailable_reason() -> str | None:
    """Tell a test whether it can run Go peers: None if yes, else why not.

    Outside CI a missing ``go`` or packaged yamux source is a reason to skip; in
    CI it raises :class:`HarnessError` instead, so the suite can never go green
    without the interop tests having run.
    """
    problems = gobuild.missing_tools()
    if in_ci() and shutil.which("podman") is None:
        problems.append("`podman` not found (apt-get install podman runc)")
    if not problems:
        return None
    reason = "; ".join(problems) + " -- run scripts/install-test-deps.sh"
    if in_ci():
        raise HarnessError(f"CI=true but the Go interop tools are missing: {reason}")
    return reason


def use_containers() -> bool:
    """Decide once whether programs run in podman (normal) or directly (fallback).

    Direct mode exists so a developer without podman can still run the interop
    tests; it is announced with a warning because it is not what CI checks.
    """
    if _STATE.direct is not None:
        return not _STATE.direct
    forced = os.environ.get("RELAY_INTEROP_DIRECT") == "1"
    have_podman = shutil.which("podman") is not None
    if in_ci() and (forced or not have_podman):
        raise HarnessError(
            "CI=true requires podman for the interop tests"
            + (" (RELAY_INTEROP_DIRECT=1 is not allowed in CI)" if forced else "")
        )
    if forced or not have_podman:
        why = "RELAY_INTEROP_DIRECT=1" if forced else "podman not found"
        msg = f"{why}: running the Go interop programs directly on the host, not in containers"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        _log("WARNING: " + msg)
        _STATE.direct = True
    else:
        _STATE.direct = False
    return not _STATE.direct


def build_binaries() -> Path:
    """Build the static Go programs into interop/build once per process (testkit.gobuild)."""
    reason = unavailable_reason()
    if reason is not None:
        raise HarnessError(f"cannot build the Go interop programs: {reason}")
    try:
        took = gobuild.build_go(BUILD_DIR)
    except gobuild.GoBuildError as exc:
        raise HarnessError(str(exc)) from exc
    if took:
        _STATE.timings["go_build_s"] = took
    return BUILD_DIR


def _podman_env() -> dict[str, str]:
    """podman needs the project's containers.conf (empty default_ulimits), see environment.md."""
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def _podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one podman command with runc (crun fails on these hosts' hybrid cgroups)."""
    proc = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        env=_podman_env(),
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise HarnessError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def build_image() -> str | None:
    """Build the FROM-scratch image once per process; return its tag (None in direct mode).

    The tag is a digest of the binaries and the Containerfile, so an unchanged
    image from an earlier run is reused instead of rebuilt.
    """
    build_binaries()
    if not use_containers():
        return None
    with _STATE.lock:
        if _STATE.image is not None:
            return _STATE.image
        digest = hashlib.sha256(CONTAINERFILE.read_bytes())
        for prog in PROGRAMS:
            digest.update((BUILD_DIR / prog).read_bytes())
        tag = f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"
        t0 = time.monotonic()
        if _podman("image", "exists", tag, check=False).returncode != 0:
            _podman(
                "build",
                "--pull=never",
                "--layers=false",
                "-q",
                "-f",
                str(CONTAINERFILE),
                "-t",
                tag,
                str(BUILD_DIR),
            )
            _STATE.timings["image_build_s"] = time.monotonic() - t0
            _prune_old_images()
        else:
            _STATE.timings["image_reused_s"] = time.monotonic() - t0
        _STATE.image = tag
        return tag


IMAGE_MAX_AGE: Final = "2h"


def _prune_old_images() -> None:
    """Drop our images of earlier builds once they are old, so tags do not pile up.

    Only unused ones older than IMAGE_MAX_AGE: another checkout's test run may have just
    built its own tag and not started a container yet (removing it made that run fail
    with "image not known").
    """
    _podman(
        "image",
        "prune",
        "--all",
        "--force",
        "--filter",
        f"label={CONTAINER_LABEL}",
        "--filter",
        f"until={IMAGE_MAX_AGE}",
        check=False,
    )


def timings() -> dict[str, float]:
    """Build timings measured in this process (go_build_s, image_build_s or image_reused_s)."""
    return dict(_STATE.timings)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Finished:
    """Outcome of a Go program: exit status and everything it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok_line(self) -> str | None:
        """The ``OK <scenario> <role> ...`` line printed by yamux-peer on success."""
        return next((ln for ln in self.stdout.splitlines() if ln.startswith("OK ")), None)

    def check(self) -> Finished:
        """Raise HarnessError with the program's output unless it exited 0."""
        if self.returncode != 0:
            raise HarnessError(
                f"Go program exited {self.returncode}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
            )
        return self


_counter = itertools.count()


class LocalProcess:
    """One running program as the interop tests need it (a testkit Proc underneath).

    ``readline`` hands out stdout lines one by one as they arrive (e.g. a port
    announcement), ``wait``/``await_exit`` give its :class:`Finished` status and
    output, ``close`` (also on ``with`` exit) stops it, so nothing outlives the
    test even on errors. The JS and py-libp2p peers run as these;
    :class:`GoProcess` adds the container.
    """

    def __init__(
        self,
        program: str,
        cmd: Sequence[str],
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.program = program
        self.args = list(cmd[1:] if args is None else args)
        self.started = time.monotonic()
        self._proc = Proc(cmd, program, env=dict(env or {}))
        self._next_line = 0
        self._closed = False
        self._result: Finished | None = None

    def output(self) -> tuple[str, str]:
        """Stdout and stderr printed so far."""
        out, err = self._proc.stdout_text, self._proc.stderr_text
        return (out + "\n" if out else ""), (err + "\n" if err else "")

    def readline(self, timeout: float = 30) -> str:
        """Next stdout line (without newline).

        Raises GoProcessTimeout if none comes in time and HarnessError if the
        program ended without printing one.
        """
        try:
            index, _ = self._proc.wait_line(
                "", stream="stdout", timeout=timeout, after=self._next_line
            )
        except ProcessError:
            if self._proc.alive():
                what = f"no stdout line within {timeout}s"
                raise GoProcessTimeout(self._describe(what)) from None
            what = "ended without printing the expected line"
            raise HarnessError(self._describe(what)) from None
        self._next_line = index + 1
        return self._proc.stdout[index]

    async def areadline(self, within: float = 30) -> str:
        """``readline`` for asyncio tests: runs in a thread so the loop keeps serving."""
        return await asyncio.to_thread(self.readline, within)

    @property
    def pid(self) -> int:
        """Pid of the local process (podman client, or the program in direct mode)."""
        return self._proc.pid

    def wait(self, timeout: float = 120) -> Finished:
        """Wait for the program to exit by itself; return its status and output.

        On timeout the program is removed and GoProcessTimeout (with its output)
        is raised: a hung peer must fail the test, not hang it.
        """
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise GoProcessTimeout(self._describe(f"did not exit within {timeout}s")) from None
        return self._finish(rc)

    async def await_exit(self, within: float = 120) -> Finished:
        """``wait`` for asyncio tests: runs in a thread so the loop keeps serving.

        (``within`` rather than ``timeout``: the thread cannot be cancelled, so
        the limit must be enforced by ``wait`` itself, not by asyncio.timeout.)
        """
        return await asyncio.to_thread(self.wait, within)

    def stop(self) -> Finished:
        """Stop a long-running program (go-relay, go-forwarder) and return its output."""
        self.close()
        rc = self._proc.returncode
        return self._finish(rc if rc is not None else -9)

    def _finish(self, rc: int) -> Finished:
        if self._result is None:
            out, err = self.output()
            self._result = Finished(rc, out, err)
        self.close()
        return self._result

    def close(self) -> None:
        """Stop the program if it still runs; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._remove()

    def _remove(self) -> None:
        self._proc.stop(grace=2.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self) -> str:
        return f"pid {self._proc.pid}"

    def _describe(self, what: str) -> str:
        out, err = self.output()
        return (
            f"{self.program} {' '.join(self.args)} ({self._where()}) {what}\n"
            f"--- stdout\n{out}--- stderr\n{err[-8000:]}"
        )


class GoProcess(LocalProcess):
    """One Go program, in a podman container (or directly in fallback mode).

    ``close`` removes the container by id.
    """

    def __init__(self, program: str, args: Sequence[str]) -> None:
        if program not in PROGRAMS:
            raise ValueError(f"unknown program {program!r}; one of {PROGRAMS}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cidfile: Path | None = None
        self._cid: str | None = None
        image = build_image()
        if image is None:
            self.name: str | None = None
            super().__init__(program, [str(BUILD_DIR / program), *args], args)
            return
        self.name = f"relay-interop-{os.getpid()}-{next(_counter)}-{program}"
        self._tmp = tempfile.TemporaryDirectory(prefix="relay-interop-")
        self._cidfile = Path(self._tmp.name) / "cid"
        cmd = [
            "podman", "--runtime", "runc", "run", "--rm", "--pull=never",
            "--network=host", "--name", self.name, "--label", CONTAINER_LABEL,
            "--cidfile", str(self._cidfile), image, f"/{program}", *args,
        ]  # fmt: skip
        super().__init__(program, cmd, args, _podman_env())

    @property
    def container_id(self) -> str | None:
        """Full container id (None in direct mode or if podman never created it)."""
        if self._cid is None and self._cidfile is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(FileNotFoundError):
                    text = self._cidfile.read_text().strip()
                    if text:
                        self._cid = text
                        break
                if not self._proc.alive() and not self._cidfile.exists():
                    break
                time.sleep(0.02)
        return self._cid

    def _remove(self) -> None:
        try:
            if self._cidfile is not None:
                running = self._proc.alive()
                cid = self.container_id if running or self._cidfile.exists() else None
                target = cid or self.name
                if target:
                    _podman("rm", "-f", "-t", "0", "--ignore", target, check=False, timeout=60)
            super()._remove()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def _where(self) -> str:
        return f"container {self._cid or self.name}" if self.name else super()._where()


def start(program: str, *args: str) -> GoProcess:
    """Start one Go program (built and imaged on first use); close it when done."""
    return GoProcess(program, args)


@contextlib.contextmanager
def run(program: str, *args: str) -> Iterator[GoProcess]:
    """Context manager around :func:`start` that always removes the container."""
    proc = start(program, *args)
    try:
        yield proc
    finally:
        proc.close()


# --------------------------------------------------------------------------- helpers


def _format_knob(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in _DURATION_KNOBS and isinstance(value, int | float):
        return f"{round(float(value) * 1_000_000)}us"
    return str(value)


def peer_args(role: str, addr: str, scenario: str, **knobs: object) -> list[str]:
    """Command line of yamux-peer.

    Knobs map ``keepalive_interval=0.1`` to ``-keepalive-interval=100000us`` and
    ``listen=True`` to ``-listen=true``. Sizes may be ints or strings like
    ``"8MiB"``; duration knobs are seconds; None values are left out.
    """
    if role not in ("client", "server"):
        raise ValueError("role must be 'client' (active) or 'server' (passive)")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    args = ["-role", role, "-addr", addr, "-scenario", scenario]
    for name, value in knobs.items():
        if value is None:
            continue
        args.append(f"-{name.replace('_', '-')}={_format_knob(name, value)}")
    return args


def start_peer(role: str, addr: str, scenario: str, **knobs: object) -> GoProcess:
    """Start a Go yamux peer that dials ``addr`` (the test listens there).

    ``role`` is the Go side's yamux role: "client" = active, "server" = passive.
    """
    return start("yamux-peer", *peer_args(role, addr, scenario, **knobs))


def start_relay(*extra: str, timeout: float = 30) -> tuple[GoProcess, int]:
    """Start go-relay on an OS-chosen control port; return (handle, control port)."""
    proc = start("go-relay", "-port", "0", *extra)
    try:
        line = proc.readline(timeout)
        prefix = "Serving relay requests on port "
        if not line.startswith(prefix):
            raise HarnessError(f"go-relay printed {line!r}, expected {prefix!r}...")
        return proc, int(line[len(prefix) :])
    except BaseException:
        proc.close()
        raise


def start_forwarder(
    relay: str, local: str, *extra: str, timeout: float = 30
) -> tuple[GoProcess, str]:
    """Start go-forwarder; return (handle, public "host:port" it announced)."""
    proc = start("go-forwarder", "-relay", relay, "-local", local, *extra)
    try:
        return proc, proc.readline(timeout).strip()
    except BaseException:
        proc.close()
        raise


def cleanup_stale_containers() -> None:
    """Remove leftovers labelled by this harness (e.g. after a killed test run)."""
    if shutil.which("podman") is None:
        return
    ids = _podman("ps", "-aq", "--filter", f"label={CONTAINER_LABEL}", check=False).stdout.split()
    for cid in ids:
        _podman("rm", "-f", "-t", "0", "--ignore", cid, check=False)


# --------------------------------------------------------------------------- self-test


@dataclass
class _Row:
    name: str
    wall_s: float
    detail: str


def _selftest_scenario(scenario: str, knobs: Mapping[str, object], timeout: float) -> _Row:
    """Go client (active) against Go server (passive); the server listens."""
    t0 = time.monotonic()
    with run(
        "yamux-peer", *peer_args("server", "127.0.0.1:0", scenario, listen=True, **knobs)
    ) as srv:
        line = srv.readline(timeout=60)
        started = time.monotonic() - t0
        if not line.startswith("LISTENING "):
            raise HarnessError(f"server peer printed {line!r}")
        addr = line.split()[1]
        t1 = time.monotonic()
        with run("yamux-peer", *peer_args("client", addr, scenario, **knobs)) as cli:
            c = cli.wait(timeout)
            s = srv.wait(30)
        wall = time.monotonic() - t1
    for who, res in (("client", c), ("server", s)):
        if res.returncode != 0 or res.ok_line is None:
            raise HarnessError(
                f"{scenario}: Go {who} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
            )
    detail = f"server_start={started:.2f}s | {c.ok_line} | {s.ok_line}"
    return _Row(scenario, wall, detail)


def _wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise HarnessError(f"nothing accepts on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def _redis_cli(port: int, *cmd: str) -> str:
    proc = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *cmd],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"redis-cli {' '.join(cmd)} failed: {proc.stderr}")
    return proc.stdout.strip()


def _selftest_relay() -> list[_Row]:
    """go-relay + go-forwarder in front of a real redis-server."""
    rows: list[_Row] = []
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        msg = "redis-server/redis-cli missing (apt-get install redis-server redis-tools)"
        if in_ci():
            raise HarnessError(msg)
        _log("skipping relay self-test: " + msg)
        return rows
    rport = free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_tcp(rport, 10)
        t0 = time.monotonic()
        relay, cport = start_relay()
        with relay:
            rows.append(_Row("go-relay start", time.monotonic() - t0, f"control port {cport}"))
            t0 = time.monotonic()
            fwd, public = start_forwarder(f"127.0.0.1:{cport}", f"127.0.0.1:{rport}")
            with fwd:
                rows.append(_Row("go-forwarder start", time.monotonic() - t0, f"public {public}"))
                pport = int(public.rsplit(":", 1)[1])
                t0 = time.monotonic()
                pong = _redis_cli(pport, "PING")
                rows.append(_Row("redis-cli PING via relay", time.monotonic() - t0, pong))
                if pong != "PONG":
                    raise HarnessError(f"redis-cli PING through the relay said {pong!r}")
                t0 = time.monotonic()
                _redis_cli(pport, "SET", "interop", "x" * 100_000)
                got = _redis_cli(pport, "GET", "interop")
                took = time.monotonic() - t0
                rows.append(_Row("redis SET/GET 100 kB", took, f"{len(got)} bytes back"))
                if got != "x" * 100_000:
                    raise HarnessError("GET through the relay returned other bytes")
                if shutil.which("redis-benchmark"):
                    t0 = time.monotonic()
                    bench = subprocess.run(
                        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(pport), "-q",
                         "-n", "10000", "-c", "20", "-t", "ping,set,get"],
                        capture_output=True, text=True, timeout=120, check=False,
                    )  # fmt: skip
                    summary = "; ".join(
                        ln.split("\r")[-1].strip()
                        for ln in bench.stdout.splitlines()
                        if "requests per second" in ln
                    )
                    rows.append(_Row("redis-benchmark via relay", time.monotonic() - t0, summary))
            # A forwarder whose local service is down: the public connection must end.
            t0 = time.monotonic()
            fwd2, public2 = start_forwarder(f"127.0.0.1:{cport}", f"127.0.0.1:{free_port()}")
            with fwd2:
                host, port = public2.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.settimeout(10)
                    data = s.recv(100)
                took = time.monotonic() - t0
                rows.append(_Row("dead local service", took, f"public conn closed (read {data!r})"))
                if data:
                    raise HarnessError(
                        f"forwarder with a dead local service: got {data!r}, not EOF"
                    )
            fwd2_err = fwd2.stop().stderr
            if "dial local" not in fwd2_err:
                raise HarnessError(f"go-forwarder did not log the failed local dial:\n{fwd2_err}")
    finally:
        redis.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            redis.wait(10)
        if redis.poll() is None:
            redis.kill()
    return rows


def selftest(scenarios: Sequence[str], bulk_size: str | None, timeout: float) -> int:
    """Prove the Go side works on its own before Python peers are tested against it."""
    t0 = time.monotonic()
    build_binaries()
    build_image()
    _log(f"setup {time.monotonic() - t0:.2f}s {timings()}")
    _log(f"image={_STATE.image} direct={_STATE.direct}")
    rows: list[_Row] = []
    failed = False
    for sc in scenarios:
        knobs: dict[str, object] = {}
        if sc == "bulk" and bulk_size:
            knobs["size"] = bulk_size
        try:
            row = _selftest_scenario(sc, knobs, timeout)
        except HarnessError as exc:
            failed = True
            _log(f"FAIL {sc}: {exc}")
            continue
        rows.append(row)
        _log(f"{sc:10s} {row.wall_s:7.2f}s  {row.detail}")
    try:
        for row in _selftest_relay():
            rows.append(row)
            _log(f"{row.name:26s} {row.wall_s:7.3f}s  {row.detail}")
    except HarnessError as exc:
        failed = True
        _log(f"FAIL relay: {exc}")
    _log(f"total {time.monotonic() - t0:.1f}s; {'FAILED' if failed else 'all OK'}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``selftest`` (every scenario Go-vs-Go, then the relay), ``build``, ``cleanup``."""
    ap = argparse.ArgumentParser(prog="python -m interop.harness", description="Go interop harness")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("selftest", help="Go vs Go for every scenario, then go-relay with redis")
    st.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    st.add_argument("--bulk-size", default=None, help="bulk size, e.g. 256MiB (default 1GiB)")
    st.add_argument("--timeout", type=float, default=300, help="seconds per scenario")
    st.add_argument("--direct", action="store_true", help="run binaries without podman (not in CI)")
    sub.add_parser("build", help="build the Go programs and the image")
    sub.add_parser("cleanup", help="remove containers left behind by this harness")
    ns = ap.parse_args(argv)
    if getattr(ns, "direct", False):
        os.environ["RELAY_INTEROP_DIRECT"] = "1"
    if ns.cmd == "build":
        build_image()
        _log(f"built: {timings()} image={_STATE.image}")
        return 0
    if ns.cmd == "cleanup":
        cleanup_stale_containers()
        return 0
    chosen = [s for s in ns.scenarios.split(",") if s]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenarios: {unknown}")
    return selftest(chosen, ns.bulk_size, ns.timeout)


if __name__ == "__main__":
    sys.exit(main())
