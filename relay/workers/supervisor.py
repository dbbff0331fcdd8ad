"""``relay server --workers N``: a supervisor that runs N relay processes on one control port.

The supervisor holds no connection. It reserves the control port (a socket
bound with SO_REUSEPORT that never listens, so the port stays the relay's
while a worker restarts), starts N workers, each listening on that port with
its own SO_REUSEPORT socket (the kernel spreads new connections over them),
and watches them:

* a worker that dies (kill -9, an exception) is started again at once, then
  with a growing delay if it keeps dying young; only its own registrations
  and their connections end, and their forwarders register again;
* ``READY=1`` goes to systemd once every worker listens, ``STOPPING=1`` when
  the drain starts;
* SIGTERM drains every worker (each as a single relay does), SIGINT stops
  them, SIGHUP makes each re-read its auth file;
* ``--metrics`` is served here: each scrape asks every worker for its own
  metrics and status and merges them (``relay.workers.aggregate``);
* with ``--domain`` it reserves the shared ports too, keeps which worker holds
  each host name and tells the others (``relay.workers.routes``);
* it makes a line between each pair of workers, on which they hand each other
  connections without it (``relay.workers.lines``).

Workers are spawned (a fresh ``python -m relay.workers.worker``), not forked:
the supervisor restarts them while its own event loop runs, and a fork of a
process in the middle of an event loop (uvloop's above all) copies its
selector, signal wake-up descriptor and callbacks into the child. A fresh
interpreter costs a few hundred milliseconds per start and is always clean.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import yamux

from ..errors import RelayError
from ..net import resolve_bind_address
from ..ops import sdnotify
from ..options import ProcessOptions, RelayOptions
from ..server.identities import IdentityTable
from ..server.interface import Readiness
from ..server.siblings import open_shared_store
from ..store import StoreError
from ..store.state_dir import StateDirError, lock_state_dir
from .channel import Channel, ChannelClosedError, Message
from .handoff import pair as line_pair
from .lines import lines_to
from .routes import HOST_OPS, HostTable, reserve_shared_ports
from .setup import WorkerSetup, worker_environment

logger = logging.getLogger("relay.workers")

READY_TIMEOUT = 30.0
"""A worker must listen this long after its start, or the start failed."""
STOP_GRACE = 5.0
"""After a drain (or a stop), a worker still running this long is killed."""
SCRAPE_TIMEOUT = 2.0
"""A worker that does not answer a scrape within this is left out of it."""
SETTLE_TIMEOUT = 15.0
"""A worker pings its sessions for 2 s and waits for the silent ones to close: this is long."""
RESTART_DELAY = 0.5
"""A worker that dies again within ``STABLE_AFTER`` of its start waits this long before
its next start, doubling up to ``MAX_RESTART_DELAY``; the first death restarts at once."""
MAX_RESTART_DELAY = 5.0
STABLE_AFTER = 10.0


class WorkerProcess:
    """One worker slot: the process running in it now, its channel, its restarts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.line: socket.socket | None = None
        """Its lines to the workers that start after it go on this (``relay.workers.lines``)."""
        self.ready = False
        self.started = 0.0
        """``time.monotonic()`` of the current process's start."""
        self.since = 0.0
        """Unix time the current process listens."""
        self.restarts = 0
        self.quick_deaths = 0
        """Deaths in a row, each soon after its start (the restart delay grows)."""
        self.exited = asyncio.Event()
        self.exited.set()
        self.holder: str | None = None
        """The current process's name in the lease store (its claims go when it dies)."""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def close_line(self) -> None:
        if self.line is not None:
            self.line.close()
            self.line = None

    def tell(self, op: str) -> None:
        if self.channel is not None:
            self.channel.notify({"op": op})


class StartupError(RelayError):
    """A worker could not start at all (the first start of every worker must succeed)."""


