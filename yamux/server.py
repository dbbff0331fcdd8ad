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
from .session_protocol import SessionProtocol
from .tasks import TaskOwner

logger = logging.getLogger("yamux.server")

SessionHandler = Callable[[Session], Awaitable[None]]


class Server:
    """Hands every accepted connection, as a Session, to ``session_handler``.

    Owns its sessions and their handler tasks: ``close()`` stops listening and
    starts closing every session, ``wait_closed()`` waits until they and their
    handlers are done, as with ``asyncio.Server``. A session is closed when its
    handler returns.
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
        self._closing = False

    async def start(self, host: str | None, port: int, **kwargs: Any) -> None:
        """Start listening (``start_server`` calls it)."""
        self._server = await asyncio.get_running_loop().create_server(
            self._new_protocol, host, port, **kwargs
        )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def is_serving(self) -> bool:
        return not self._closing and self._server is not None and self._server.is_serving()

    def close(self) -> None:
        """Stop listening and start closing every session; ``wait_closed()`` waits for it."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for session in self._sessions:
            session.close()

    async def wait_closed(self) -> None:
        """Until close() has finished (returns at once if close() was never called).

        Every session is closed and its handler has returned or was cancelled.
        """
        if not self._closing:
            return
        for session in list(self._sessions):
            await session.wait_closed()
        self._tasks.cancel()
        await self._tasks.wait()
        if self._server is not None:
            await self._server.wait_closed()

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

    def _new_protocol(self) -> asyncio.Protocol:
        protocol = SessionProtocol(client=self._client, config=self._config)
        session = Session(protocol)
        self._sessions.add(session)
        self._tasks.spawn(self._run(session), name="yamux-session")
        return protocol

    async def _run(self, session: Session) -> None:
        try:
            await self._handler(session)
        except YamuxError as exc:
            logger.info("session handler ended: %s", exc)
        finally:
            session.close()
            await session.wait_closed()
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
