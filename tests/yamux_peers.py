"""Test helpers: two real sessions over loopback TCP, and a raw frame-level peer."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from conftest import require_program

import yamux
from yamux.const import Flag, FrameType
from yamux.frame import Frame, FrameDecoder, encode_header


@contextlib.asynccontextmanager
async def session_pair(
    client_config: yamux.Config | None = None,
    server_config: yamux.Config | None = None,
) -> AsyncIterator[tuple[yamux.Session, yamux.Session]]:
    """(client session, server session) connected over 127.0.0.1."""
    accepted: asyncio.Queue[yamux.Session] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        await accepted.put(session)
        await session.wait_closed()

    server = await yamux.start_server(on_session, "127.0.0.1", 0, config=server_config)
    client = await yamux.connect("127.0.0.1", server.port, config=client_config)
    try:
        server_session = await asyncio.wait_for(accepted.get(), 5)
        yield client, server_session
    finally:
        client.close()
        await client.wait_closed()
        server.close()
        await server.wait_closed()


class RawPeer:
    """The other end of a session, spoken frame by frame by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 31)
        self.frames: list[Frame] = []

    def send(
        self, type_: FrameType, flags: Flag | int, stream_id: int, length: int, body: bytes = b""
    ) -> None:
        self.writer.write(encode_header(type_, flags, stream_id, length) + body)

    async def next_frame(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("session closed the connection")
                self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    async def expect(self, type_: FrameType, timeout: float = 5.0) -> Frame:
        """The next frame of ``type_``, skipping others (e.g. keepalive pings)."""
        while True:
            frame = await self.next_frame(timeout)
            if frame.type is type_:
                return frame


@contextlib.asynccontextmanager
async def raw_peer(
    *, client: bool = True, config: yamux.Config | None = None
) -> AsyncIterator[tuple[yamux.Session, RawPeer]]:
    """A real Session (role ``client``) connected to a RawPeer."""
    connected: asyncio.Queue[RawPeer] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connected.put(RawPeer(reader, writer))

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    session = await yamux.connect("127.0.0.1", port, client=client, config=config)
    peer = await asyncio.wait_for(connected.get(), 5)
    try:
        yield session, peer
    finally:
        session.close()
        await session.wait_closed()
        peer.writer.close()
        with contextlib.suppress(ConnectionError):
            await peer.writer.wait_closed()
        listener.close()
        await listener.wait_closed()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until true (a session state that no event or future signals)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    openssl = require_program("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
