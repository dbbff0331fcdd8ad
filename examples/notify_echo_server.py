"""An echo server for ``relay server --protocol notify`` (the first seed design).

    relay server --protocol notify 7000 &                   # a relay in notify mode
    python examples/notify_echo_server.py 127.0.0.1 7000    # prints the public endpoint
    socat - TCP:127.0.0.1:PUBLIC_PORT                       # type lines, they come back

Standard library only, like a server written for the original relayServer:
connect to the control port, read the public port line, then for every
``[NEW]<port>`` line dial the relay at that port and echo on that connection.
A relay with ``--notify-token`` sends ``[NEW]<port> <token>``: then the
dial-back sends ``<token>`` and a newline first, which proves it is ours.
"""

from __future__ import annotations

import asyncio
import sys


async def echo(relay_host: str, port: int, token: bytes | None) -> None:
    reader, writer = await asyncio.open_connection(relay_host, port)
    if token is not None:
        writer.write(token + b"\n")
    while data := await reader.read(64 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()  # the client sent EOF: send ours after the last byte
    await writer.wait_closed()


async def main(relay_host: str, relay_port: int) -> None:
    control, keep_open = await asyncio.open_connection(relay_host, relay_port)
    first = (await control.readline()).decode().strip()
    if not first.isdigit():
        sys.exit(f"notify_echo_server: the relay answered {first!r}")
    print(f"{relay_host}:{first}", flush=True)
    sessions: set[asyncio.Task[None]] = set()
    while line := await control.readline():
        if not line.startswith(b"[NEW]"):
            continue
        port, *token = line[5:].split()
        task = asyncio.create_task(echo(relay_host, int(port), token[0] if token else None))
        sessions.add(task)
        task.add_done_callback(sessions.discard)
    keep_open.close()
    sys.exit("notify_echo_server: the relay closed the control connection")


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7000
    try:
        asyncio.run(main(host, port))
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        sys.exit(f"notify_echo_server: {exc}")
