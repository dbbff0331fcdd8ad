"""The HTTP endpoint of ``--metrics HOST:PORT``: metrics, status and health.

``/metrics`` is Prometheus text and ``/status`` JSON, from the collector and
status of ``relay.ops.metrics`` (or, for a relay of several workers, of
``relay.workers.aggregate``); ``/livez`` answers 200 while the event loop
does; ``/readyz`` 200 while the relay listens (a forwarder: every service is
registered) and 503 from the drain on; ``/`` is the status page
(``relay.ops.status_page``), which shows ``/status``. It is a small asyncio
server in the same event loop as the relay: a scrape sees a consistent state,
with no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

import yamux

from ..net import format_endpoint
from ..server.interface import Readiness
from . import status_page

logger = logging.getLogger("relay.metrics")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers we read before answering 431."""
REQUEST_TIMEOUT = 5.0


class MetricsServer:
    """HTTP/1.1 GET ``/metrics``, ``/status``, ``/livez``, ``/readyz`` and the status page
    ``/`` on ``host:port``; one request per connection.

    ``refresh``, if given, is awaited before each answer: what the collector and
    ``status`` read is fetched from elsewhere (a supervisor asks its workers).
    """

    def __init__(
        self,
        host: str,
        port: int,
        collector: Collector,
        status: Callable[[], dict[str, Any]],
        readiness: Callable[[], Readiness],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        self.status = status
        self.readiness = readiness
        self.refresh = refresh
        self._server: asyncio.Server | None = None
        self._handlers = yamux.TaskOwner(logger)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.requested_port, limit=MAX_REQUEST_HEAD
        )
        logger.info(
            "metrics on http://%s/metrics; the status page on /, JSON on /status, "
            "health on /livez and /readyz",
            self.endpoint,
            extra={"metrics": self.endpoint},
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)

    def close(self) -> None:
        """Stop listening and cancel the requests in progress (asyncio's convention)."""
        if self._server is not None:
            self._server.close()
        self._handlers.cancel()

    async def wait_closed(self) -> None:
        await self._handlers.wait()
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.spawn(self._serve(reader, writer), name="relay-metrics-request")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._reply(writer, 431, "text/plain", b"request head too large\n")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if self.refresh is not None and path in ("/metrics", "/status", "/readyz"):
                await self.refresh()
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, "text/plain", b"GET only\n")
                return
            code, content_type, body = self._answer(path)
            await self._reply(writer, code, content_type, body, head_only=method == "HEAD")
        except OSError:
            pass  # the scraper went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        """Status code, content type and body of a GET of ``path``."""
        if path == "/metrics":
            return 200, PROMETHEUS_CONTENT_TYPE, generate_latest(self.registry)
        if path == "/status":
            return 200, "application/json", json.dumps(self.status(), indent=2).encode() + b"\n"
        if path == "/livez":
            return 200, "text/plain; charset=utf-8", b"alive\n"
        if path == "/readyz":
            readiness = self.readiness()
            word = "ready" if readiness.ready else "not ready"
            return (
                200 if readiness.ready else 503,
                "text/plain; charset=utf-8",
                f"{word}: {readiness.reason}\n".encode(),
            )
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", status_page.html()
        return 404, "text/plain", b"try / (the status page), /metrics, /status, /livez, /readyz\n"

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter,
        code: int,
        content_type: str,
        body: bytes,
        *,
        head_only: bool = False,
    ) -> None:
        reasons = {
            200: "OK",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Request Header Fields Too Large",
            503: "Service Unavailable",
        }
        writer.write(
            f"HTTP/1.1 {code} {reasons[code]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"Connection: close\r\n\r\n".encode()
        )
        if not head_only:
            writer.write(body)
        await writer.drain()


@contextlib.asynccontextmanager
async def exposed(
    address: tuple[str, int] | None,
    collector: Collector,
    status: Callable[[], dict[str, Any]],
    readiness: Callable[[], Readiness],
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[MetricsServer | None]:
    """Serve the metrics, status and health on ``address`` (None: nothing) while in the block."""
    if address is None:
        yield None
        return
    server = MetricsServer(*address, collector, status, readiness, refresh)
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
