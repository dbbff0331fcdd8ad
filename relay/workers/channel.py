"""The line between the supervisor and one worker: JSON messages over a Unix socket pair.

Each message is a JSON object after its length (4 bytes, big endian). A
message with an ``id`` is a request and gets exactly one reply, a message with
``re`` set to that id; a message with neither is a notice. Both ends are the
relay's own processes, so the peer is trusted; the size bound is there only so
that a bug cannot make the other end buffer without limit.

The end of the socket is the end of the peer: the supervisor learns that a
worker died (kill -9 included) and a worker that its supervisor is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import yamux

from ..errors import RelayError

logger = logging.getLogger("relay.workers")

MAX_MESSAGE = 64 << 20
"""Bytes of one message at most (a ``/status`` of thousands of registrations fits)."""
_LENGTH = struct.Struct(">I")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]
"""Answers a request or takes a notice; a request's result is its reply (None: empty)."""


class ChannelClosedError(RelayError, ConnectionError):
    """The process at the other end is gone (or the message could not be sent)."""


class Channel(asyncio.Protocol):
    """One end of the line; ``request()`` and ``notify()``, incoming ones go to ``handler``."""

    def __init__(self, handler: Handler, on_lost: Callable[[], object] | None = None) -> None:
        self._handler = handler
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks = yamux.TaskOwner(logger)
        """One per incoming message being handled."""
        self.closed = asyncio.get_running_loop().create_future()
        """Done once the socket is closed, by either end."""

    @classmethod
    async def open(
        cls, sock: socket.socket, handler: Handler, on_lost: Callable[[], object] | None = None
    ) -> Channel:
        """The channel over ``sock`` (an end of a socket pair)."""
        _, channel = await asyncio.get_running_loop().create_unix_connection(
            lambda: cls(handler, on_lost), sock=sock
        )
        return channel

    # ---------------------------------------------------------------- sending
    def notify(self, message: Message) -> None:
        """Send ``message`` and expect no reply; nothing if the channel is closed."""
        if self._transport is not None and not self._transport.is_closing():
            self._send(message)

    async def request(self, message: Message) -> Message:
        """Send ``message`` and wait for its reply; ChannelClosedError if the peer is gone."""
        if self._transport is None or self._transport.is_closing():
            raise ChannelClosedError("the channel is closed")
        ident = next(self._ids)
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = reply
        try:
            self._send({**message, "id": ident})
            return await reply
        finally:
            self._waiting.pop(ident, None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._tasks.cancel()

    async def wait_closed(self) -> None:
        await self.closed
        await self._tasks.wait()

    def _send(self, message: Message) -> None:
        assert self._transport is not None
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ChannelClosedError(f"a message of {len(data)} bytes is over {MAX_MESSAGE}")
        self._transport.write(_LENGTH.pack(len(data)) + data)

    # -------------------------------------------------------------- receiving
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                logger.error("channel: a message of %d bytes announced; closing", size)
                self.close()
                return
            end = _LENGTH.size + size
            if len(self._buffer) < end:
                return
            message: Message = json.loads(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
            self._received(message)

    def _received(self, message: Message) -> None:
        reply_to = message.pop("re", None)
        if reply_to is not None:
            waiter = self._waiting.get(reply_to)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            return
        self._tasks.spawn(self._handle(message), name=f"relay-channel-{message.get('op')}")

    async def _handle(self, message: Message) -> None:
        ident = message.pop("id", None)
        result = await self._handler(message)
        if ident is not None:
            self.notify({**(result or {}), "re": ident})

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ChannelClosedError("the process at the other end is gone"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_lost is not None:
            self._on_lost()
