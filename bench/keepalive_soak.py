"""Keepalive soak (issue #8 item 6): a saturated slow link must never kill a healthy session.

Two yamux sessions talk through ``testkit.link.SlowLink`` (default 10 Mbit/s,
50 ms each way) with N streams of bulk data both ways and keepalive on both
sides. For the whole run a prober pings from each side once a second and
records the round trip; a session that dies is counted and replaced. At the
end the link is blackholed and the time until the client session declares the
peer dead is measured.

    python3 -m bench.keepalive_soak --seconds 300 --event-loop uvloop
    python3 -m bench.keepalive_soak --seconds 300 --event-loop asyncio

Under the old rule (dead when no pong within the timeout) every ping slower
than the timeout was a false death; the report counts them as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import yamux
from testkit.link import SlowLink

CHUNK = bytes(64 * 1024)


async def pump(stream: yamux.Stream) -> None:
    """Write as fast as the window allows and read everything the other side writes."""

    async def write() -> None:
        while True:
            stream.write(CHUNK)
            await stream.drain()

    async def read() -> None:
        while await stream.read(1 << 16):
            pass

    with contextlib.suppress(yamux.YamuxError, ConnectionError):
        await asyncio.gather(write(), read())


class ThreadedLink:
    """testkit's SlowLink on asyncio's own loop in a thread of its own.

    The sessions under test may then run on uvloop, and the link's timers do not
    wait behind their work on the same loop.
    """

    def __init__(self, target_port: int, *, rate: float, delay: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="slow-link", daemon=True
        )
        self.link = SlowLink("127.0.0.1", target_port, delay=delay, rate=rate)

    async def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def __aenter__(self) -> ThreadedLink:
        self._thread.start()
        await self._run(self.link.start())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._run(self.link.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    @property
    def port(self) -> int:
        return self.link.port

    @property
    def bytes_moved(self) -> int:
        """Bytes delivered, both directions together."""
        return sum(self.link.bytes_delivered.values())

    def blackhole(self) -> None:
        self._loop.call_soon_threadsafe(self.link.blackhole, True)


@contextlib.asynccontextmanager
async def loaded_link(
    config: yamux.Config,
    streams: int,
    *,
    rate: float,
    delay: float,
) -> AsyncIterator[tuple[yamux.Session, yamux.Session, ThreadedLink]]:
    """(client, server, link): a session pair through a slow link, ``streams`` busy both ways."""
    sessions: asyncio.Queue[yamux.Session] = asyncio.Queue()

    async def on_session(session: yamux.Session) -> None:
        await sessions.put(session)
        await session.serve(lambda reader, _writer: pump(reader))

    server = await yamux.start_server(on_session, "127.0.0.1", 0, config=config)
    async with server, ThreadedLink(server.port, delay=delay, rate=rate) as link:
        client = await yamux.connect("127.0.0.1", link.port, config=config)
        server_session = await asyncio.wait_for(sessions.get(), 5)
        tasks = [asyncio.create_task(pump(await client.open_stream())) for _ in range(streams)]
        try:
            yield client, server_session, link
        finally:
            client.close()
            await client.wait_closed()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def probe(session: yamux.Session, rtts: list[float]) -> None:
    """Ping once a second (apart from the keepalive) and record each round trip."""
    with contextlib.suppress(yamux.SessionClosedError):
        while True:
            rtts.append(await session.ping())
            await asyncio.sleep(1)


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def soak(args: argparse.Namespace) -> int:
    config = yamux.Config(
        keepalive_interval=args.interval,
        keepalive_timeout=args.timeout,
        tcp_notsent_lowat=args.lowat,
    )
    rtts: list[float] = []
    deaths: list[str] = []
    moved = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + args.seconds
    while loop.time() < end:
        async with loaded_link(config, args.streams, rate=args.rate, delay=args.delay) as (
            client,
            server,
            link,
        ):
            probes = [asyncio.create_task(probe(s, rtts)) for s in (client, server)]
            closed = [asyncio.ensure_future(s.wait_closed()) for s in (client, server)]
            await asyncio.wait(
                closed, timeout=max(0.0, end - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for session in (client, server):
                if session.close_reason is not None:
                    deaths.append(f"{time.strftime('%H:%M:%S')} {session.close_reason}")
            moved += link.bytes_moved
            if loop.time() >= end and not deaths:
                link.blackhole()
                start = loop.time()
                await asyncio.wait([closed[0]], timeout=args.interval + args.timeout + 10)
                detect = loop.time() - start
                reason = client.close_reason
            for task in probes + closed:
                task.cancel()
            await asyncio.gather(*probes, *closed, return_exceptions=True)
    slow = sum(1 for r in rtts if r > args.timeout)
    print(
        f"event loop: {type(loop).__module__}; link {args.rate * 8 / 1e6:g} Mbit/s, "
        f"{args.delay * 1000:g} ms each way; {args.streams} streams both ways; keepalive "
        f"{args.interval:g} s / {args.timeout:g} s; tcp_notsent_lowat {args.lowat}"
    )
    print(
        f"ran {args.seconds:g} s, moved {moved / 1e6:.0f} MB "
        f"({moved / args.seconds / 1e6:.2f} MB/s of {2 * args.rate / 1e6:.2f} both ways)"
    )
    print(f"session deaths under load: {len(deaths)}")
    for line in deaths:
        print(f"  {line}")
    if rtts:
        print(
            f"ping RTT under load ({len(rtts)} pings): median {statistics.median(rtts):.2f} s, "
            f"p90 {percentile(rtts, 0.9):.2f} s, p99 {percentile(rtts, 0.99):.2f} s, "
            f"max {max(rtts):.2f} s; slower than the timeout (a false death under the "
            f"old pong-only rule): {slow}"
        )
    if not deaths:
        print(
            f"blackholed peer detected after {detect:.1f} s "
            f"(bound: interval + timeout = {args.interval + args.timeout:g} s): {reason}"
        )
        if not isinstance(reason, yamux.KeepaliveTimeoutError | yamux.ConnectionWriteTimeoutError):
            return 1
    return 1 if deaths else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--interval", type=float, default=5.0, help="keepalive interval, s")
    ap.add_argument("--timeout", type=float, default=10.0, help="keepalive timeout, s")
    ap.add_argument("--rate", type=float, default=10e6 / 8, help="link rate, bytes/s")
    ap.add_argument("--delay", type=float, default=0.05, help="one-way delay, s")
    ap.add_argument(
        "--lowat",
        type=int,
        default=yamux.Config().tcp_notsent_lowat,
        help="tcp_notsent_lowat (0: kernel default)",
    )
    ap.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = ap.parse_args(argv)
    if args.event_loop == "uvloop":
        import uvloop

        return uvloop.run(soak(args))
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
