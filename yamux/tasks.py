"""One owner for a group of tasks, and the one policy for running a stream handler.

Every task the package (and the relay) starts belongs to a ``TaskOwner``: it
logs a task that fails, and its owner's close cancels what is left
(``cancel()``) and waits for it (``wait()``), so nothing outlives the object
that started it. The owner may go on spawning after a cancel (a reconnecting
client keeps one for the handlers of each session in turn).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import YamuxError
from .ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from .stream import Stream

T = TypeVar("T")
StreamHandler = Callable[["Stream", "Stream"], Awaitable[None]]
"""``handler(reader, writer)``; both are the same Stream, as with asyncio.start_server."""


class TaskOwner:
    """A set of tasks with one owner: spawn, log failures, cancel and wait."""

    def __init__(
        self, logger: logging.Logger, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._logger = logger
        self._tasks: dict[asyncio.Task[Any], Callable[[asyncio.Task[Any]], None] | None] = {}
        """Each task and its ``on_done``."""
        self._on_done = self._done
        """One bound method for every task's done callback, not a new one per spawn."""
        self._loop = loop
        """Given, or the one of the last spawn while it runs: asking for the running loop
        is a system call (getpid) on Python 3.11, and some owners spawn a task per
        connection."""

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str,
        on_done: Callable[[asyncio.Task[T]], None] | None = None,
    ) -> asyncio.Task[T]:
        """Start ``coro``; ``on_done(task)`` runs when it ends, even if it never started.

        ``on_done`` is called from the owner's one done callback: a second callback
        would cost every task its own context copy (thousands of idle connections).
        """
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro, name=name)
        self._tasks[task] = on_done
        task.add_done_callback(self._on_done)
        return task

    def cancel(self) -> None:
        """Cancel every task but the one calling (a task may close its own owner).

        A task already cancelled is not cancelled again: its cleanup may await.
        """
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and not task.cancelling():
                task.cancel()

    async def wait(self) -> None:
        """Wait until every task but the caller has finished."""
        current = asyncio.current_task()
        while others := [task for task in self._tasks if task is not current]:
            await asyncio.wait(others)

    def _done(self, task: asyncio.Task[Any]) -> None:
        on_done = self._tasks.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._logger.error("task %s failed", task.get_name(), exc_info=exc)
        if on_done is not None:
            on_done(task)


async def run_stream_handler(handler: StreamHandler, stream: Stream, log: RateLimitedLog) -> None:
    """Run ``handler(stream, stream)``: close the stream when it returns, reset it on error
    or cancellation (the peer then knows the answer is incomplete).

    Failures go to ``log``, rate-limited: a peer can make every handler fail.
    """
    try:
        await handler(stream, stream)
    except asyncio.CancelledError:
        stream.reset()
        raise
    except (YamuxError, ConnectionError, asyncio.IncompleteReadError) as exc:
        log.log(logging.INFO, "handler-ended", "stream %d: handler ended: %s", stream.id, exc)
        stream.reset()
    except Exception as exc:  # logged with its traceback; the session and other streams go on
        log.log(
            logging.ERROR,
            "handler-failed",
            "stream %d: handler failed; resetting the stream",
            stream.id,
            exc_info=exc,
        )
        stream.reset()
    else:
        stream.close()
