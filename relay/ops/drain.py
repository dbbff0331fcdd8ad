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
import gc
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


class Stopper:
    """What the signals do to a running ``main()``; code can ask for the same (a worker
    process told by its supervisor), as ``request_drain()`` and ``request_stop()``."""

    def __init__(
        self,
        task: asyncio.Task[int],
        drain: Drain,
        drain_timeout: float,
        on_drain: Callable[[], object] | None,
    ) -> None:
        self._task = task
        self._drain = drain
        self._drain_timeout = drain_timeout
        self._on_drain = on_drain
        self.received: list[int] = []
        """The signals so far (a requested drain counts as SIGTERM, a requested stop as
        SIGTERM without a drain)."""
        self.draining: list[asyncio.Task[None]] = []
        self._absorb: set[int] = set()
        """Signals that a request already stood for: the first of each is not a second one
        (a supervisor and systemd or a terminal may both tell a worker, in either order)."""

    def on_signal(self, signum: int, why: str | None = None) -> None:
        """``signum`` arrived (``why``: who asked for it instead of a signal)."""
        if why is None and signum in self._absorb:
            self._absorb.discard(signum)
            logger.debug("%s: already under way", signal.Signals(signum).name)
            return
        self._absorb.clear()
        name = why or signal.Signals(signum).name
        what = why or f"{name} received"
        if len(self.received) >= 2 or (self.received and not self.draining):
            logger.warning("%s again: exiting now", name)
            logging.shutdown()  # os._exit skips it: write the lines still buffered
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else 128 + signum)
        if self.received:
            logger.warning("%s during the drain: closing every connection now", name)
            self.received.append(signum)
            self.draining[0].cancel()
            self._task.cancel()
            return
        self.received.append(signum)
        if signum == signal.SIGTERM and self._drain_timeout > 0:
            self._drain.start()
            logger.info(
                "%s: draining for up to %g s (a second signal stops at once)",
                what,
                self._drain_timeout,
            )
            if self._on_drain is not None:
                self._on_drain()
            self.draining.append(
                asyncio.get_running_loop().create_task(self._drain_then_stop(), name="relay-drain")
            )
            return
        logger.info("%s: shutting down", what)
        if self._on_drain is not None:
            self._on_drain()
        self._task.cancel()

    def request_drain(self, why: str) -> None:
        """Drain as after a first SIGTERM; nothing if a drain or stop is under way already
        (so a SIGTERM from systemd and the same request from a supervisor are one)."""
        if not self.received:
            self.on_signal(signal.SIGTERM, why)
            self._absorb = {signal.SIGTERM}

    def request_stop(self, why: str) -> None:
        """Close everything now (exit 0), a drain under way included."""
        if self.draining and len(self.received) < 2:
            self.on_signal(signal.SIGTERM, why)
        elif not self.received:
            logger.info("%s: shutting down", why)
            self.received.append(signal.SIGTERM)
            self._task.cancel()
        else:
            return
        self._absorb = {signal.SIGTERM, signal.SIGINT}

    async def _drain_then_stop(self) -> None:
        try:
            async with asyncio.timeout(self._drain_timeout):
                await self._drain.wait_idle()
            logger.info("drained: no connection in flight; exiting")
        except TimeoutError:
            logger.warning(
                "drain timeout (%g s) passed: closing what is still open",
                self._drain_timeout,
                extra={"duration": self._drain_timeout},
            )
        self._task.cancel()


def run_until_signal(
    main: Callable[[], Awaitable[int]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    *,
    drain: Drain,
    drain_timeout: float,
    on_drain: Callable[[], object] | None = None,
    controls: Callable[[Stopper], object] | None = None,
) -> int:
    """Run ``main()`` in a fresh event loop until it returns or a signal stops it.

    Returns main's exit status, 130 after SIGINT and 0 after SIGTERM (drained
    or not). ``on_drain`` runs when the drain starts (sd_notify STOPPING=1);
    ``controls`` gets the ``Stopper`` before ``main()`` starts, for code that asks
    for a drain or a stop without a signal.
    """

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopper = Stopper(task, drain, drain_timeout, on_drain)
        logger.debug("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopper.on_signal, signum)
        if controls is not None:
            controls(stopper)
        # What exists by now (modules, configuration: some 50,000 objects) lives as long
        # as the process: out of the cyclic collector's way, whose full collections
        # otherwise go through all of it again and again under a stream of connections
        # (7 % of a short connection's CPU time).
        gc.freeze()
        try:
            return await main()
        except asyncio.CancelledError:
            if not stopper.received:
                raise
            return EXIT_SIGINT if stopper.received[0] == signal.SIGINT else EXIT_SIGTERM
        finally:
            for drainer in stopper.draining:
                drainer.cancel()
            if stopper.draining:
                await asyncio.wait(stopper.draining)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner_:
            return runner_.run(runner())
    except KeyboardInterrupt:
        return EXIT_SIGINT
