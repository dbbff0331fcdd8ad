"""The lines between workers (relay.workers.lines, handoff.py), in one process.

Real SOCK_SEQPACKET socket pairs: a ``Workers`` here plays the supervisor (it
makes each worker's line from it, and the lines when one starts) and keeps each
worker's ``WorkerLines``; the connections handed are real socket pairs, and a
handed one is shown to be the same connection by writing on it at the other end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket

import pytest

from relay.workers.handoff import MAX_HANDOFF, Handoff, RoutedConnection, pair
from relay.workers.lines import NewLine, Passed, WorkerLines, lines_to


class Workers:
    """Workers 1..n as the supervisor sees them; ``got[i]``: what worker i received."""

    def __init__(self) -> None:
        self.from_supervisor: dict[int, socket.socket] = {}
        self.lines: dict[int, WorkerLines] = {}
        self.got: dict[int, list[tuple[Passed, socket.socket]]] = {}

    async def start(self, index: int) -> None:
        """Start worker ``index``; until each running worker has read its line to it."""
        ours, theirs = pair()
        ends = lines_to(index, list(self.from_supervisor.items()))
        self.from_supervisor[index] = ours
        got = self.got.setdefault(index, [])
        self.lines[index] = WorkerLines(
            theirs, ends, lambda message, fd: got.append((message, socket.socket(fileno=fd)))
        )
        for other in ends:
            line = self.lines[other]._lines
            await until(lambda line=line: index in line and not line[index].closed)

    def kill(self, index: int) -> None:
        self.from_supervisor.pop(index).close()
        self.lines.pop(index).close()

    def close(self) -> None:
        for index in list(self.lines):
            self.kill(index)
        for got in self.got.values():
            for _, sock in got:
                sock.close()


async def hand(workers: Workers, sender: int, to: int, host: str) -> None:
    """Worker ``sender`` hands a connection for ``host`` to ``to``; ``to`` answers on it."""
    client, conn = socket.socketpair()
    with client, conn:
        got = workers.got[to]
        before = len(got)
        workers.lines[sender].send(to, RoutedConnection("http", host, b"GET /"), conn.fileno())
        conn.close()  # the sender lets go: only the receiver's copy is left
        await until(lambda: len(got) > before)
        message, handed = got[-1]
        assert message == RoutedConnection("http", host, b"GET /")
        handed.sendall(f"worker {to}".encode())
        handed.close()
        client.settimeout(5)
        assert client.recv(100) == f"worker {to}".encode()
        assert client.recv(100) == b""  # no copy was left open anywhere


async def test_workers_hand_connections_straight_to_each_other_and_after_a_restart() -> None:
    """Every pair of workers gets a line (the later one's end at its start, the earlier
    one's from the supervisor); a killed worker's lines end in the others, which refuse to
    send to it; its successor gets fresh lines to every live worker, both ways."""
    workers = Workers()
    try:
        for index in (1, 2, 3):
            await workers.start(index)
        for sender, to in [(1, 2), (2, 1), (3, 1), (1, 3), (2, 3), (3, 2)]:
            await hand(workers, sender, to, f"from{sender}.test")

        workers.kill(2)
        client, conn = socket.socketpair()
        with client, conn:
            lost = RoutedConnection("tls", "x.test", b"")
            with pytest.raises(OSError, match="Broken pipe"):  # before worker 1 saw the end
                workers.lines[1].send(2, lost, conn.fileno())
            line = workers.lines[1]._lines
            await until(lambda: line[2].closed)  # it saw the end and closed its side
            with pytest.raises(OSError, match="no line to worker 2"):
                workers.lines[1].send(2, lost, conn.fileno())
            with pytest.raises(OSError, match="no line to worker 7"):
                workers.lines[3].send(7, lost, conn.fileno())

        await workers.start(2)  # the restarted worker
        for sender, to in [(2, 1), (1, 2), (2, 3), (3, 2)]:
            await hand(workers, sender, to, f"again{sender}.test")
        assert all(message.host != "x.test" for got in workers.got.values() for message, _ in got)
    finally:
        workers.close()


async def test_what_a_line_cannot_use_is_logged_its_descriptor_closed_and_the_line_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A damaged message, one without its descriptor, one of a kind the line does not
    carry: each logged, the descriptor that came with it closed, the next message goes
    through. An oversized message is refused at the sender."""
    caplog.set_level(logging.ERROR, "relay.workers")
    workers = Workers()
    try:
        await workers.start(1)
        await workers.start(2)
        end = workers.lines[1]._lines[2].sock  # worker 1's end of the line to worker 2
        wrong = [
            ([b"\x80\x05garbage"], True, "a damaged message"),
            ([pickle.dumps(RoutedConnection("http", "a.test", b""))], False, "exactly one"),
            ([pickle.dumps(NewLine(3))], True, "a NewLine, which it does not carry"),
        ]
        for data, with_fd, problem in wrong:
            client, conn = socket.socketpair()
            with client, conn:
                socket.send_fds(end, data, [conn.fileno()] if with_fd else [])
                conn.close()
                await until(lambda problem=problem: problem in caplog.text)
                client.settimeout(5)
                if with_fd:
                    assert client.recv(1) == b""  # worker 2 closed the copy it got
        assert workers.got[2] == []
        await hand(workers, 1, 2, "after.test")

        client, conn = socket.socketpair()
        with client, conn:
            big = Handoff(request=None, early=bytes(MAX_HANDOFF))  # type: ignore[arg-type]
            with pytest.raises(OSError, match="over"):
                workers.lines[1].send(2, big, conn.fileno())
    finally:
        workers.close()


async def until(condition) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not true within 5 s")


def test_the_supervisor_keeps_no_end_of_a_line() -> None:
    """``lines_to``: the other worker gets its end on its line from the supervisor; the
    supervisor's copy is closed; a worker that cannot be sent its end gets no line."""
    live, gone = pair(), pair()
    gone[1].close()
    before = set(os.listdir("/proc/self/fd"))
    ends = lines_to(3, [(1, live[0]), (2, gone[0])])
    assert list(ends) == [1]
    data, fds, _, _ = socket.recv_fds(live[1], 1024, 1)
    assert pickle.loads(data) == NewLine(3)
    with socket.socket(fileno=fds[0]) as theirs:
        ends[1].send(b"hello")
        assert theirs.recv(10) == b"hello"
    ends[1].close()
    assert set(os.listdir("/proc/self/fd")) == before
    for sock in (*live, gone[0]):
        sock.close()
