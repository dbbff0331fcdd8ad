"""The state directory (``--state-dir``): its lease store, and one relay at a time on it.

A relay locks the directory (``flock`` on ``relay.lock``, which names its pid)
so that a second relay started on it by mistake is refused instead of sharing
leases it does not know about; processes of one relay that share the store on
purpose open it with ``lock=False`` under the lock their parent holds.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import RelayError
from .sqlite_store import MEMBER_TTL, SqliteLeaseStore

logger = logging.getLogger("relay.leases")

STORE_NAME = "leases.sqlite3"
LOCK_NAME = "relay.lock"


class StateDirError(RelayError, OSError):
    """Another relay holds the state directory: two relays must not share leases."""


async def open_state_dir(
    state_dir: str | os.PathLike[str] | None,
    ttl: float,
    *,
    lock: bool = True,
    holder: str | None = None,
    clock: Callable[[], float] = time.time,
    member_ttl: float = MEMBER_TTL,
) -> SqliteLeaseStore:
    """The SQLite store of ``state_dir`` (None: a private one in memory), locked against
    a second relay unless ``lock`` is False.

    Raises StateDirError if another relay holds the directory; every other
    problem is logged and leaves a working store (in memory if need be).
    """

    async def opened(path: Path | None) -> SqliteLeaseStore:
        return await SqliteLeaseStore.open(
            path, ttl, holder=holder, clock=clock, member_ttl=member_ttl
        )

    if state_dir is None:
        return await opened(None)
    directory = Path(state_dir)
    try:
        lock_fd = await asyncio.to_thread(_prepare, directory, lock)
    except StateDirError:
        raise
    except OSError as exc:
        logger.error(
            "cannot use the state directory %s (%s); leases are kept in memory "
            "only and end with this process",
            directory,
            exc,
        )
        return await opened(None)
    try:
        store = await opened(directory / STORE_NAME)
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    if lock_fd is not None:
        store.after_close = lambda: os.close(lock_fd)
    return store


def _prepare(directory: Path, lock: bool) -> int | None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return lock_state_dir(directory) if lock else None


def lock_state_dir(directory: Path) -> int:
    """An exclusive lock on the state directory (a file descriptor to close to unlock)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StateDirError(
            f"state directory {directory} is in use by another relay"
            + (f" (pid {owner})" if owner else "")
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
