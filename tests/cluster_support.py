"""A real redis-server for the cluster tests (this module holds no tests).

Started on a free port with its data in a directory of the test's (AOF on, so
a restart keeps the leases, as docs/cluster.md asks of a deployment), and
stopped, killed or restarted on the same port by the test.
"""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import require_program

from relay_support import HOST, SERVING, Processes, relay_command, wait_until
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


RELAY_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""Three relays on one host, each on an address of its own (all of 127/8 is loopback)."""


class ClusterRelay:
    """``relay server --bind ADDRESS --cluster URL ...`` on ``port``; killed and started again
    on the same address and port by the test."""

    def __init__(self, procs: Processes, address: str, port: int, *args: str) -> None:
        self.procs = procs
        self.address = address
        self.port = port
        self.args = args
        self.proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> ClusterRelay:
        self.proc = self.procs.start(
            [*relay_command(), "server", "--bind", self.address, *self.args, str(self.port)],
            f"relay-{self.address}",
        )
        self.proc.wait_line(SERVING)
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to the store."""
        assert self.proc is not None
        self.proc.kill()


def cluster_relays(procs: Processes, redis: RedisServer, *args: str) -> list[ClusterRelay]:
    """Three relays sharing ``redis``, on one control port number at three addresses."""
    port = free_port()
    return [
        ClusterRelay(procs, address, port, "--cluster", redis.url, *args).start()
        for address in RELAY_ADDRESSES
    ]
