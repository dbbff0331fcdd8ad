"""Child processes for tests and benchmarks: output collected line by line, always stopped.

One ``Proc`` class for every caller: two threads read stdout and stderr into
lists of lines (optionally also into log files), so a caller can wait for a line
such as "Serving relay requests on port N" without ever blocking on a full pipe.
``stop()`` terminates (SIGTERM, then SIGKILL after a grace period), reaps the
process and closes its pipes, whatever state it is in; with ``new_session=True``
the signals go to the whole process group, so helpers the program started go
too. A ``ProcGroup`` owns several and stops them all, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final, Literal

REPO: Final = Path(__file__).resolve().parent.parent
READY_TIMEOUT: Final = 15.0
"""Seconds a process gets to print what it is waited for (CI machines are slow and shared)."""
NOFILE_WANTED: Final = 65536
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

Stream = Literal["stdout", "stderr", "both"]


class ProcessError(RuntimeError):
    """A child did not print what was expected in time, or ended first (message has its output)."""


def raise_nofile(wanted: int = NOFILE_WANTED) -> None:
    """Lift RLIMIT_NOFILE towards ``wanted`` as far as allowed (10,000 connections need it).

    Also usable as ``preexec`` of a Proc, so the limit holds in the child.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted and soft != resource.RLIM_INFINITY:
        return
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return
    try:  # raising the hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Proc:
    """A subprocess whose stdout and stderr lines are collected by two threads.

    ``env`` is added to this process's environment (plus PYTHONUNBUFFERED=1 so
    Python children print lines as they happen). ``log_dir`` also writes the
    output to ``NAME.STAMP.out`` / ``.err`` there.
    """

    def __init__(
        self,
        args: Sequence[str],
        name: str,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | str = REPO,
        stdin: bool = False,
        new_session: bool = False,
        more_files: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self.name = name
        self.new_session = new_session
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=new_session,
            preexec_fn=raise_nofile if more_files else None,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._logs: list[IO[str]] = []
        sinks: list[IO[str] | None] = [None, None]
        if log_dir is not None:
            stamp = time.monotonic_ns()
            sinks = [
                open(log_dir / f"{name}.{stamp}.{ext}", "w")  # noqa: SIM115 - stop() closes
                for ext in ("out", "err")
            ]
            self._logs = [s for s in sinks if s is not None]
        self._threads = [
            threading.Thread(
                target=self._collect, args=(pipe, lines, sink), daemon=True, name=f"{name}-{which}"
            )
            for which, pipe, lines, sink in (
                ("stdout", self.popen.stdout, self.stdout, sinks[0]),
                ("stderr", self.popen.stderr, self.stderr, sinks[1]),
            )
        ]
        for thread in self._threads:
            thread.start()

    def _collect(self, pipe: IO[str] | None, lines: list[str], sink: IO[str] | None) -> None:
        assert pipe is not None
        for line in pipe:
            if sink is not None:
                sink.write(line)
                sink.flush()
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    # -- state and output

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def stdout_text(self) -> str:
        with self._changed:
            return "\n".join(self.stdout)

    @property
    def stderr_text(self) -> str:
        with self._changed:
            return "\n".join(self.stderr)

    def describe(self) -> str:
        return (
            f"--- {self.name} {' '.join(self.args)} (exit status {self.popen.poll()})\n"
            f"--- stdout:\n{self.stdout_text}\n--- stderr:\n{self.stderr_text}"
        )

    def tail(self, n: int = 600) -> str:
        """The last ``n`` characters of stdout and of stderr on one line (for error messages)."""
        text = f"{self.stdout_text[-n:]} | stderr: {self.stderr_text[-n:]}".strip()
        return text.replace("\n", " / ")

    def _search(
        self, regex: re.Pattern[str], stream: Stream, after: int
    ) -> tuple[int, re.Match[str]] | None:
        sources = {
            "stdout": [self.stdout],
            "stderr": [self.stderr],
            "both": [self.stdout, self.stderr],
        }[stream]
        for lines in sources:
            for index in range(after, len(lines)):
                match = regex.search(lines[index])
                if match:
                    return index, match
        return None

    def wait_line(
        self,
        pattern: str | re.Pattern[str],
        *,
        stream: Stream = "stderr",
        timeout: float = READY_TIMEOUT,
        after: int = 0,
    ) -> tuple[int, re.Match[str]]:
        """The first line (index >= ``after``) of ``stream`` matching ``pattern``.

        Raises ProcessError, with everything the process printed, when none comes
        within ``timeout`` or the process ends without printing it.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._search(regex, stream, after)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                exited = self.popen.poll() is not None and not any(
                    t.is_alive() for t in self._threads
                )
                if remaining <= 0 or exited:
                    raise ProcessError(
                        f"{self.name}: no {stream} line matching {regex.pattern!r} within "
                        f"{timeout:g} s (exit status {self.popen.poll()}).\n{self.describe()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    async def await_line(
        self,
        pattern: str | re.Pattern[str],
        *,
        stream: Stream = "stderr",
        timeout: float = READY_TIMEOUT,
        after: int = 0,
    ) -> tuple[int, re.Match[str]]:
        """``wait_line`` for async code: polls, so the event loop keeps running."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.wait_line(regex, stream=stream, timeout=0, after=after)
            except ProcessError:
                if time.monotonic() > deadline or self.popen.poll() is not None:
                    raise
            await asyncio.sleep(0.02)

    # -- input

    def write_stdin(self, data: str) -> None:
        """Write to the child's stdin (started with ``stdin=True``) and flush."""
        if self.popen.stdin is None:
            raise ValueError(f"{self.name} was started without stdin=True")
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    # -- resources (from /proc)

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far (fields 14 and 15 of /proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ProcessError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    # -- ending

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.new_session:
                os.killpg(self.pid, signum)
            elif self.popen.poll() is None:
                self.popen.send_signal(signum)

    def wait(self, timeout: float = READY_TIMEOUT) -> int:
        """Exit status once the process ended and its output is read; TimeoutExpired if not."""
        code = self.popen.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    async def await_exit(self, timeout: float = READY_TIMEOUT) -> int:
        """``wait`` for async code (in a worker thread, so the event loop keeps running)."""
        return await asyncio.to_thread(self.wait, timeout)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self._signal(signal.SIGKILL)
        self.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, SIGKILL after ``grace`` s; always reaps and closes pipes and log files.

        With ``new_session`` whatever else is left in the process group is killed too.
        """
        try:
            if self.popen.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
            if self.new_session:
                self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(5)
        finally:
            for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            for log in self._logs:
                log.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcGroup:
    """Every process a test or a benchmark run starts; ``close()`` stops and reaps them all."""

    def __init__(self, **defaults: object) -> None:
        self.procs: list[Proc] = []
        self._defaults = defaults
        self._lock = threading.Lock()

    def start(self, args: Sequence[str], name: str, **options: object) -> Proc:
        """A new Proc (``options`` over the group's defaults), owned by the group."""
        proc = Proc(args, name, **{**self._defaults, **options})  # type: ignore[arg-type]
        with self._lock:
            self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        """Stop one process early and forget it."""
        proc.stop(grace)
        with self._lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def close(self, grace: float = 5.0) -> None:
        with self._lock:
            procs, self.procs = self.procs, []
        errors = []
        for proc in reversed(procs):
            try:
                proc.stop(grace)
            except Exception as exc:  # one stubborn child must not leave the others running
                errors.append(exc)
        if errors:
            raise errors[0]

    def describe(self) -> str:
        return "\n".join(proc.describe() for proc in self.procs)


@contextlib.contextmanager
def proc_group(**defaults: object) -> Iterator[ProcGroup]:
    group = ProcGroup(**defaults)
    try:
        yield group
    finally:
        group.close()
