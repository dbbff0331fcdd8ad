"""A TCP listener whose every connection is a yamux session, in ``asyncio.Server``'s shape."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Config
from .errors import YamuxError
from .session import Session
from .tasks import TaskOwner

logger = logging.getLogger("yamux.server")

SessionHandler = Callable[[Session], Awaitable[None]]


class Server:
    """Hands every accepted connection, as a Session, to ``session_handler``.

    Owns its sessions and their handler tasks: ``close()`` stops listening and
    closes every session, ``wait_closed()`` waits for all of it, as with
    ``asyncio.Server``. A session is closed when its handler returns.
    """

    def __init__(
        self, session_handler: SessionHandler, *, client: bool, config: Config | None
    ) -> None:
        self._handler = session_handler
        self._client = client
        self._config = config
        self._server: asyncio.Server | None = None
        self._sessions: set[Session] = set()
        self._tasks = TaskOwner(logger)
        self._closing: asyncio.Task[None] | None = None

    async def start(self, host: str | None, port: int, **kwargs: Any) -> None:
        """Start listening (``start_server`` calls it)."""
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, host, port, **kwargs
        )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def is_serving(self) -> bool:
        return self._closing is None and self._server is not None and self._server.is_serving()

    def close(self) -> asyncio.Task[None]:
        """Stop listening and close every session; ``wait_closed()`` waits until done.

        Returns the closing task, so ``await server.close()`` (the old async
        form) still works.
        """
        if self._closing is None:
            if self._server is not None:
                self._server.close()
            self._closing = asyncio.get_running_loop().create_task(
                self._close_all(), name="yamux-server-close"
            )
        return self._closing

    async def wait_closed(self) -> None:
        """Until close() has finished (returns at once if close() was never called)."""
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def serve_forever(self) -> None:
        """Serve until cancelled; then close and wait."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    async def _close_all(self) -> None:
        for session in list(self._sessions):
            await session.close()
        await self._tasks.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _protocol(self) -> asyncio.Protocol:
        session = Session(client=self._client, config=self._config)
        self._sessions.add(session)
        self._tasks.spawn(self._run(session), name="yamux-session")
        return session.protocol()

    async def _run(self, session: Session) -> None:
        try:
            await self._handler(session)
        except YamuxError as exc:
            logger.info("session handler ended: %s", exc)
        finally:
            await session.close()
            self._sessions.discard(session)


async def start_server(
    session_handler: SessionHandler,
    host: str | None = None,
    port: int = 0,
    *,
    client: bool = False,
    config: Config | None = None,
    **kwargs: Any,
) -> Server:
    """Listen on TCP; each connection becomes a Session (server role by default)."""
    server = Server(session_handler, client=client, config=config)
    await server.start(host, port, **kwargs)
    return server
