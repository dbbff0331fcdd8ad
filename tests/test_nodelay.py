"""TCP_NODELAY on every socket that carries relayed bytes, on both sides, on both loops.

A relay and a forwarder run in this process with an echo service; once a public
connection is through, every TCP socket of the process is looked at (its
descriptor in /proc/self/fd) and sorted by its ports: the relay's end of the
control connection and of the public connection, the forwarder's end of the
control connection and of its connection to the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import relay

HOST = "127.0.0.1"


BOTH_LOOPS = True
"""Every test runs on asyncio's own loop and on uvloop (``conftest``)."""


def tcp_sockets() -> Iterator[tuple[tuple[str, int], tuple[str, int] | None, bool]]:
    """(local address, peer address or None, TCP_NODELAY) of every TCP socket we hold."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile (the listdir's own descriptor)
        with sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                continue
            try:
                peer = sock.getpeername()[:2]
            except OSError:
                peer = None  # listening
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            yield sock.getsockname()[:2], peer, nodelay


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_every_relayed_socket_has_nodelay_on_both_sides() -> None:
    service = await asyncio.start_server(echo, HOST, 0)
    service_port = service.sockets[0].getsockname()[1]
    endpoints: asyncio.Queue[str] = asyncio.Queue()
    async with service, relay.RelayServer(0, bind=HOST) as server:
        forwarder = relay.Forwarder(
            HOST, server.port, service_port, reconnect=False, on_endpoint=endpoints.put_nowait
        )
        task = asyncio.create_task(forwarder.run())
        try:
            public_port = int((await asyncio.wait_for(endpoints.get(), 10)).rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection(HOST, public_port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            client_port = writer.get_extra_info("sockname")[1]
            found: dict[str, bool] = {}
            for local, peer, nodelay in tcp_sockets():
                if peer is None:
                    continue
                if local[1] == server.port:
                    found["relay: control connection"] = nodelay
                elif peer[1] == server.port:
                    found["forwarder: control connection"] = nodelay
                elif local[1] == public_port and peer[1] == client_port:
                    found["relay: public connection"] = nodelay
                elif peer[1] == service_port:
                    found["forwarder: service connection"] = nodelay
            writer.close()
            assert found == {
                "relay: control connection": True,
                "forwarder: control connection": True,
                "relay: public connection": True,
                "forwarder: service connection": True,
            }
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
