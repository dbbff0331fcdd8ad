"""SlowLink: a TCP proxy that behaves like a long, thin link (this kernel has no sch_netem).

Every connection accepted on the listen address is proxied to the target, and
each direction is modelled as a bottleneck of ``rate`` bytes/s followed by
``delay`` seconds of propagation: a chunk read at time t leaves the bottleneck
at ``max(t, previous departure) + len / rate`` and is written to the other
side ``delay`` later. The bottleneck of a direction is shared by all proxied
connections, as one link's is. Bytes in flight per direction (queued at the
bottleneck or propagating) are bounded by about ``rate * delay`` plus a queue
of ``slack`` bytes; beyond that the proxy stops reading its sources, so TCP's
own flow control pushes back on the senders, as a full router queue would. A
window-limited protocol running through it (yamux over the proxied TCP
connection) therefore sees the round trip: it cannot get more than
window / (2 * delay) per stream.

It is built on asyncio protocols and writes whole chunks (one timer per
direction, batching everything due within 1 ms of it), so one process keeps
up with about 1 Gbit/s on loopback. Timers fire at the event loop's
resolution (epoll waits whole milliseconds, rounded up), so bytes arrive up
to about 1 ms late: ``delay=0.0005`` gives a round trip of about 2.4 ms,
``delay=0.025`` one of about 51 ms. Benchmarks should report the round trip
they measured.

``blackhole(True)`` makes the path dead without closing anything: no byte is
delivered either way (they queue until the bound and then the senders stall)
until ``blackhole(False)``, when delivery resumes in order.

Run as a process (e.g. inside a network namespace)::

    python -m testkit.link --listen 10.0.0.1:7000 --target 10.0.1.2:7000 \\
        --delay 0.025 --rate 125000000

It prints ``LISTENING HOST:PORT`` once it accepts, and ends on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Final

import yamux

logger = logging.getLogger("testkit.link")

DEFAULT_SLACK: Final = 1 << 20
"""Bottleneck queue on top of rate * delay, in bytes (a router's buffer)."""
UNLIMITED_BUFFER: Final = 16 << 20
"""Bytes in flight per direction when ``rate`` is None (nothing to derive a bound from)."""
BATCH: Final = 0.001
"""Deliver everything due within this many seconds of a timer in one go."""
READ_SIZE: Final = 256 * 1024


class _Pipe:
    """One direction of the link, shared by all connections: the bottleneck and its bound."""

    def __init__(self, link: SlowLink) -> None:
        self.link = link
        self.busy_until = 0.0
        self.in_flight = 0
        self.stalled: set[_Direction] = set()
        """Connections whose source is paused until the pipe has room again."""

    def full(self) -> bool:
        return self.in_flight >= self.link.buffer_bytes

    def admit(self, nbytes: int) -> float:
        """Queue ``nbytes`` at the bottleneck; return when they reach the far end."""
        rate = self.link.rate
        start = max(self.link.loop.time(), self.busy_until)
        self.busy_until = start + (nbytes / rate if rate else 0.0)
        self.in_flight += nbytes
        return self.busy_until + self.link.delay

    def release(self, nbytes: int) -> None:
        self.in_flight -= nbytes
        if self.stalled and not self.full():
            for direction in list(self.stalled):
                direction.update_source()


class _Direction:
    """One way of one connection: its queue of (due time, chunk), its source and sink."""

    def __init__(self, link: SlowLink, conn: _Connection, name: str) -> None:
        self.link = link
        self.conn = conn
        self.name = name
        self.pipe = link.pipes[name]
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.sink_paused = False
        self.source_paused = False
        self.eof_pending = False
        self.eof_done = False
        self.close_when_flushed = False

    def push(self, data: bytes) -> None:
        self.queue.append((self.pipe.admit(len(data)), data))
        self.queued += len(data)
        self.update_source()
        self.schedule()

    def push_eof(self) -> None:
        """The source half-closed: pass the EOF on after the bytes before it."""
        self.eof_pending = True
        self.kick()

    def kick(self) -> None:
        """Deliver what is owed now that the sink exists or the link is alive again."""
        if self.queue:
            self.schedule()
        elif self.eof_pending and not self.eof_done:
            self.deliver()

    def schedule(self) -> None:
        if self.timer is not None or not self.queue or self.link.dead or self.sink is None:
            return
        self.timer = self.link.loop.call_at(self.queue[0][0], self.deliver)

    def deliver(self) -> None:
        """Write every chunk that is due (within BATCH) to the sink, in one buffered write."""
        self.timer = None
        sink = self.sink
        if self.link.dead or sink is None or sink.is_closing():
            return
        horizon = self.link.loop.time() + BATCH
        parts = []
        while self.queue and self.queue[0][0] <= horizon:
            parts.append(self.queue.popleft()[1])
        if parts:
            data = b"".join(parts)
            self.queued -= len(data)
            self.pipe.release(len(data))
            sink.write(data)
            self.conn.delivered(self.name, len(data))
        if self.queue:
            self.schedule()
        elif self.close_when_flushed:
            self.conn.close()
            return
        elif self.eof_pending and not self.eof_done:
            self.eof_done = True
            if sink.can_write_eof():
                sink.write_eof()
            self.conn.half_closed()
        self.update_source()

    def update_source(self) -> None:
        """Pause reading the source while the link is full or the sink cannot take more."""
        if self.source is None or self.source.is_closing():
            self.pipe.stalled.discard(self)
            return
        full = self.pipe.full()
        if full:
            self.pipe.stalled.add(self)
        else:
            self.pipe.stalled.discard(self)
        should_pause = full or self.sink_paused
        if should_pause and not self.source_paused:
            self.source_paused = True
            self.source.pause_reading()
        elif not should_pause and self.source_paused:
            self.source_paused = False
            self.source.resume_reading()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.pipe.stalled.discard(self)
        queued, self.queued = self.queued, 0
        self.pipe.release(queued)


class _Side(asyncio.Protocol):
    """One TCP connection of a proxied pair (the accepted one or the one to the target)."""

    def __init__(self, conn: _Connection, out: _Direction, into: _Direction) -> None:
        self.conn = conn
        self.out = out  # bytes read here travel this way
        self.into = into  # bytes written here come this way
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.out.source = transport
        self.into.sink = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=READ_SIZE * 4)
        self.out.update_source()
        self.into.kick()

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.out.push_eof()
        return True  # keep the transport open for the other direction

    def pause_writing(self) -> None:
        self.into.sink_paused = True
        self.into.update_source()

    def resume_writing(self) -> None:
        self.into.sink_paused = False
        self.into.update_source()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self)


