"""Shared fixtures. Every async test is checked for leaked tasks and sockets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import pytest
import uvloop

from relay_support import ECHO_SCRIPT, Processes, processes

EVENT_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on asyncio's own loop; those of a module that sets
    ``BOTH_LOOPS = True`` on uvloop too, where the two loops differ in what they test
    (when ``pause_reading`` takes effect, socket options, timers)."""
    if getattr(getattr(item, "module", None), "BOTH_LOOPS", False):
        return EVENT_LOOPS
    return {"asyncio": EVENT_LOOPS["asyncio"]}


def open_socket_fds() -> set[str]:
    """Socket file descriptors of this process, by number."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                fds.add(fd)
        except OSError:
            continue
    return fds


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running or sockets open once it returns.

    Transports close a few loop iterations after close(), so give them up to a second.
    """
    before_fds = open_socket_fds()
    this_task = asyncio.current_task()
    before_tasks = asyncio.all_tasks() - {this_task}
    yield
    leaked_tasks: set[asyncio.Task[object]] = set()
    leaked_fds: set[str] = set()
    for _ in range(100):
        leaked_tasks = {
            t
            for t in asyncio.all_tasks() - before_tasks
            if t is not asyncio.current_task() and not t.done()
        }
        leaked_fds = open_socket_fds() - before_fds
        if not leaked_tasks and not leaked_fds:
            return
        await asyncio.sleep(0.01)
    for task in leaked_tasks:
        task.cancel()
    names = sorted(t.get_name() for t in leaked_tasks)
    pytest.fail(f"test leaked {len(leaked_tasks)} task(s) {names} and {len(leaked_fds)} socket(s)")


def require_program(name: str) -> str:
    """Path of a real program a test needs. Missing: skip locally, fail under CI=true."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; run scripts/install-test-deps.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Real subprocesses (relay, forwarder, redis, scripts), all stopped after the test."""
    with processes() as group:
        yield group


@pytest.fixture
def echo_port(procs: Processes) -> int:
    """Port of a half-close-aware TCP echo service in its own process."""
    return procs.script(ECHO_SCRIPT, "0", name="echo")[1]