class Supervisor:
    """Runs and watches the workers; ``run()`` until cancelled (see the module doc)."""

    def __init__(
        self, port: int, options: RelayOptions, process: ProcessOptions, *, uvloop: bool
    ) -> None:
        self.requested_port = port
        self.options = options.with_secret_read()
        """Checked; the secret file read once, here (so every worker has the same)."""
        self.process_options = replace(process, metrics=None)
        """The workers' (the supervisor alone serves metrics)."""
        self.uvloop = uvloop
        self.workers = [WorkerProcess(index) for index in range(1, options.workers + 1)]
        self.draining = False
        self.stopping = False
        self.scraped: dict[int, Message] = {}
        """Each worker's answer to the last scrape (``refresh``)."""
        self.identities = IdentityTable(
            self._settle,
            capacity=options.max_sessions,
            workers=lambda: [w.index for w in self.workers if w.ready],
        )
        """Every registration on the host, whichever worker has it (``--max-sessions`` is
        the host's)."""
        self.hosts = HostTable(lambda: [(w.index, w.channel) for w in self.workers if w.channel])
        """Which worker holds each host name (``--domain``)."""
        self._port = 0
        self._tasks = yamux.TaskOwner(logger)
        """Restarts, waiting for their delay."""
        self._watchers = yamux.TaskOwner(logger)
        """One per worker process, until it exits."""
        self._startup: asyncio.Future[None] | None = None
        self.state_dir: str | None = None
        """The lease store's directory the workers share (None: ``--cluster``)."""

    # ---------------------------------------------------------------- queries
    @property
    def port(self) -> int:
        return self._port

    @property
    def count(self) -> int:
        return len(self.workers)

    def readiness(self) -> Readiness:
        """Ready while some worker listens and, by its last scrape (``refresh``), is ready
        itself (its lease store answers); not from the drain on."""
        if self.stopping:
            return Readiness(False, "closed")
        if self.draining:
            return Readiness(False, "draining")
        listening = [w.index for w in self.workers if w.ready]
        if not listening:
            return Readiness(False, "no worker listens")
        answers = [self.scraped[i]["readiness"] for i in listening if i in self.scraped]
        if answers and not any(answer["ready"] for answer in answers):
            return Readiness(False, answers[0]["reason"])
        return Readiness(
            True, f"serving on port {self.port}, {len(listening)} of {self.count} workers"
        )

    # -------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        """Reserve the port, start every worker, run until cancelled; 1 if they cannot
        start."""
        loop = asyncio.get_running_loop()
        bind = resolve_bind_address(self.options.bind)
        try:
            reserved = bind.reserve(self.requested_port)
        except OSError as exc:
            logger.error("cannot listen on port %d: %s", self.requested_port, exc.strerror or exc)
            return 1
        self._port = int(reserved.getsockname()[1])
        try:
            self.options, shared = reserve_shared_ports(bind, self.options)
        except OSError as exc:
            logger.error("cannot listen on %s", exc.strerror)
            reserved.close()
            return 1
        try:
            unlock = self._share_store()
        except (StateDirError, OSError) as exc:
            logger.error("%s", exc)
            reserved.close()
            for sock in shared:
                sock.close()
            return 1
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            try:
                await self._start_all()
            except StartupError as exc:
                logger.error("%s", exc)
                return 1
            logger.info(
                "Serving relay requests on port %d with %d workers",
                self.port,
                self.count,
                extra={"control_port": self.port},
            )
            sdnotify.ready(f"serving relay requests on port {self.port} with {self.count} workers")
            await loop.create_future()  # until cancelled
            return 0
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await self._stop_all()
            for sock in [reserved, *shared]:
                sock.close()
            unlock()

    def _share_store(self) -> Callable[[], None]:
        """Lock the state directory for the workers (or make a private one: leases that last
        as long as the relay, like a single relay's in memory); what undoes it."""
        if self.options.cluster is not None:
            return lambda: None
        if self.options.state_dir is None:
            private = tempfile.mkdtemp(prefix="relay-leases-")
            self.state_dir = private
            return lambda: shutil.rmtree(private, ignore_errors=True)
        directory = Path(self.options.state_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = lock_state_dir(directory)
        self.state_dir = str(directory)
        return lambda: os.close(fd)

    def drain(self) -> None:
        """Every worker drains (as after SIGTERM); none is started again from now on."""
        if self.draining:
            return
        self.draining = True
        self._tasks.cancel()  # restarts waiting for their delay
        for worker in self.workers:
            worker.tell("drain")

    async def wait_idle(self) -> None:
        """Until every worker has exited (each after its own drain)."""
        for worker in self.workers:
            await worker.exited.wait()

    def reload(self) -> None:
        """SIGHUP: every worker re-reads its auth file now."""
        logger.info("SIGHUP received: every worker re-reads the auth file")
        for worker in self.workers:
            worker.tell("reload")

    async def _start_all(self) -> None:
        self._startup = asyncio.get_running_loop().create_future()
        try:
            for worker in self.workers:
                await self._start(worker)
            async with asyncio.timeout(READY_TIMEOUT):
                await self._startup
        except TimeoutError:
            waiting = [str(w.index) for w in self.workers if not w.ready]
            raise StartupError(
                f"worker(s) {', '.join(waiting)} did not listen within {READY_TIMEOUT:g} s"
            ) from None
        finally:
            self._startup = None

    async def _stop_all(self) -> None:
        """Stop the workers (a drain may have done so); kill what is left after a grace."""
        self.stopping = True
        self._tasks.cancel()
        await self._tasks.wait()
        for worker in self.workers:
            worker.tell("stop")
        try:
            async with asyncio.timeout(STOP_GRACE):
                await self.wait_idle()
        except TimeoutError:
            for worker in self.workers:
                if worker.process is not None and not worker.exited.is_set():
                    logger.warning(
                        "worker %d (pid %d) did not stop; killing it", worker.index, worker.pid
                    )
                    worker.process.kill()
        await self._watchers.wait()

    # ----------------------------------------------------------------- workers
    async def _start(self, worker: WorkerProcess) -> None:
        """Start a process in ``worker``'s slot; it reports on its channel once it listens."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        line, their_line = line_pair()
        line.setblocking(False)
        peers = lines_to(
            worker.index, [(w.index, w.line) for w in self.workers if w.line is not None]
        )
        worker.line = line  # before any await: a worker starting meanwhile gets a line to it
        setup = WorkerSetup(
            index=worker.index,
            count=self.count,
            port=self.port,
            options=self.options,
            process=self.process_options,
            uvloop=self.uvloop,
            channel_fd=theirs.fileno(),
            state_dir=self.state_dir,
            lines_fd=their_line.fileno(),
            peer_fds={index: end.fileno() for index, end in peers.items()},
        )
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.workers.worker",
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(), their_line.fileno(), *setup.peer_fds.values()),
                env=worker_environment(),
            )
        except BaseException:
            ours.close()
            worker.close_line()
            raise
        finally:
            for sock in [theirs, their_line, *peers.values()]:
                sock.close()
        worker.process = process
        worker.ready = False
        worker.started = time.monotonic()
        worker.exited.clear()
        self._watchers.spawn(self._watch(worker, process), name=f"relay-worker-{worker.index}")
        try:
            worker.channel = await Channel.open(ours, partial(self._from_worker, worker))
        except BaseException:  # cancelled (the relay stops): this process goes too
            process.kill()
            ours.close()
            worker.close_line()
            raise
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(setup))
        process.stdin.close()

    async def _from_worker(self, worker: WorkerProcess, message: Message) -> Message | None:
        op = message.get("op")
        if op in HOST_OPS:
            return self.hosts.answer(worker.index, message)
        if op == "claim":
            verdict = await self.identities.claim(
                message["key"],
                message["sessions"],
                message["authenticated"],
                message["newcomer"],
                message["movable"],
                worker.index,
            )
            return {
                "kind": verdict.kind,
                "ref": verdict.ref,
                "port": verdict.port,
                "holders": verdict.holders,
                "worker": verdict.worker,
                "peer": verdict.peer,
            }
        if op == "registered":
            self.identities.registered(message["ref"], message["session"], message["port"])
        elif op == "dropped":
            self.identities.dropped(message["ref"])
        elif op == "ready":
            worker.ready = True
            worker.holder = message["holder"]
            worker.since = time.time()
            self.hosts.welcome(worker.index)
            if worker.restarts:
                logger.info("worker %d (pid %d) is back", worker.index, worker.pid)
                for index, session in self.identities.crowded(worker.index):
                    holder = self.workers[index - 1].channel
                    if holder is not None:
                        holder.notify({"op": "retire", "session": session, "to": worker.index})
            startup = self._startup
            if startup is not None and not startup.done() and all(w.ready for w in self.workers):
                startup.set_result(None)
        else:
            logger.error("unknown message from worker %d: %r", worker.index, message.get("op"))
        return None

    async def _watch(self, worker: WorkerProcess, process: asyncio.subprocess.Process) -> None:
        """Until the process in ``worker``'s slot ends; then start another unless stopping."""
        code = await process.wait()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        worker.ready = False
        worker.close_line()
        self.identities.drop_worker(worker.index)
        self.hosts.drop_worker(worker.index)
        if worker.holder is not None:
            await self._evict(worker.holder)
            worker.holder = None
        if worker.channel is not None:
            worker.channel.close()
            await worker.channel.wait_closed()
            worker.channel = None
        worker.exited.set()
        startup = self._startup
        if startup is not None:
            if not startup.done():
                startup.set_exception(
                    StartupError(f"worker {worker.index} (pid {process.pid}) {how} while starting")
                )
            return
        if self.stopping or self.draining:
            logger.info("worker %d (pid %d) %s", worker.index, process.pid, how)
            return
        lived = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < STABLE_AFTER else 0
        delay = (
            0.0
            if worker.quick_deaths <= 1
            else min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (worker.quick_deaths - 2))
        )
        worker.restarts += 1
        logger.warning(
            "worker %d (pid %d) %s; its registrations ended; starting it again%s",
            worker.index,
            process.pid,
            how,
            f" in {delay:g} s" if delay else "",
        )
        self._tasks.spawn(self._restart(worker, delay), name=f"relay-worker-{worker.index}-start")

    async def _restart(self, worker: WorkerProcess, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.draining or self.stopping:
            return
        try:
            await self._start(worker)
        except OSError as exc:
            logger.error("cannot start worker %d: %s; trying again", worker.index, exc)
            self._tasks.spawn(
                self._restart(worker, MAX_RESTART_DELAY), name=f"relay-worker-{worker.index}-start"
            )

    async def _evict(self, holder: str) -> None:
        """End the claims of a worker that died: its ports are free for everyone at once
        (its leases stay), not only once its membership lapses."""
        try:
            store = await open_shared_store(self.options, self.state_dir, holder)
            try:
                await store.leave()
            finally:
                await store.close()
        except (StoreError, OSError) as exc:
            logger.warning("the claims of %s end when its membership lapses: %s", holder, exc)

    async def _settle(self, index: int, sessions: list[int], newcomer: str) -> set[int]:
        """Ask worker ``index`` to ping ``sessions`` and end the silent ones; the live ones."""
        channel = self.workers[index - 1].channel
        if channel is None:
            return set()
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                answer = await channel.request(
                    {"op": "settle", "sessions": sessions, "newcomer": newcomer}
                )
        except ChannelClosedError:
            return set()  # it died: its registrations are gone
        except TimeoutError:
            logger.error("worker %d did not settle sessions %s in time", index, sessions)
            return set(sessions)  # better a newcomer refused than two on one port
        return set(answer["alive"])

    # ----------------------------------------------------------------- metrics
    async def refresh(self) -> None:
        """Ask every listening worker for its metrics and status (``relay.workers.aggregate``)."""
        ready = [w for w in self.workers if w.ready and w.channel is not None]
        answers = await asyncio.gather(*(self._scrape(w) for w in ready))
        self.scraped = {
            worker.index: answer
            for worker, answer in zip(ready, answers, strict=True)
            if answer is not None
        }

    async def _scrape(self, worker: WorkerProcess) -> Message | None:
        assert worker.channel is not None
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                return await worker.channel.request({"op": "scrape"})
        except (ChannelClosedError, TimeoutError):
            return None
