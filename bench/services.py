"""What the load goes through: the echo and redis services, and relay + forwarder pairs.

A *path* names what stands between the load generator and the service:
``direct`` (nothing), ``go`` (interop/go's go-relay + go-forwarder on
hashicorp/yamux), ``py`` (``python -m relay`` of this tree as relay and as
forwarder, on the ``--event-loop`` of the bench: uvloop when installed),
``py-asyncio`` (the same on plain asyncio) and ``base`` / ``base-asyncio``
(the same from the ``--baseline`` source tree). A fresh pair is started for
every run and stopped after it.

Where each program runs is a ``Host``: loopback for ``python -m bench``, a
network namespace (``ip netns exec NS ...``) for ``python -m bench --wan``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.processes import (
    BUILD_DIR,
    HOST,
    BenchError,
    log,
    start,
    stop,
    wait_for,
)
from testkit.ports import free_port
from testkit.procs import Proc

PATHS: Final = ("direct", "go", "py", "py-asyncio", "base", "base-asyncio")
PATH_TITLES: Final = {
    "direct": "direct",
    "go": "Go relay",
    "py": "project relay",
    "py-asyncio": "project relay, asyncio",
    "base": "baseline relay",
    "base-asyncio": "baseline relay, asyncio",
}
ASYNCIO_SUFFIX: Final = "-asyncio"
DEFAULT_SHELL_NOFILE: Final = 1024
"""The soft RLIMIT_NOFILE a login shell or a systemd service gets by default: the relays
of a run "with default settings" start with it (what they raise themselves is theirs)."""


def default_shell_nofile() -> int:
    """DEFAULT_SHELL_NOFILE, or the hard limit if that is lower."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (
        DEFAULT_SHELL_NOFILE if hard == resource.RLIM_INFINITY else min(hard, DEFAULT_SHELL_NOFILE)
    )


def tree_of(path: str) -> str:
    """The source tree a path's relay comes from: ``py`` or ``base``."""
    return path.removesuffix(ASYNCIO_SUFFIX)


SERVING: Final = r"Serving relay requests on port (\d+)"
ENDPOINT: Final = r"^(\S+:\d+)\s*$"


@dataclass(frozen=True)
class Host:
    """Where a program runs: a command prefix (none, or ``ip netns exec NS``) and its address."""

    name: str = "loopback"
    prefix: tuple[str, ...] = ()
    addr: str = HOST

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, *args]


LOOPBACK: Final = Host()


@dataclass(frozen=True)
class Layout:
    """Where the relay and the forwarder of a pair run and how they reach each other.

    The defaults are the loopback bench: both on 127.0.0.1, the control port
    picked free. The WAN bench puts them in two namespaces, gives the relay a
    fixed control port, and has the forwarder dial it through a link emulator.
    """

    relay_at: Host = LOOPBACK
    forwarder_at: Host = LOOPBACK
    bind: str = HOST
    """Address the relay's control and public listeners bind."""
    control_port: int = 0
    """0: any free port."""
    dial: str | None = None
    """HOST:PORT the forwarder dials (default: the relay's own address and control port)."""
    public_host: str | None = None
    """Address clients reach the public ports at (default: what the forwarder printed)."""


@dataclass
class PyTree:
    """A source tree whose ``python -m relay`` is measured: this one, or ``--baseline``'s."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    help_text: str = ""
    module_file: str = ""

    def has_option(self, option: str) -> bool:
        return option in self.help_text


@dataclass
class Env:
    """What every run needs: tools, the echo and redis services, options."""

    logdir: Path
    python: str
    quick: bool
    echo_addr: str = ""
    redis_addr: str = ""
    py_loop: str = "auto"
    """--event-loop of the project's relay and forwarder on paths ``py`` and ``base``: auto
    (uvloop if installed), asyncio, uvloop. Paths ``*-asyncio`` always use asyncio."""
    trees: dict[str, PyTree] = field(default_factory=dict)
    """Tree name ("py", "base") -> the source tree; see ``tree_of``."""
    client: Host = LOOPBACK
    """Where the load generators run."""

    def go(self, prog: str) -> str:
        return str(BUILD_DIR / prog)


def start_echo(env: Env, at: Host = LOOPBACK, bind: str = HOST) -> Proc:
    """interop/go's echo-server; sets ``env.echo_addr`` to where clients reach it."""
    proc = start("echo-server", at.argv(env.go("echo-server"), "-addr", f"{bind}:0"), env.logdir)
    port = wait_for(proc, r"^\S+:(\d+)$", 10).group(1)
    env.echo_addr = f"{at.addr}:{port}"
    return proc


