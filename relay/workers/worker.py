"""A worker process of ``relay server --workers N``: ``python -m relay.workers.worker``.

It reads its ``WorkerSetup`` from stdin, listens on the shared control port
with a socket of its own (SO_REUSEPORT), and runs a ``RelayServer`` like a
single relay does: the registrations it admits are its own, with their public
ports and every connection on them; with ``--domain`` it listens on the shared
ports too, and learns and tells which worker holds each host name
(``relay.workers.routes``). Through its channel the supervisor scrapes
its metrics and status and asks it to drain, stop or re-read the auth file.
Signals work as for a single relay (SIGTERM drains, SIGINT stops, SIGHUP
re-reads the auth file), so a signal sent to the whole process group (systemd,
a terminal) and the same request through the channel are one. When the
channel ends the supervisor is gone: the worker closes everything and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from ..ops import drain, logs
from ..ops.metrics import RelayCollector, relay_status
from ..server.failures import FailureLimiter
from ..server.identities import Verdict
from ..server.ports import StoreDownError
from ..server.relay import RelayServer
from ..server.request import RegistrationRequest
from ..server.shared_failures import SharedFailureLimiter
from ..store import StoreError
from ..store.failures import SqliteFailureCounts
from ..store.state_dir import StateDirError
from .channel import Channel, ChannelClosedError, Message
from .handoff import Handoff
from .lines import Passed, WorkerLines
from .routes import HandoffCollector, WorkerHosts
from .setup import WorkerSetup

logger = logging.getLogger("relay.workers")

FAILURES_NAME = "failures.sqlite3"
"""The failed registrations of every worker, in the state directory they share."""


class Worker:
    """The worker's relay and its side of the channel."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        options = setup.relay_options()
        self.failures: SqliteFailureCounts | None = None
        """Failed registrations, counted by every worker (none with ``--cluster``: the
        relay counts them in Redis with the other relays)."""
        shared: SharedFailureLimiter | None = None
        if setup.state_dir is not None:
            # A key (a source, or a source and client name) gets one allowance on the host,
            # wherever the kernel sends its connections: each worker counts in its own table
            # (a share of --max-failure-sources) and in the shared one, and reads the host's
            # blocks back every second.
            usual = FailureLimiter()
            self.failures = SqliteFailureCounts.open(Path(setup.state_dir) / FAILURES_NAME)
            shared = SharedFailureLimiter(
                self.failures, usual.limit, usual.window, options.max_failure_sources
            )
        self.server = RelayServer(setup.port, options, worker=setup.role, auth_failures=shared)
        self.stopper: drain.Stopper | None = None
        """What the signals do, also asked for through the channel (``run_until_signal``)."""
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(RelayCollector(self.server))
        if self.server.shared is not None:
            self._registry.register(HandoffCollector(self.server.stats))
        self.hosts: WorkerHosts | None = None
        """Which worker holds each host name (``--domain``)."""

    async def run(self) -> int:
        channel = await Channel.open(
            socket.socket(fileno=self.setup.channel_fd), self.answer, self._supervisor_gone
        )
        self.server.registrar.identities = SupervisorIdentities(channel)
        self.lines = WorkerLines(
            socket.socket(fileno=self.setup.lines_fd),
            {peer: socket.socket(fileno=fd) for peer, fd in self.setup.peer_fds.items()},
            self._adopt,
        )
        self.server.hand_off = self._hand_off
        if self.server.shared is not None:
            self.hosts = WorkerHosts(self.server.shared, channel, self.lines)
        try:
            return await self._serve(channel)
        finally:
            if self.failures is not None:
                self.failures.close()
            channel.close()
            await channel.wait_closed()
            self.lines.close()

    async def _serve(self, channel: Channel) -> int:
        try:
            await self.server.start()
        except (OSError, StoreError) as exc:
            if isinstance(exc, StateDirError | StoreError) or not exc.errno:
                logger.error("%s", exc)
            else:
                logger.error("cannot listen on port %d: %s", self.setup.port, exc.strerror)
            return 1
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.server.reload_auth)
        try:
            channel.notify({"op": "ready", "holder": self.server.allocator.store.holder})
            await self.server.serve_forever()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            self.server.close()
            await self.server.wait_closed()
        return 0

    async def answer(self, message: Message) -> Message | None:
        """A request or notice from the supervisor."""
        op = message.get("op")
        if op == "scrape":
            readiness = self.server.readiness()
            return {
                "metrics": generate_latest(self._registry).decode(),
                "status": relay_status(self.server),
                "readiness": {"ready": readiness.ready, "reason": readiness.reason},
            }
        if op == "settle":
            alive = await self.server.settle(message["sessions"], message["newcomer"])
            return {"alive": sorted(alive)}
        if op in ("host", "hosts") and self.hosts is not None:
            self.hosts.heard(message)
            return None
        assert self.stopper is not None
        if op == "drain":
            self.stopper.request_drain("the supervisor asked for a drain")
        elif op == "stop":
            self.stopper.request_stop("the supervisor asked to stop")
        elif op == "reload":
            self.server.reload_auth()
        elif op == "retire":
            self.server.retire(
                message["session"],
                f"moves to worker {message['to']}, so that its service uses both",
            )
        elif op == "host taken":
            self.server.retire(
                message["session"], f"host name {message['host']} is held by another worker"
            )
        else:
            logger.error("unknown request from the supervisor: %r", op)
        return None

    def _hand_off(
        self, transport: asyncio.Transport, early: bytes, request: RegistrationRequest, to: int
    ) -> None:
        """Pass the registration on ``transport`` to worker ``to`` (on the line between the
        two); this process lets go of the connection."""
        fd = os.dup(transport.get_extra_info("socket").fileno())
        try:
            self.lines.send(to, Handoff(request, early), fd)
        finally:
            os.close(fd)
        transport.abort()

    def _adopt(self, message: Passed, fd: int) -> None:
        if isinstance(message, Handoff):
            self.server.adopt(socket.socket(fileno=fd), message.request, message.early)
        else:  # only a worker with shared ports hands on connections of them
            assert self.hosts is not None
            self.hosts.received(message, fd)

    def _supervisor_gone(self) -> None:
        if self.stopper is not None and not self.server.closing:
            logger.error("the supervisor is gone; closing every connection of this worker")
            self.stopper.request_stop("the supervisor is gone")

    def controls(self, stopper: drain.Stopper) -> None:
        self.stopper = stopper


class SupervisorIdentities:
    """The supervisor's identity table (``relay.server.identities``), through the channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def claim(
        self, key: str | None, sessions: int, authenticated: bool, newcomer: str, movable: bool
    ) -> Verdict:
        try:
            answer = await self.channel.request(
                {
                    "op": "claim",
                    "key": key,
                    "sessions": sessions,
                    "authenticated": authenticated,
                    "newcomer": newcomer,
                    "movable": movable,
                }
            )
        except ChannelClosedError:
            raise StoreDownError("the relay's supervisor is gone") from None
        return Verdict(
            answer["kind"],
            answer["ref"],
            answer["port"],
            answer["holders"],
            answer["worker"],
            answer["peer"],
        )

    def registered(self, ref: int, session: int, port: int) -> None:
        self.channel.notify({"op": "registered", "ref": ref, "session": session, "port": port})

    def dropped(self, ref: int) -> None:
        self.channel.notify({"op": "dropped", "ref": ref})


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