class _Connection:
    """One proxied client connection: two sides, two directions, closed together."""

    def __init__(self, link: SlowLink) -> None:
        self.link = link
        self.up = _Direction(link, self, "up")  # client -> target
        self.down = _Direction(link, self, "down")  # target -> client
        self.client = _Side(self, self.up, self.down)
        self.target = _Side(self, self.down, self.up)
        self.half_closes = 0
        self.closed = False

    def delivered(self, direction: str, nbytes: int) -> None:
        self.link.bytes_delivered[direction] += nbytes

    def half_closed(self) -> None:
        self.half_closes += 1
        if self.half_closes == 2:
            self.close()

    def side_lost(self, side: _Side) -> None:
        """One socket ended (reset or closed): the pair ends, like a proxy's does.

        Bytes already read from the lost side are still delivered to the other first.
        """
        if self.closed:
            return
        owed, unreachable = (self.up, self.down) if side is self.client else (self.down, self.up)
        unreachable.cancel()
        sink = owed.sink
        if owed.queue and sink is not None and not sink.is_closing() and not self.link.dead:
            owed.close_when_flushed = True
            owed.schedule()
            return
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for side in (self.client, self.target):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        self.link.connections.discard(self)

    def abort(self) -> None:
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for side in (self.client, self.target):
            if side.transport is not None:
                side.transport.abort()
        self.link.connections.discard(self)

    def revive(self) -> None:
        self.up.kick()
        self.down.kick()