def start_redis(env: Env) -> Proc | None:
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        log(
            "redis-server / redis-benchmark not found (apt-get install redis-server): "
            "skipping the redis workload"
        )
        return None
    for _ in range(5):
        port = free_port()
        proc = start(
            "redis-server",
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxclients",
                "10000",
                "--dir",
                str(env.logdir),
            ],
            env.logdir,
        )
        try:
            wait_for(proc, r"Ready to accept connections", 10)
        except BenchError:
            stop(proc)
            continue
        env.redis_addr = f"{HOST}:{port}"
        return proc
    raise BenchError("redis-server did not start")


def probe_tree(env: Env, root: Path) -> PyTree:
    """Check that ``python -m relay`` of ``root`` runs, learn its options and where it lives."""
    root = root.resolve()
    proc_env = dict(os.environ)
    proc_env["PYTHONPATH"] = os.pathsep.join(
        [str(root)] + ([proc_env["PYTHONPATH"]] if proc_env.get("PYTHONPATH") else [])
    )
    tree = PyTree(root, proc_env)
    proc = subprocess.run(
        [env.python, "-m", "relay", "--help"],
        capture_output=True,
        text=True,
        cwd=root,
        env=proc_env,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(
            f"`{env.python} -m relay --help` in {root} failed ({proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}"
        )
    tree.help_text = proc.stdout
    where = subprocess.run(
        [env.python, "-c", "import relay; print(relay.__file__)"],
        capture_output=True,
        text=True,
        cwd=root,
        env=proc_env,
        timeout=30,
        check=False,
    )
    tree.module_file = where.stdout.strip()
    if not tree.module_file.startswith(str(root)):
        raise BenchError(
            f"`python -m relay` run in {root} imports {tree.module_file or '?'}, "
            "not that tree's relay package"
        )
    return tree


def relay_options(tree: PyTree, bind: str, defaults: bool = False) -> list[str]:
    """``defaults``: the relay's own connection limits (else lifted for the idle workload)."""
    opts = []
    if tree.has_option("--bind"):
        opts += ["--bind", bind]
    if tree.has_option("--max-connections") and not defaults:
        # The default (1000 per registered service) is below the 10,000-connection workload.
        opts += ["--max-connections", "1000000"]
    return opts


def with_nofile(nofile: int | None, argv: list[str]) -> list[str]:
    """``argv`` started with a soft RLIMIT_NOFILE of ``nofile`` (None: as the bench raised it).

    A shell lowers it and execs the program, so the pid (CPU, RSS readings) stays the same.
    """
    if nofile is None:
        return argv
    return ["sh", "-c", 'ulimit -S -n "$0" && exec "$@"', str(nofile), *argv]


@dataclass
class Pair:
    """A relay and a forwarder in front of `target`; `endpoint` is the public HOST:PORT."""

    relay: Proc
    forwarder: Proc
    endpoint: str

    def procs(self) -> tuple[Proc, Proc]:
        return self.relay, self.forwarder


def start_go_pair(
    env: Env,
    target: str,
    layout: Layout = Layout(),
    go_opts: tuple[str, ...] = (),
    nofile: int | None = None,
) -> Pair:
    """go-relay + go-forwarder (``go_opts``, e.g. ``-window N``, go to both), started with
    a soft RLIMIT_NOFILE of ``nofile`` if given (Go raises it to the hard limit itself)."""
    relay = start(
        "go-relay",
        layout.relay_at.argv(
            *with_nofile(
                nofile,
                [
                    env.go("go-relay"),
                    "-port",
                    str(layout.control_port),
                    "-bind",
                    layout.bind,
                    "-public-bind",
                    layout.bind,
                    *go_opts,
                ],
            )
        ),
        env.logdir,
    )
    try:
        port = wait_for(relay, SERVING, 10, "both").group(1)
    except BaseException:
        stop(relay)
        raise
    dial = layout.dial or f"{layout.relay_at.addr}:{port}"
    return with_forwarder(
        relay,
        "go-forwarder",
        layout.forwarder_at.argv(
            *with_nofile(
                nofile, [env.go("go-forwarder"), "-relay", dial, "-local", target, *go_opts]
            )
        ),
        env,
        10,
        layout,
    )


def with_forwarder(
    relay: Proc,
    name: str,
    argv: list[str],
    env: Env,
    timeout: float,
    layout: Layout,
    proc_env: dict[str, str] | None = None,
) -> Pair:
    """Start the forwarder `argv` in front of `relay`; stop both if it shows no endpoint."""
    try:
        fwd = start(name, argv, env.logdir, env=proc_env)
    except BaseException:
        stop(relay)
        raise
    try:
        endpoint = wait_for(fwd, ENDPOINT, timeout).group(1)
    except BaseException:
        stop(fwd)
        stop(relay)
        raise
    if layout.public_host is not None:
        endpoint = f"{layout.public_host}:{endpoint.rsplit(':', 1)[1]}"
    return Pair(relay, fwd, endpoint)


def start_py_pair(
    env: Env,
    target: str,
    tree: PyTree,
    layout: Layout = Layout(),
    launcher: tuple[str, ...] = ("-m", "relay"),
    py_opts: tuple[str, ...] = (),
    loop: str | None = None,
    defaults: bool = False,
    nofile: int | None = None,
) -> Pair:
    """``python -m relay`` of ``tree`` as relay and as forwarder (``py_opts`` go to both).

    ``launcher`` replaces ``-m relay`` (e.g. with a wrapper that changes a default);
    ``loop`` is the ``--event-loop`` (default ``env.py_loop``); ``defaults`` keeps the
    relay's own connection limits; ``nofile`` is the soft RLIMIT_NOFILE to start with.
    """
    loop = loop or env.py_loop
    relay = None
    for _ in range(5):  # the relay takes no port 0: pick a free one, retry if taken meanwhile
        port = layout.control_port or free_port()
        relay = start(
            "py-relay",
            layout.relay_at.argv(
                *with_nofile(
                    nofile,
                    [
                        env.python,
                        *launcher,
                        *relay_options(tree, layout.bind, defaults),
                        "--event-loop",
                        loop,
                        *py_opts,
                        str(port),
                    ],
                )
            ),
            env.logdir,
            env=tree.env,
            cwd=tree.root,
        )
        try:
            wait_for(relay, SERVING, 30, "both")
            break
        except BenchError as exc:
            stop(relay)
            relay = None
            if "in use" not in str(exc) or layout.control_port:
                raise
    if relay is None:
        raise BenchError("the project relay found no free control port")
    target_host, target_port = target.rsplit(":", 1)
    dial_host, dial_port = (layout.dial or f"{layout.relay_at.addr}:{port}").rsplit(":", 1)
    return with_forwarder(
        relay,
        "py-forwarder",
        layout.forwarder_at.argv(
            *with_nofile(
                nofile,
                [
                    env.python,
                    *launcher,
                    "--event-loop",
                    loop,
                    *py_opts,
                    f"--localForwardPort={target_port}",
                    "--local-forward-host",
                    target_host,
                    dial_host,
                    dial_port,
                ],
            )
        ),
        env,
        30,
        layout,
        tree.env,
    )


def start_pair(
    env: Env, path: str, target: str, layout: Layout = Layout(), defaults: bool = False
) -> Pair:
    """The pair of ``path``. ``defaults``: each relay with its default settings, started with
    the file limit of a default shell (DEFAULT_SHELL_NOFILE), not the bench's raised one."""
    nofile = default_shell_nofile() if defaults else None
    if path == "go":
        return start_go_pair(env, target, layout, nofile=nofile)
    loop = "asyncio" if path.endswith(ASYNCIO_SUFFIX) else None
    return start_py_pair(
        env, target, env.trees[tree_of(path)], layout, loop=loop, defaults=defaults, nofile=nofile
    )


@contextlib.contextmanager
def stopping(pair: Pair | None) -> Iterator[Pair | None]:
    """Yield ``pair``, always stopping both of its processes afterwards."""
    try:
        yield pair
    finally:
        if pair is not None:
            stop(pair.forwarder)
            stop(pair.relay)


def path_endpoint(
    env: Env, path: str, target: str, defaults: bool = False
) -> contextlib.AbstractContextManager[Pair | None]:
    """The pair for `path` (None for direct) on loopback, always stopped afterwards."""
    return stopping(None if path == "direct" else start_pair(env, path, target, defaults=defaults))
