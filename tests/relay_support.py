"""Helpers shared by the relay, CLI and example tests (this module holds no tests).

Real processes only: the ``relay`` console script of this interpreter, the
example programs, redis-server. Every process is started through a
``Processes`` group whose ``close()`` (called by each test module's fixture
finalizer) terminates, kills if needed, and waits for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
READY_TIMEOUT = 15.0
"""Seconds a process gets to become ready (generous: CI machines are slow and shared)."""
ENDPOINT = re.compile(r"^127\.0\.0\.1:(\d+)$")
SERVING = re.compile(r"Serving relay requests on port (\d+)")


def relay_command() -> list[str]:
    """The real ``relay`` console script installed for this interpreter."""
    script = Path(sysconfig.get_path("scripts")) / "relay"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "relay"]


def free_port() -> int:
    """A port nothing listens on right now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, interval: float = 0.01, message: str = "") -> float:
    """Poll ``predicate`` until true; returns the seconds it took; fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s: {message or predicate}")
        time.sleep(interval)


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def recv_all(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)


def echo_roundtrip(port: int, payload: bytes = b"ping through the relay\n",
                   timeout: float = 10.0) -> bytes:
    """Send ``payload``, half-close, read everything back (for an echo service)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


class Proc:
    """A subprocess whose stdout and stderr lines are collected by two threads."""

    def __init__(self, args: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.name = name
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            args, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._collect, args=(self.popen.stdout, self.stdout),
                             daemon=True, name=f"{name}-stdout"),
            threading.Thread(target=self._collect, args=(self.popen.stderr, self.stderr),
                             daemon=True, name=f"{name}-stderr"),
        ]
        for thread in self._threads:
            thread.start()

    def _collect(self, pipe, lines: list[str]) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stderr_text(self) -> str:
        with self._changed:
            return "\n".join(self.stderr)

    @property
    def stdout_text(self) -> str:
        with self._changed:
            return "\n".join(self.stdout)

    def _search(self, lines: list[str], pattern: re.Pattern[str], after: int):
        for index in range(after, len(lines)):
            match = pattern.search(lines[index])
            if match:
                return index, match
        return None

    def wait_line(self, pattern: str | re.Pattern[str], *, stream: str = "stderr",
                  timeout: float = READY_TIMEOUT, after: int = 0) -> tuple[int, re.Match[str]]:
        """The first line (index >= ``after``) of stdout/stderr matching ``pattern``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        lines = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._search(lines, regex, after)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                exited = self.popen.poll() is not None and not any(
                    t.is_alive() for t in self._threads)
                if remaining <= 0 or exited:
                    raise AssertionError(
                        f"{self.name}: no {stream} line matching {regex.pattern!r} within "
                        f"{timeout} s (exit status {self.popen.poll()}).\n{self.describe()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    async def await_line(self, pattern: str | re.Pattern[str], *, stream: str = "stderr",
                         timeout: float = READY_TIMEOUT,
                         after: int = 0) -> tuple[int, re.Match[str]]:
        """``wait_line`` for async tests: polls, so the event loop keeps running."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.wait_line(regex, stream=stream, timeout=0, after=after)
            except AssertionError:
                if time.monotonic() > deadline or self.popen.poll() is not None:
                    raise
            await asyncio.sleep(0.02)

    def describe(self) -> str:
        return (f"--- {self.name} {' '.join(self.args)}\n--- stdout:\n{self.stdout_text}\n"
                f"--- stderr:\n{self.stderr_text}")

    async def await_exit(self, timeout: float = READY_TIMEOUT) -> int:
        """``wait`` for async tests (in a worker thread, so the event loop keeps running)."""
        return await asyncio.to_thread(self.wait, timeout)

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = READY_TIMEOUT) -> int:
        code = self.popen.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always reaps and closes the pipes."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(5)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


SINK_SCRIPT = r"""
import asyncio, hashlib, sys
async def handle(reader, writer):
    digest, size = hashlib.sha256(), 0
    while data := await reader.read(1 << 20):
        digest.update(data)
        size += len(data)
    writer.write(f"{size} {digest.hexdigest()}\n".encode())
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""
"""A TCP service answering ``"<size> <sha256>\n"`` for all it received before EOF."""

ECHO_SCRIPT = r"""
import asyncio, sys
async def handle(reader, writer):
    while data := await reader.read(1 << 18):
        writer.write(data)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""
"""A TCP echo service, half-close aware."""


class Processes:
    """Every process a test starts; ``close()`` stops and reaps them all."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, name, env)
        self.procs.append(proc)
        return proc

    def relay(self, *args: str, port: int | None = None) -> tuple[Proc, int]:
        """``relay --bind 127.0.0.1 PORT ARGS``, once it logs that it serves.

        Without ``port``, a free one; if another process took it meanwhile, another one.
        """
        for _ in range(3):
            chosen = port or free_port()
            proc = self.start([*relay_command(), "--bind", HOST, *args, str(chosen)], "relay")
            try:
                _, match = proc.wait_line(SERVING)
            except AssertionError:
                if port is not None or "address already in use" not in proc.stderr_text:
                    raise
                continue
            assert int(match.group(1)) == chosen
            return proc, chosen
        raise AssertionError("no free control port for the relay\n" + self.describe())

    def forwarder(self, relay_port: int, local_port: int, *args: str) -> tuple[Proc, int]:
        """The forwarder for ``local_port``, once it printed its public endpoint."""
        proc = self.start_forwarder(relay_port, local_port, *args)
        _, match = proc.wait_line(ENDPOINT, stream="stdout")
        return proc, int(match.group(1))

    def start_forwarder(self, relay_port: int, local_port: int, *args: str) -> Proc:
        return self.start(
            [*relay_command(), f"--localForwardPort={local_port}", *args, HOST, str(relay_port)],
            "forwarder",
        )

    def script(self, code: str, *args: str, name: str) -> tuple[Proc, int]:
        """``python -c CODE 0``: a helper service that prints the port it listens on."""
        proc = self.start([sys.executable, "-c", code, *args], name)
        _, match = proc.wait_line(r"^(\d+)$", stream="stdout")
        return proc, int(match.group(1))

    def redis(self, redis_server: str, port: int | None = None) -> tuple[Proc, int]:
        port = port or free_port()
        proc = self.start(
            [redis_server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly",
             "no", "--daemonize", "no"], "redis-server")
        proc.wait_line(r"Ready to accept connections", stream="stdout")
        return proc, port

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def describe(self) -> str:
        return "\n".join(proc.describe() for proc in self.procs)


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        group.close()


def resp_command(*parts: bytes | str) -> bytes:
    """One redis command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespReader:
    """Parses RESP2 replies from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buffer += data

    def _line(self) -> bytes:
        while (index := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buffer[:index])
        del self.buffer[:index + 2]
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n + 2]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exactly(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise AssertionError(f"not RESP: {line[:60]!r}")
