"""An echo server that registers directly with a relay through the Python API.

    relay 7000 &                                   # a relay (control port 7000)
    python examples/echo_server.py 127.0.0.1 7000  # prints the public endpoint
    socat - TCP:127.0.0.1:PUBLIC_PORT              # type lines, they come back

    relay server --state-dir state 7000 &               # leases, registration v2
    python examples/echo_server.py 127.0.0.1 7000 echo   # a name: the same port every time

The handler is exactly what you would give ``asyncio.start_server``; only the
call that starts the server changed. When the relay restarts, the server
registers again by itself and prints its endpoint again (``on_endpoint``); with
a name (and a relay that runs registration v2) the relay keeps the port for
that name, so the endpoint stays the same across restarts of either side.
"""

from __future__ import annotations

import asyncio
import sys

import relay


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(64 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()  # the client sent EOF: send ours after the last byte


def announce(endpoint: str) -> None:
    print(endpoint, flush=True)  # e.g. 127.0.0.1:4532, again after each reconnect


async def main(relay_host: str, relay_port: int, name: str | None) -> None:
    server = await relay.start_server(echo, relay_host, relay_port, name=name, on_endpoint=announce)
    async with server:
        await server.serve_forever()  # survives relay restarts (reconnect=True by default)


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7000
    name = sys.argv[3] if len(sys.argv) > 3 else None
    try:
        asyncio.run(main(host, port, name))
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, TimeoutError) as exc:  # relay unreachable, refused, or lost
        sys.exit(f"echo_server: {exc}")