class SlowLink:
    """A delay and rate limited TCP proxy to ``target_host:target_port``; see the module doc.

    ``rate`` is in bytes per second (None: no rate limit); ``delay`` in seconds,
    one way. ``slack`` is the bottleneck queue beyond rate * delay; ``buffer``
    overrides the whole per-direction bound.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float,
        rate: float | None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        slack: int = DEFAULT_SLACK,
        buffer: int | None = None,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s or None, got {rate!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.delay = float(delay)
        self.rate = float(rate) if rate is not None else None
        self.listen_host = listen_host
        self.listen_port = listen_port
        if buffer is None:
            buffer = int(self.rate * self.delay) + slack if self.rate else UNLIMITED_BUFFER
        self.buffer_bytes = max(buffer, READ_SIZE)
        self.pipes = {"up": _Pipe(self), "down": _Pipe(self)}
        self.dead = False
        self.connections: set[_Connection] = set()
        self.bytes_delivered = {"up": 0, "down": 0}
        self._server: asyncio.Server | None = None
        self._pending = yamux.TaskOwner(logger)
        """The dials to the target, one per accepted connection."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "SlowLink.start() was not awaited"
        return self._loop

    @property
    def port(self) -> int:
        """The port it listens on (the OS's choice for listen_port=0)."""
        if self._port is None:
            raise RuntimeError("SlowLink.start() was not awaited")
        return self._port

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            self._accept, self.listen_host, self.listen_port, backlog=4096
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    def _accept(self) -> _Side:
        conn = _Connection(self)
        self.connections.add(conn)
        self._pending.spawn(self._dial(conn), name="slowlink-dial")
        return conn.client

    async def _dial(self, conn: _Connection) -> None:
        try:
            await self.loop.create_connection(
                lambda: conn.target, self.target_host, self.target_port
            )
        except OSError:
            conn.abort()  # the target refused: the client sees a reset, as with a dead server

    def blackhole(self, on: bool = True) -> None:
        """Stop (on) or resume (off) delivering bytes both ways; connections stay open."""
        self.dead = on
        if not on:
            for conn in list(self.connections):
                conn.revive()

    async def close(self) -> None:
        """Stop listening, abort every proxied connection, and wait for all of it."""
        if self._server is not None:
            self._server.close()
        self._pending.cancel()
        await self._pending.wait()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let the aborted transports run connection_lost

    async def __aenter__(self) -> SlowLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with SlowLink(
        *args.target,
        delay=args.delay,
        rate=args.rate,
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        slack=args.slack,
    ) as link:
        print(f"LISTENING {args.listen[0]}:{link.port}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m testkit.link",
        description="A TCP proxy that delays and rate-limits each "
        "direction like a long, thin link.",
    )
    ap.add_argument(
        "--listen",
        type=_address,
        required=True,
        metavar="HOST:PORT",
        help="where to accept (port 0: any; the chosen one is printed)",
    )
    ap.add_argument(
        "--target",
        type=_address,
        required=True,
        metavar="HOST:PORT",
        help="where every accepted connection is proxied to",
    )
    ap.add_argument(
        "--delay",
        type=float,
        required=True,
        metavar="S",
        help="one-way delay of each direction in seconds (RTT = 2 x delay)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="BYTES_PER_S",
        help="bottleneck rate of each direction (default: unlimited)",
    )
    ap.add_argument(
        "--slack",
        type=int,
        default=DEFAULT_SLACK,
        metavar="BYTES",
        help="bottleneck queue on top of rate x delay",
    )
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        print(f"testkit.link: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
