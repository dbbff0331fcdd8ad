"""Helpers shared by the relay, CLI and example tests (this module holds no tests).

Real processes only: the ``relay`` console script of this interpreter, the
example programs, redis-server. Every process is started through a
``Processes`` group (testkit's ProcGroup) whose ``close()`` (called by each
test module's fixture finalizer) terminates, kills if needed, and waits for all
of them.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.ports import free_port
from testkit.procs import Proc, ProcessError, ProcGroup

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
ENDPOINT = re.compile(r"^127\.0\.0\.1:(\d+)$")
SERVING = re.compile(r"Serving relay requests on port (\d+)")


def relay_command() -> list[str]:
    """The real ``relay`` console script installed for this interpreter."""
    script = Path(sysconfig.get_path("scripts")) / "relay"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "relay"]


def free_port_block(size: int) -> tuple[int, int]:
    """``(low, high)``: ``size`` consecutive ports that nothing listens on right now.

    Below the kernel's ephemeral range, where no outgoing connection (of this
    or any other process on a busy machine) takes one of them meanwhile.
    """
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        low = random.randrange(10000, max(10001, ephemeral_low - size))
        socks = []
        try:
            for port in range(low, low + size):
                sock = socket.socket()
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((HOST, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return low, low + size - 1
    raise AssertionError(f"no block of {size} free ports")


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


def closed_without_data(port: int, source: str | None = None, timeout: float = 5.0) -> bool:
    """Connect and read: True if the peer ends the connection (EOF or reset) before any byte.

    A server that accepts and at once resets can have the reset land before the
    client's connect() returns, so a reset during connect counts as well; a refused
    connect (nothing listening) does not.
    """
    try:
        with socket.create_connection(
            (HOST, port), timeout=timeout, source_address=(source, 0) if source else None
        ) as sock:
            return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def recv_all(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)


def echo_roundtrip(
    port: int, payload: bytes = b"ping through the relay\n", timeout: float = 10.0
) -> bytes:
    """Send ``payload``, half-close, read everything back (for an echo service)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


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


class Processes(ProcGroup):
    """Every process a test starts, with starters for the relay's own programs."""

    def relay(self, *args: str, port: int | None = None) -> tuple[Proc, int]:
        """``relay --bind 127.0.0.1 PORT ARGS``, once it logs that it serves.

        Without ``port``, a free one; if another process took it meanwhile, another one.
        """
        for _ in range(3):
            chosen = port or free_port()
            proc = self.start([*relay_command(), "--bind", HOST, *args, str(chosen)], "relay")
            try:
                _, match = proc.wait_line(SERVING)
            except ProcessError:
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
            [
                redis_server,
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
            ],
            "redis-server",
        )
        proc.wait_line(r"Ready to accept connections", stream="stdout")
        return proc, port


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
        del self.buffer[: index + 2]
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[: n + 2]
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
