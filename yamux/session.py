"""A yamux session, the object a user holds: open and accept streams, ping, Go Away, close.

The work is done by its ``SessionProtocol`` (the transport's asyncio protocol,
and the link its streams talk to), which this object hides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from .config import Config
from .const import GoAwayCode
from .errors import SessionClosedError, YamuxError
from .ratelimit import RateLimitedLog
from .session_protocol import SessionProtocol
from .stream import Stream
from .tasks import StreamHandler, TaskOwner, run_stream_handler


class Session:
    """A yamux session over one transport.

    Sessions come from ``yamux.connect``, ``yamux.connect_pipes``,
    ``Session.attach`` and ``yamux.start_server``; the constructor is the
    package's. Closing is asyncio's: ``close()`` starts it, ``await
    wait_closed()`` waits until the transport and the session's tasks are done;
    ``async with session:`` does both on exit. Why the session ended is
    ``close_reason``, for its owner to report.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: SessionProtocol) -> None:
        self._protocol = protocol
        protocol.session = self

    @classmethod
    def attach(
        cls,
        transport: asyncio.Transport,
        *,
        client: bool,
        config: Config | None = None,
        initial_data: bytes = b"",
    ) -> Session:
        """Switch an already connected transport to yamux, e.g. after a text greeting.

        ``initial_data`` is what the old protocol read beyond its greeting.
        """
        protocol = SessionProtocol(client=client, config=config)
        session = cls(protocol)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if initial_data:
            protocol.data_received(initial_data)
        return session

    # ---------------------------------------------------------------- state
    @property
    def config(self) -> Config:
        return self._protocol.config

    @property
    def client(self) -> bool:
        """True for the client role (odd stream ids), False for the server role."""
        return self._protocol.client

    @property
    def closed(self) -> bool:
        """True once the session is closing or closed; it opens and accepts nothing more."""
        return self._protocol.closing

    @property
    def close_reason(self) -> YamuxError | None:
        """Why the session ended (None while it runs)."""
        return self._protocol.close_reason

    @property
    def num_streams(self) -> int:
        return self._protocol.core.num_streams

    @property
    def remote_go_away(self) -> bool:
        """The peer sent Go Away 0: it takes no new streams."""
        return self._protocol.core.remote_go_away

    @property
    def write_buffer_size(self) -> int:
        """Bytes the transport holds that the peer has not taken yet (0 once closed)."""
        transport = self._protocol.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def last_rtt(self) -> float | None:
        """Seconds of the last answered ping (keepalive or ``ping()``), for metrics."""
        return self._protocol.pings.last

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time of the keepalive pings, once one was answered."""
        return self._protocol.liveness.rtt

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``session`` is this session; anything else comes from the transport."""
        return self._protocol.get_extra_info(name, default)

    # -------------------------------------------------------------- streams
    async def open_stream(self) -> Stream:
        """Open a stream. Waits while ``accept_backlog`` of our opens are still unACKed.

        Raises NoNewStreamsError once the peer sent Go Away, SessionClosedError
        once the session ended.
        """
        return await self._protocol.open_stream()

    def open_would_wait(self) -> bool:
        """Whether ``open_stream`` would wait now: ``accept_backlog`` of our opens await
        their ACK. (False too where it would raise.)"""
        return self._protocol.backlog.open_would_wait()

    def open_stream_nowait(self, first: bytes = b"") -> Stream | None:
        """``open_stream`` if it need not wait, else None: its SYN goes out in the caller's
        loop iteration, with no task or await, and ``first`` (at most the stream's write
        buffer limit) as its first data, in the same write. Raises as ``open_stream``."""
        return self._protocol.open_stream_nowait(first)

    async def accept_stream(self) -> Stream:
        """The next stream the peer opened; raises SessionClosedError once the session ends."""
        return await self._protocol.accept_stream()

    async def __aiter__(self) -> AsyncIterator[Stream]:
        """Every stream the peer opens, until the session ends."""
        while True:
            try:
                yield await self._protocol.accept_stream()
            except SessionClosedError:
                return

    async def serve(
        self,
        handler: StreamHandler,
        *,
        tasks: TaskOwner | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Run ``handler(reader, writer)`` for every accepted stream until the session ends.

        The stream is closed when the handler returns and reset when it raises
        (the error goes to ``logger``, by default ``yamux.session``) or is
        cancelled. Handler tasks belong to ``tasks``, by default the session's
        own, which ``close()`` cancels and ``wait_closed()`` waits for.
        """
        protocol = self._protocol
        owner = protocol.tasks if tasks is None else tasks
        log = protocol.log if logger is None else RateLimitedLog(logger)

        def start(stream: Stream) -> None:
            owner.spawn(run_stream_handler(handler, stream, log), name=f"yamux-stream-{stream.id}")

        await protocol.serve_streams(start)

    # -------------------------------------------------------------- control
    async def ping(self) -> float:
        """Round-trip time in seconds of one ping (wrap in ``asyncio.timeout`` to bound it)."""
        return await self._protocol.ping()

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Refuse new streams from the peer. A non-zero code also ends the session."""
        self._protocol.go_away(code)

    async def wait_go_away(self) -> None:
        """Return once the peer sent Go Away 0 (it takes no new streams; existing ones go on).

        Raises SessionClosedError if the session ends first.
        """
        await self._protocol.wait_go_away()

    def close(self) -> None:
        """Start closing: what the peer's windows allow is still sent, then Go Away.

        Every stream then ends with SessionClosedError, the session's tasks are
        cancelled, and the transport closes; ``wait_closed()`` waits for it.
        """
        self._protocol.close()

    async def wait_closed(self) -> None:
        """Until the transport is closed and the session's tasks have finished.

        Never raises (see ``close_reason``); it does not close the session.
        """
        await self._protocol.wait_closed()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()
