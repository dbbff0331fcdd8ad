"""A small HTTP/1.1 server written on asyncio streams, served through a relay.

    relay 7000 &
    python examples/web_server.py 127.0.0.1 7000   # prints the public endpoint
    curl http://127.0.0.1:PUBLIC_PORT/

The same handler also runs as an ordinary local server
(``python examples/web_server.py --direct 8080``): the only difference is
``relay.start_server`` instead of ``asyncio.start_server``.

Routes: ``GET /`` (a page), ``GET /hello?name=you`` (text), ``POST /echo``
(the body back), ``GET /health``. Persistent connections (HTTP/1.1 keep-alive),
request bodies by Content-Length; ``HEAD`` works on every GET route.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import sys
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import relay

MAX_BODY = 10 * 1024 * 1024
MAX_HEADERS = 100
SERVER = "relay-example/1.0"


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None at a clean end (EOF between requests)."""
    try:
        line = await reader.readline()
    except ValueError:  # longer than the stream's line limit
        raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long") from None
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"malformed request line {line[:80]!r}")
    request = Request(*parts)
    for _ in range(MAX_HEADERS + 1):
        try:
            line = await reader.readline()
        except ValueError:
            too_large = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            raise BadRequest(too_large, "header too long") from None
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "connection closed inside the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"malformed header {line[:80]!r}")
        request.headers[name.strip().lower()] = value.strip()
    else:
        raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "chunked request bodies are not supported")
    length_text = request.headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_text!r}")
    length = int(length_text)
    if length > MAX_BODY:
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
    try:
        request.body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "connection closed inside the body") from None
    return request


@dataclass
class Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, keep_alive: bool, head: bool = False) -> bytes:
        headers = {
            "Server": SERVER,
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Connection": "keep-alive" if keep_alive else "close",
            **self.headers,
        }
        lines = [f"HTTP/1.1 {self.status.value} {self.status.phrase}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        return "".join([*lines, "\r\n"]).encode("latin-1") + (b"" if head else self.body)


def not_allowed(*methods: str) -> Response:
    allow = ", ".join(methods)
    body = f"use {allow}\n".encode()
    return Response(HTTPStatus.METHOD_NOT_ALLOWED, body, headers={"Allow": allow})


class App:
    """The routes; ``served`` counts requests across connections."""

    def __init__(self) -> None:
        self.served = 0

    def route(self, request: Request) -> Response:
        self.served += 1
        url = urlsplit(request.target)
        method = "GET" if request.method == "HEAD" else request.method
        if url.path == "/":
            if method != "GET":
                return not_allowed("GET", "HEAD")
            page = (
                "<!doctype html>\n<html><head><title>Hello through the relay</title></head>\n"
                "<body><h1>Hello through the relay</h1>\n"
                f"<p>This page was served by an asyncio server behind a relay. "
                f"Requests served: {self.served}.</p></body></html>\n"
            )
            return Response(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        if url.path == "/hello":
            if method != "GET":
                return not_allowed("GET", "HEAD")
            name = parse_qs(url.query).get("name", ["world"])[0]
            return Response(HTTPStatus.OK, f"hello, {name}\n".encode())
        if url.path == "/echo":
            if request.method != "POST":
                return not_allowed("POST")
            content_type = request.headers.get("content-type", "application/octet-stream")
            return Response(HTTPStatus.OK, request.body, content_type)
        if url.path == "/health":
            return Response(HTTPStatus.OK, b"ok\n")
        body = f"<h1>404</h1><p>{html.escape(url.path)} is not here.</p>\n".encode()
        return Response(HTTPStatus.NOT_FOUND, body, "text/html; charset=utf-8")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests in order until the client or ``Connection: close`` ends it."""
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    writer.write(Response(exc.status, f"{exc}\n".encode()).encode(keep_alive=False))
                    break
                if request is None:
                    break
                response = self.route(request)
                writer.write(
                    response.encode(keep_alive=request.keep_alive, head=request.method == "HEAD")
                )
                await writer.drain()
                if not request.keep_alive:
                    break
            await writer.drain()
        finally:
            writer.close()


async def main(args: argparse.Namespace) -> None:
    app = App()
    if args.direct is not None:  # the same handler as a plain local asyncio server
        server = await asyncio.start_server(app.handle, "127.0.0.1", args.direct)
        print(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()
        return
    server = await relay.start_server(app.handle, args.relay_host, args.relay_port)
    print(server.public_endpoint, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="HTTP/1.1 example server behind a relay")
    parser.add_argument("relay_host", nargs="?", default="127.0.0.1")
    parser.add_argument("relay_port", nargs="?", type=int, default=7000)
    parser.add_argument(
        "--direct",
        type=int,
        metavar="PORT",
        help="serve locally on PORT with asyncio.start_server instead",
    )
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, TimeoutError) as exc:  # relay unreachable, refused, or lost
        sys.exit(f"web_server: {exc}")
