"""docs/yamux.md's example: an echo service and a client, both over one TCP connection."""

import asyncio

import yamux


async def echo(reader: yamux.Stream, writer: yamux.Stream) -> None:
    writer.write(await reader.read())  # read until the peer's FIN, send it back
    writer.close()


async def main() -> None:
    server = await yamux.start_server(lambda session: session.serve(echo), "127.0.0.1", 0)
    async with await yamux.connect("127.0.0.1", server.port) as session:
        streams = [await session.open_stream() for _ in range(3)]  # 3 streams, 1 connection
        for i, stream in enumerate(streams):
            stream.write(b"hello %d" % i)
            stream.write_eof()
        print([await stream.read() for stream in streams])
        print(f"ping: {await session.ping() * 1e6:.0f} us")
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
