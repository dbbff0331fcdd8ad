"""Serve behind a relay from Python: ``asyncio.start_server`` with the listener on the relay.

An existing asyncio server runs behind the relay by changing one call::

    server = await asyncio.start_server(handle, "127.0.0.1", 8080)   # before
    server = await relay.start_server(handle, "relay.example", 7000)  # after
    print(server.public_endpoint)          # relay.example:4532
    async with server:
        await server.serve_forever()

``handle(reader, writer)`` gets one yamux stream twice (it offers the
StreamReader and StreamWriter API); ``writer.close()`` / ``write_eof()`` send
FIN and the reader still reads until the public client's EOF.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import yamux

from .errors import RegistrationError, RelayDisconnectedError
from .net import format_endpoint
from .protocol import GreetingProtocol

logger = logging.getLogger("relay.api")

DEFAULT_TIMEOUT = 10.0
"""Seconds to connect to the relay and receive the port line."""

Handler = Callable[[yamux.Stream, yamux.Stream], Awaitable[None]]


async def register(
    host: str,
    port: int,
    *,
    config: yamux.Config | None = None,
    connect_timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> tuple[yamux.Session, int]:
    """Register with the relay at ``host:port``: ``(yamux server session, public port)``.

    The low-level call under ``start_server``: iterate the session
    (``async for stream in session``) to get one stream per public connection.
    Raises OSError if the relay cannot be reached, RegistrationError (a
    ConnectionError) if it answers anything but a port (RelayRefusedError for
    an ``error: ...`` line), TimeoutError after ``connect_timeout`` seconds. Extra
    keyword arguments go to ``loop.create_connection``.
    """
    loop = asyncio.get_running_loop()
    protocol: GreetingProtocol | None = None
    endpoint = format_endpoint(host, port)
    registered = False
    try:
        async with asyncio.timeout(connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: GreetingProtocol(config), host, port, **kwargs
            )
            result = await protocol.result
        registered = True
        return result
    except TimeoutError:
        what = "connect to" if protocol is None else "get a port line from"
        raise TimeoutError(
            f"could not {what} the relay at {endpoint} within {connect_timeout:g} s"
        ) from None
    finally:
        if not registered and protocol is not None:
            protocol.abort()  # the connection, and the session if one was attached


class RelayedServer:
    """Like ``asyncio.Server``, for a listener that lives on the relay.

    Owns one handler task per relayed connection; ``close()`` ends the session
    (the relay frees the public port at once) and cancels the handlers, and
    ``wait_closed()`` waits for all of it. ``wait_closed()`` also returns when
    the relay connection is lost; ``close_reason`` then says why.
    """

    def __init__(
        self, handler: Handler, session: yamux.Session, relay_host: str, relay_port: int,
        public_port: int,
    ) -> None:
        self._handler = handler
        self.session = session
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.public_port = public_port
        self._handlers = yamux.TaskOwner(logger)
        self._tasks = yamux.TaskOwner(logger)
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks.spawn(self._serve(), name=f"relay-accept-{public_port}")

    # -------------------------------------------------------------- queries
    @property
    def public_host(self) -> str:
        """The relay's host, as given: public clients connect there."""
        return self.relay_host

    @property
    def public_address(self) -> tuple[str, int]:
        """``(host, port)`` where public clients connect."""
        return (self.relay_host, self.public_port)

    @property
    def public_endpoint(self) -> str:
        """``host:port`` where public clients connect."""
        return format_endpoint(self.relay_host, self.public_port)

    @property
    def close_reason(self) -> str | None:
        """Why the session ended if not by ``close()``; None while serving or after close()."""
        if self._closing or not self.session.closed:
            return None
        reason = self.session.close_reason
        return str(reason) if reason is not None else "session closed"

    @property
    def connections(self) -> int:
        """Relayed connections whose handler is running."""
        return len(self._handlers)

    def is_serving(self) -> bool:
        return not self._closing and not self.session.closed

    def __repr__(self) -> str:
        state = "serving" if self.is_serving() else "closed"
        return f"<RelayedServer {self.public_endpoint} {state} connections={self.connections}>"

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Start closing: the session ends and every handler is cancelled."""
        if self._closing:
            return
        self._closing = True
        if not self.session.closed:
            self._close_task = self._tasks.spawn(self.session.close(), name="relay-close")

    async def wait_closed(self) -> None:
        """Until the session is over and every handler finished (never raises)."""
        await asyncio.shield(self._closed)
        if self._close_task is not None:
            await asyncio.wait([self._close_task])

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close) or until close(); raise if the relay is lost."""
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise
        if not self._closing:
            raise RelayDisconnectedError(
                f"lost the relay at {format_endpoint(self.relay_host, self.relay_port)}: "
                f"{self.close_reason}"
            )

    async def __aenter__(self) -> RelayedServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # ------------------------------------------------------------- internals
    async def _serve(self) -> None:
        """yamux's accept loop and handler policy; the handlers are ours to count and close."""
        try:
            await self.session.serve(self._handler, tasks=self._handlers, logger=logger)
        finally:
            await self.session.close()
            await self._handlers.close()
            if not self._closed.done():
                self._closed.set_result(None)


async def start_server(
    client_connected_cb: Handler,
    host: str,
    port: int,
    *,
    config: yamux.Config | None = None,
    connect_timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> RelayedServer:
    """Register with the relay at ``host:port`` and serve each relayed connection.

    ``client_connected_cb(reader, writer)`` has the shape of asyncio.start_server's
    callback; the returned server exposes ``public_port`` / ``public_address``.
    Raises as ``register()`` does.
    """
    session, public_port = await register(
        host, port, config=config, connect_timeout=connect_timeout, **kwargs
    )
    return RelayedServer(client_connected_cb, session, host, port, public_port)


__all__ = [
    "RegistrationError",
    "RelayDisconnectedError",
    "RelayedServer",
    "register",
    "start_server",
]
