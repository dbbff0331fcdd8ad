"""A real redis-server for the cluster tests (this module holds no tests).

Started on a free port with its data in a directory of the test's (AOF on, so
a restart keeps the leases, as docs/cluster.md asks of a deployment), and
stopped, killed or restarted on the same port by the test.
"""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import require_program

from relay_support import HOST, Processes, wait_until
from testkit.ports import free_port
from testkit.procs import Proc


class RedisServer:
    """``redis-server`` on ``port`` with its data in ``directory``; ``url`` for the relays."""

    def __init__(self, procs: Processes, directory: Path) -> None:
        self.procs = procs
        self.directory = directory
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = self.procs.start(
            [
                require_program("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
            ],
            "redis-server",
        )
        self.proc.wait_line(r"Ready to accept connections", stream="stdout")
        return self

    def stop(self) -> None:
        """SIGTERM (the AOF is complete: every write was fsynced), and wait until it is gone."""
        assert self.proc is not None
        self.procs.stop(self.proc)
        self.proc = None
        wait_until(lambda: not self.answers(), timeout=5, message="redis-server still answers")

    def answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
