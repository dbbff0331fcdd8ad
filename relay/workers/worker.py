"""A worker process of ``relay server --workers N``: ``python -m relay.workers.worker``.

It reads its ``WorkerSetup`` from stdin, listens on the shared control port
with a socket of its own (SO_REUSEPORT), and runs a ``RelayServer`` like a
single relay does: the registrations it admits are its own, with their public
ports and every connection on them. Through its channel the supervisor scrapes
its metrics and status and asks it to drain, stop or re-read the auth file.
Signals work as for a single relay (SIGTERM drains, SIGINT stops, SIGHUP
re-reads the auth file), so a signal sent to the whole process group (systemd,
a terminal) and the same request through the channel are one. When the
channel ends the supervisor is gone: the worker closes everything and exits.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import signal
import socket
import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from ..ops import drain, logs
from ..ops.metrics import RelayCollector, relay_status
from ..store.state_dir import StateDirError
from ..server.relay import RelayServer
from .channel import Channel, Message
from .setup import WorkerSetup

logger = logging.getLogger("relay.workers")


class Worker:
    """The worker's relay and its side of the channel."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.server = RelayServer(setup.port, setup.relay_options(), worker=setup.role)
        self.stopper: drain.Stopper | None = None
        """What the signals do, also asked for through the channel (``run_until_signal``)."""
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(RelayCollector(self.server))

    async def run(self) -> int:
        try:
            await self.server.start()
        except StateDirError as exc:
            logger.error("%s", exc)
            return 1
        except OSError as exc:
            logger.error("cannot listen on port %d: %s", self.setup.port, exc.strerror or exc)
            return 1
        loop = asyncio.get_running_loop()
        channel = await Channel.open(
            socket.socket(fileno=self.setup.channel_fd), self.answer, self._supervisor_gone
        )
        loop.add_signal_handler(signal.SIGHUP, self.server.reload_auth)
        try:
            channel.notify({"op": "ready"})
            await self.server.serve_forever()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            self.server.close()
            await self.server.wait_closed()
            channel.close()
            await channel.wait_closed()
        return 0

    async def answer(self, message: Message) -> Message | None:
        """A request or notice from the supervisor."""
        op = message.get("op")
        if op == "scrape":
            return {
                "metrics": generate_latest(self._registry).decode(),
                "status": relay_status(self.server),
            }
        assert self.stopper is not None
        if op == "drain":
            self.stopper.request_drain("the supervisor asked for a drain")
        elif op == "stop":
            self.stopper.request_stop("the supervisor asked to stop")
        elif op == "reload":
            self.server.reload_auth()
        else:
            logger.error("unknown request from the supervisor: %r", op)
        return None

    def _supervisor_gone(self) -> None:
        if self.stopper is not None and not self.server.closing:
            logger.error("the supervisor is gone; closing every connection of this worker")
            self.stopper.request_stop("the supervisor is gone")

    def controls(self, stopper: drain.Stopper) -> None:
        self.stopper = stopper


def main() -> None:
    setup: WorkerSetup = pickle.load(sys.stdin.buffer)
    process = setup.process
    logs.setup(
        process.level,
        process.log_format,
        connection_log=process.connection_log,
        worker=setup.index,
    )
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if setup.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    worker = Worker(setup)
    sys.exit(
        drain.run_until_signal(
            worker.run,
            loop_factory,
            drain=drain.relay_drain(worker.server),
            drain_timeout=process.drain_timeout,
            controls=worker.controls,
        )
    )


if __name__ == "__main__":
    main()
