"""Ways to give a Session its transport: a TCP connection, or a pair of pipes.

(``Session.attach`` switches a transport that already spoke something else;
``start_server`` accepts TCP connections.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from .config import Config
from .session import Session
from .session_protocol import SessionProtocol


class _ReadPipeProtocol(asyncio.Protocol):
    """The read half when reading and writing are two transports (pipes)."""

    def __init__(self, protocol: SessionProtocol) -> None:
        self._protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._protocol.attach_read_transport(transport)

    def data_received(self, data: bytes) -> None:
        self._protocol.data_received(data)

    def eof_received(self) -> bool:
        return self._protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.eof_received()


async def connect_pipes(
    read_pipe: Any, write_pipe: Any, *, client: bool, config: Config | None = None
) -> Session:
    """Run a session over two pipes (file objects), e.g. a child process's stdin and stdout."""
    protocol = SessionProtocol(client=client, config=config)
    session = Session(protocol)
    loop = asyncio.get_running_loop()
    await loop.connect_write_pipe(lambda: protocol, write_pipe)
    await loop.connect_read_pipe(lambda: _ReadPipeProtocol(protocol), read_pipe)
    return session


async def connect(
    host: str,
    port: int,
    *,
    client: bool = True,
    config: Config | None = None,
    **kwargs: Any,
) -> Session:
    """Open a TCP connection and start a yamux session on it (client role by default).

    Extra keyword arguments go to ``loop.create_connection`` (``ssl=`` for TLS).
    """
    protocol = SessionProtocol(client=client, config=config)
    session = Session(protocol)
    await asyncio.get_running_loop().create_connection(lambda: protocol, host, port, **kwargs)
    return session
