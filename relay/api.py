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

Against a relay that runs registration v2 (docs/protocol.md), ``secret=``
answers its challenge, ``public_port=`` asks for a port, ``client_address=True``
makes ``get_extra_info("peername")`` of each stream the public client's
address, and ``ssl=`` (an SSLContext, or True for the system CAs) wraps the
connection in TLS. Against a seed relay (e.g. the Go one) these are not used
and a warning says so.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yamux

from .errors import RegistrationError, RelayClosedError, RelayDisconnectedError
from .handshake import ClientOptions, RegisteringProtocol
from .net import format_endpoint
from .proxy_protocol import (
    V2_HEADER_LENGTH,
    ProxyAddresses,
    ProxyHeaderError,
    parse_v2_fixed,
    parse_v2_payload,
)
from .tls import describe_tls_error

logger = logging.getLogger("relay.api")

DEFAULT_TIMEOUT = 10.0
"""Seconds to connect to the relay and receive the port line."""

Handler = Callable[[yamux.Stream, yamux.Stream], Awaitable[None]]


class TLSError(RegistrationError):
    """The TLS handshake with the relay failed (certificate not trusted, wrong host, ...)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered session and what was negotiated."""

    session: yamux.Session
    public_port: int
    version: int
    """2 if the relay challenged (registration v2), 1 for a seed relay."""
    client_address: bool
    """Every stream starts with a PROXY v2 header naming the public client."""


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
    an ``error: ...`` line, AuthenticationError when it refused the secret),
    TimeoutError after ``connect_timeout`` seconds. Takes the keyword arguments
    of ``register_v2``; the rest go to ``loop.create_connection``.
    """
    registration = await register_v2(
        host, port, config=config, connect_timeout=connect_timeout, **kwargs)
    return registration.session, registration.public_port


async def register_v2(
    host: str,
    port: int,
    *,
    config: yamux.Config | None = None,
    connect_timeout: float = DEFAULT_TIMEOUT,
    secret: str | bytes | None = None,
    name: str | None = None,
    public_port: int | None = None,
    client_address: bool = False,
    ssl: ssl_module.SSLContext | bool | None = None,
    **kwargs: Any,
) -> Registration:
    """``register`` with everything that was negotiated (see ``Registration``)."""
    loop = asyncio.get_running_loop()
    options = ClientOptions(
        secret=secret.encode("utf-8") if isinstance(secret, str) else secret,
        name=name, port=public_port, client_address=client_address)
    protocol: RegisteringProtocol | None = None
    endpoint = format_endpoint(host, port)
    registered = False
    if ssl is True:
        ssl = ssl_module.create_default_context()
    if ssl:
        kwargs.setdefault("ssl_handshake_timeout", connect_timeout)
    try:
        async with asyncio.timeout(connect_timeout):
            try:
                _, protocol = await loop.create_connection(
                    lambda: RegisteringProtocol(config, options), host, port,
                    ssl=ssl or None, **kwargs
                )
            except (ssl_module.SSLError, ConnectionResetError) as exc:
                described = describe_tls_error(exc) if ssl else None
                if described is None:
                    raise
                raise TLSError(described) from exc
            try:
                session, public_port_ = await protocol.result
            except RelayClosedError as exc:
                if not ssl or protocol.version != 1:
                    raise
                # A TLS 1.3 relay refuses a client certificate after the handshake, and
                # asyncio reports its alert as a plain close: say what it most likely was.
                raise TLSError(
                    f"{exc}, right after the TLS handshake: does it require a client "
                    f"certificate (--tls-cert/--tls-key) that it did not accept?"
                ) from exc
        registered = True
        return Registration(session, public_port_, protocol.version, protocol.client_address)
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
        public_port: int, *, client_address: bool = False,
    ) -> None:
        self._handler = handler
        self.session = session
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.public_port = public_port
        self.client_address = client_address
        """Streams start with the public client's address (read off before the handler)."""
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
            await self.session.serve(self._handle, tasks=self._handlers, logger=logger)
        finally:
            await self.session.close()
            await self._handlers.close()
            if not self._closed.done():
                self._closed.set_result(None)

    async def _handle(self, reader: yamux.Stream, writer: yamux.Stream) -> None:
        if self.client_address:
            await read_client_address(reader)
        await self._handler(reader, writer)


async def start_server(
    client_connected_cb: Handler,
    host: str,
    port: int,
    *,
    config: yamux.Config | None = None,
    connect_timeout: float = DEFAULT_TIMEOUT,
    secret: str | bytes | None = None,
    name: str | None = None,
    public_port: int | None = None,
    client_address: bool = True,
    ssl: ssl_module.SSLContext | bool | None = None,
    **kwargs: Any,
) -> RelayedServer:
    """Register with the relay at ``host:port`` and serve each relayed connection.

    ``client_connected_cb(reader, writer)`` has the shape of asyncio.start_server's
    callback; the returned server exposes ``public_port`` / ``public_address``.
    With a v2 relay, ``writer.get_extra_info("peername")`` is the public client
    (``client_address``, on by default). Raises as ``register()`` does.
    """
    registration = await register_v2(
        host, port, config=config, connect_timeout=connect_timeout, secret=secret, name=name,
        public_port=public_port, client_address=client_address, ssl=ssl, **kwargs
    )
    return RelayedServer(client_connected_cb, registration.session, host, port,
                         registration.public_port, client_address=registration.client_address)


async def read_client_address(stream: yamux.Stream) -> ProxyAddresses | None:
    """Read a stream's PROXY v2 header; the public client becomes its ``peername``.

    The addresses are also ``get_extra_info("client_address")``: a ProxyAddresses,
    or None if the relay did not know them (a LOCAL header).
    """
    fixed = await stream.readexactly(V2_HEADER_LENGTH)
    version_command, family, length = parse_v2_fixed(fixed)
    payload = await stream.readexactly(length) if length else b""
    addresses = parse_v2_payload(version_command, family, payload)
    stream.set_extra_info("client_address", addresses)
    if addresses is not None:
        stream.set_extra_info("peername", addresses.source)
        stream.set_extra_info("sockname", addresses.destination)
    return addresses


__all__ = [
    "ProxyHeaderError",
    "Registration",
    "RegistrationError",
    "RelayDisconnectedError",
    "RelayedServer",
    "register",
    "register_v2",
    "start_server",
]
