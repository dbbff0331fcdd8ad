"""Signals and graceful drain: how ``relay server`` and ``relay forward`` stop.

SIGTERM (what systemd, docker and kubernetes send) drains: the relay stops
taking registrations and public connections at once and sends Go Away to every
session; the forwarder sends Go Away, so the relay frees its public port at
once. Connections in flight go on until they finish or ``--drain-timeout``
passes; then the rest are closed and the program exits 0. SIGINT (Ctrl-C), a
second signal during the drain, or ``--drain-timeout 0`` stop at once: every
connection is closed (exit 130 after SIGINT, 0 after SIGTERM); a further
signal during that exits without cleaning up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..client.forwarder import Forwarder
from ..server.interface import Relay

logger = logging.getLogger("relay.drain")

EXIT_SIGINT = 130
EXIT_SIGTERM = 0


@dataclass(frozen=True)
class Drain:
    """``start()`` stops new work at once; ``wait_idle()`` returns once nothing is in flight."""

    start: Callable[[], None]
    wait_idle: Callable[[], Awaitable[None]]


def relay_drain(server: Relay) -> Drain:
    return Drain(server.drain, server.wait_idle)


def forwarder_drain(forwarder: Forwarder) -> Drain:
    async def wait_idle() -> None:
        for traffic in forwarder.traffic.values():
            await traffic.wait_idle()

    return Drain(forwarder.drain, wait_idle)


def run_until_signal(
    main: Callable[[], Awaitable[int]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    *,
    drain: Drain,
    drain_timeout: float,
    on_drain: Callable[[], object] | None = None,
) -> int:
    """Run ``main()`` in a fresh event loop until it returns or a signal stops it.

    Returns main's exit status, 130 after SIGINT and 0 after SIGTERM (drained
    or not). ``on_drain`` runs when the drain starts (sd_notify STOPPING=1).
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []
        draining: list[asyncio.Task[None]] = []

        async def drain_then_stop() -> None:
            try:
                async with asyncio.timeout(drain_timeout):
                    await drain.wait_idle()
                logger.info("drained: no connection in flight; exiting")
            except TimeoutError:
                logger.warning(
                    "drain timeout (%g s) passed: closing what is still open",
                    drain_timeout,
                    extra={"duration": drain_timeout},
                )
            task.cancel()

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if len(received) >= 2 or (received and not draining):
                logger.warning("%s again: exiting now", name)
                logging.shutdown()  # os._exit skips it: write the lines still buffered
                os._exit(EXIT_SIGINT if signum == signal.SIGINT else 128 + signum)
            if received:
                logger.warning("%s during the drain: closing every connection now", name)
                received.append(signum)
                draining[0].cancel()
                task.cancel()
                return
            received.append(signum)
            if signum == signal.SIGTERM and drain_timeout > 0:
                drain.start()
                logger.info(
                    "%s received: draining for up to %g s (a second signal stops at once)",
                    name,
                    drain_timeout,
                )
                if on_drain is not None:
                    on_drain()
                draining.append(loop.create_task(drain_then_stop(), name="relay-drain"))
                return
            logger.info("%s received: shutting down", name)
            if on_drain is not None:
                on_drain()
            task.cancel()

        logger.debug("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await main()
        except asyncio.CancelledError:
            if not received:
                raise
            return EXIT_SIGINT if received[0] == signal.SIGINT else EXIT_SIGTERM
        finally:
            for drainer in draining:
                drainer.cancel()
            if draining:
                await asyncio.wait(draining)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner_:
            return runner_.run(runner())
    except KeyboardInterrupt:
        return EXIT_SIGINT
