"""Names on shared ports with ``--workers``: which worker holds each host name.

Every worker listens on the shared ports (SO_REUSEPORT, as on the control
port), so the kernel gives a connection for any name to any worker. Each
worker keeps its own sessions in its ``Routes`` and tells the supervisor
whenever it gains or loses a host name; the supervisor keeps the table of the
whole host (``HostTable``) and tells every other worker, so that a worker
knows without asking which worker holds a name (``Routes.elsewhere``) and
hands it a connection for that name (``RoutedConnection``, on the line
between the two, ``relay.workers.lines``). A worker that starts gets the whole
table; a worker that dies loses its names at once. A name nobody is known to
hold is asked of the supervisor once before the 404: a registration can be
newer than the news of it.

Two workers could register one host name at the same moment (each checks the
names of the others as last heard): the supervisor keeps the first and has the
second's worker retire its session, whose forwarder registers again and hears
that the name is taken.

The supervisor reserves the shared ports as it does the control port
(``reserve_shared_ports``), so that every worker listens on the same number
and a restarting worker finds it free.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..net import BindAddress
from ..options import RelayOptions
from ..server.shared_ports import SharedPorts
from ..stats import RelayStats
from ..wire.route import RouteKind
from .channel import Channel, ChannelClosedError, Message
from .handoff import RoutedConnection
from .lines import WorkerLines

logger = logging.getLogger("relay.workers")

Key = tuple[RouteKind, str]
HOST_OPS = frozenset({"route", "where"})
"""What a worker sends the supervisor about its names (``HostTable.answer``)."""


def reserve_shared_ports(
    bind: BindAddress, options: RelayOptions
) -> tuple[RelayOptions, list[socket.socket]]:
    """Hold the shared ports for the workers (``BindAddress.reserve``; a port 0 is picked
    here, once); the options with their numbers, and the sockets to close at the end.
    OSError if a port cannot be had."""
    held: list[socket.socket] = []
    try:
        http = _reserve(bind, options.http_port, "--http-port", held)
        tls = _reserve(bind, options.tls_port, "--tls-port", held)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return dataclasses.replace(options, http_port=http, tls_port=tls), held


def _reserve(
    bind: BindAddress, port: int | None, flag: str, held: list[socket.socket]
) -> int | None:
    if port is None:
        return None
    try:
        sock = bind.reserve(port)
    except OSError as exc:
        raise OSError(exc.errno, f"port {port} ({flag}): {exc.strerror}") from None
    held.append(sock)
    return int(sock.getsockname()[1])


class HostTable:
    """The supervisor's table: each host name of the host, and the worker (and session)
    that holds it; every change is told to the other workers."""

    def __init__(self, channels: Callable[[], Iterable[tuple[int, Channel]]]) -> None:
        self._channels = channels
        """Each worker with a channel now: (its index, the channel)."""
        self._table: dict[Key, tuple[int, int]] = {}

    def answer(self, worker: int, message: Message) -> Message | None:
        """A worker's news of one of its names (``route``) or a question (``where``)."""
        key: Key = (message["kind"], message["host"])
        holder = self._table.get(key)
        if message["op"] == "where":
            return {"worker": None if holder is None or holder[0] == worker else holder[0]}
        session = message["session"]
        if not message["held"]:
            if holder == (worker, session):
                del self._table[key]
                self._tell_others(worker, key, None)
        elif holder is not None and holder[0] != worker:
            logger.warning(
                "worker %d registered %s, which worker %d holds already; its session %d ends",
                worker,
                key[1],
                holder[0],
                session,
            )
            self._tell(worker, {"op": "host taken", "session": session, "host": key[1]})
        else:
            self._table[key] = (worker, session)
            if holder is None:
                self._tell_others(worker, key, worker)
        return None

    def welcome(self, worker: int) -> None:
        """A worker that (re)started and listens: every other worker's names."""
        hosts = [[*key, held[0]] for key, held in self._table.items() if held[0] != worker]
        self._tell(worker, {"op": "hosts", "hosts": hosts})

    def drop_worker(self, worker: int) -> None:
        """A worker died: its names lead nowhere."""
        for key in [key for key, held in self._table.items() if held[0] == worker]:
            del self._table[key]
            self._tell_others(worker, key, None)

    def __len__(self) -> int:
        return len(self._table)

    def _tell_others(self, origin: int, key: Key, worker: int | None) -> None:
        message = {"op": "host", "kind": key[0], "host": key[1], "worker": worker}
        for index, channel in self._channels():
            if index != origin:
                channel.notify(message)

    def _tell(self, worker: int, message: Message) -> None:
        for index, channel in self._channels():
            if index == worker:
                channel.notify(message)


class WorkerHosts:
    """A worker's side: it tells the supervisor of its names, hears of the others', and
    hands connections to them (``relay.server.elsewhere.Elsewhere``)."""

    def __init__(self, shared: SharedPorts, channel: Channel, lines: WorkerLines) -> None:
        self.shared = shared
        self.channel = channel
        self.lines = lines
        shared.routes.changed = self._changed
        shared.elsewhere = self

    def heard(self, message: Message) -> None:
        """The supervisor's news: one name's holder (None: nobody), or every name's."""
        elsewhere = self.shared.routes.elsewhere
        if message["op"] == "hosts":
            elsewhere.clear()
            for kind, host, worker in message["hosts"]:
                elsewhere[(kind, host)] = worker
        elif message["worker"] is None:
            elsewhere.pop((message["kind"], message["host"]), None)
        else:
            elsewhere[(message["kind"], message["host"])] = message["worker"]

    async def where(self, kind: RouteKind, host: str) -> int | None:
        try:
            answer = await self.channel.request({"op": "where", "kind": kind, "host": host})
        except ChannelClosedError:
            return None  # the supervisor is gone: this worker is closing
        worker: int | None = answer["worker"]
        return worker

    def send(self, to: int, kind: RouteKind, host: str, early: bytes, sock: socket.socket) -> None:
        self.lines.send(to, RoutedConnection(kind, host, early), sock.fileno())

    def received(self, routed: RoutedConnection, fd: int) -> None:
        """A connection another worker read for one of this worker's names."""
        self.shared.take(routed.kind, routed.host, routed.early, socket.socket(fileno=fd))

    def _changed(self, kind: RouteKind, host: str, session: int, held: bool) -> None:
        self.channel.notify(
            {"op": "route", "kind": kind, "host": host, "session": session, "held": held}
        )


class HandoffCollector(Collector):
    """``relay_routed_connections_handed``: this worker's connections handed to another."""

    def __init__(self, stats: RelayStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "relay_routed_connections_handed",
            "Connections of a shared port handed to the worker that holds their name "
            "(one that cannot be is refused: reason route_handoff_failed).",
            self.stats.connections_handed,
        )
