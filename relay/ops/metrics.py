"""``--metrics HOST:PORT``: Prometheus text at ``/metrics``, JSON at ``/status``.

The numbers are read at scrape time from the relay's (or the forwarders')
own counters (``relay.stats``), by a prometheus_client ``Collector`` on a
registry of its own, so nothing is counted twice and embedding several relays
in one process works. The HTTP endpoint is a small asyncio server in the same
event loop as the relay: a scrape sees a consistent state, with no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import yamux

from ..client.forwarder import Forwarder
from ..client.relayed_server import RelayedServer
from ..net import format_endpoint
from ..options import Service
from ..server.interface import Relay

logger = logging.getLogger("relay.metrics")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers we read before answering 431."""
REQUEST_TIMEOUT = 5.0


def service_label(public_port: int, client: str | None = None) -> str:
    """The ``service`` label of a registration: its client name, else its public port."""
    return client or str(public_port)


class RelayCollector(Collector):
    """Every relay_* family, from ``Relay.sessions`` and ``Relay.stats``."""

    def __init__(self, server: Relay) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server, stats = self.server, self.server.stats
        sessions = server.sessions
        yield GaugeMetricFamily("relay_sessions_open", "Registered sessions now.", len(sessions))
        yield CounterMetricFamily("relay_sessions", "Registrations accepted.", stats.sessions_total)
        yield GaugeMetricFamily(
            "relay_streams_open",
            "Open yamux streams, all sessions.",
            sum(s.streams for s in sessions),
        )
        yield CounterMetricFamily(
            "relay_public_connections", "Public connections accepted.", stats.connections_total
        )
        yield GaugeMetricFamily(
            "relay_public_connections_open",
            "Public connections open now.",
            sum(s.connections for s in sessions),
        )
        refused_conns = CounterMetricFamily(
            "relay_public_connections_refused",
            "Public connections refused, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(stats.connections_refused.items()):
            refused_conns.add_metric([reason], count)
        yield refused_conns
        service_bytes = CounterMetricFamily(
            "relay_service_bytes",
            "Bytes relayed per registered service; in = from the public "
            "clients, out = to them (open connections included).",
            labels=["service", "direction"],
        )
        rtt = GaugeMetricFamily(
            "relay_keepalive_rtt_seconds",
            "Last keepalive (or handshake) ping round trip per service.",
            labels=["service"],
        )
        stalls = CounterMetricFamily(
            "relay_service_window_stalls",
            "Times a stream paused its public connection because "
            "the registered side's yamux window was full, per service.",
            labels=["service"],
        )
        total_in, total_out, total_stalls = stats.bytes_in, stats.bytes_out, stats.stalls
        # One series per service: the sessions of one service (sessions=, or one client's
        # several) add up, and the slowest ping stands for them.
        per_service: dict[str, list[int]] = {}
        rtts: dict[str, float] = {}
        for info in sessions:
            label = service_label(info.public_port, info.client)
            sums = per_service.setdefault(label, [0, 0, 0])
            sums[0] += info.bytes_in
            sums[1] += info.bytes_out
            sums[2] += info.stalls
            if info.rtt is not None:
                rtts[label] = max(info.rtt, rtts.get(label, 0.0))
        for label, (bytes_in, bytes_out, service_stalls) in per_service.items():
            service_bytes.add_metric([label, "in"], bytes_in)
            service_bytes.add_metric([label, "out"], bytes_out)
            stalls.add_metric([label], service_stalls)
            total_in += bytes_in
            total_out += bytes_out
            total_stalls += service_stalls
        for label, seconds in rtts.items():
            rtt.add_metric([label], seconds)
        yield service_bytes
        total = CounterMetricFamily(
            "relay_bytes",
            "Bytes relayed, all services, ended sessions included.",
            labels=["direction"],
        )
        total.add_metric(["in"], total_in)
        total.add_metric(["out"], total_out)
        yield total
        yield rtt
        yield stalls
        yield CounterMetricFamily(
            "relay_window_stalls",
            "Window stalls, all services, ended sessions included.",
            total_stalls,
        )
        refused = CounterMetricFamily(
            "relay_registrations_refused", "Registrations refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "relay_auth_failures",
            "Registrations that failed authentication.",
            stats.auth_failures,
        )
        yield GaugeMetricFamily(
            "relay_draining", "1 while draining (after SIGTERM).", 1 if server.draining else 0
        )
        yield from window_budget_metrics("relay", server.yamux_config)


def window_budget_metrics(prefix: str, config: yamux.Config | None) -> Iterator[Metric]:
    """The receive-window budget all sessions share (--max-total-window), if any."""
    budget = config.window_budget if config is not None else None
    if budget is None:
        return
    yield GaugeMetricFamily(
        f"{prefix}_window_budget_used_bytes",
        "Receive windows granted on all yamux streams now, every session "
        "(each stream's first 256 KiB included).",
        budget.used,
    )
    yield GaugeMetricFamily(
        f"{prefix}_window_budget_limit_bytes",
        "--max-total-window: windows stop growing at this.",
        budget.limit,
    )


def relay_status(server: Relay) -> dict[str, Any]:
    """``/status`` of a relay: every registration."""
    return {
        "role": "relay",
        "control_port": server.port,
        "draining": server.draining,
        "registrations": [
            {
                "session": info.id,
                "client": info.client,
                "peer": info.peer,
                "public_port": info.public_port,
                "confirmed": info.confirmed,
                "since": _iso(info.since),
                "open_connections": info.connections,
                "streams": info.streams,
                "bytes_in": info.bytes_in,
                "bytes_out": info.bytes_out,
                "keepalive_rtt_seconds": info.rtt,
            }
            for info in server.sessions
        ],
    }


class ForwarderCollector(Collector):
    """relay_forwarder_* families: the forwarder's side of each service."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        registered = GaugeMetricFamily(
            "relay_forwarder_registered",
            "Relays the service is registered with now (1 with one relay).",
            labels=["service"],
        )
        registrations = CounterMetricFamily(
            "relay_forwarder_registrations",
            "Successful registrations (reconnects included).",
            labels=["service"],
        )
        streams = CounterMetricFamily(
            "relay_forwarder_streams", "Relayed streams accepted.", labels=["service"]
        )
        open_streams = GaugeMetricFamily(
            "relay_forwarder_streams_open", "Streams open now.", labels=["service"]
        )
        service_bytes = CounterMetricFamily(
            "relay_forwarder_bytes",
            "Bytes per service; in = from the relay (the public clients), out = to it.",
            labels=["service", "direction"],
        )
        failures = CounterMetricFamily(
            "relay_forwarder_local_failures",
            "Streams reset: the local service was unreachable.",
            labels=["service"],
        )
        rtt = GaugeMetricFamily(
            "relay_forwarder_keepalive_rtt_seconds",
            "Last keepalive ping round trip to the relay.",
            labels=["service"],
        )
        stalls = CounterMetricFamily(
            "relay_forwarder_window_stalls",
            "Times a stream paused the local connection because the relay's yamux window was full.",
            labels=["service"],
        )
        for service, servers in _services(self.forwarder):
            label = [service_name(service)]
            serving = [server for server in servers if server.is_serving()]
            session = serving[0].session if serving else None
            registered.add_metric(label, len(serving))
            registrations.add_metric(label, sum(server.registrations for server in servers))
            traffic = self.forwarder.traffic[service]
            streams.add_metric(label, traffic.connections_total)
            open_streams.add_metric(label, traffic.open_connections)
            service_bytes.add_metric([*label, "in"], traffic.bytes_out)  # stream -> socket
            service_bytes.add_metric([*label, "out"], traffic.bytes_in)
            failures.add_metric(label, self.forwarder.local_failures[service])
            stalls.add_metric(label, traffic.stalls)
            if session is not None and session.last_rtt is not None:
                rtt.add_metric(label, session.last_rtt)
        yield from (
            registered,
            registrations,
            streams,
            open_streams,
            service_bytes,
            failures,
            rtt,
            stalls,
        )
        yield from window_budget_metrics("relay_forwarder", self.forwarder.yamux_config)


def service_name(service: Service) -> str:
    """A forwarded service's label: its name, else its local endpoint."""
    return service.name or service.local_endpoint


def _services(forwarder: Forwarder) -> list[tuple[Service, list[RelayedServer]]]:
    """Each service and its servers (one per relay; none while not running)."""
    return [(service, forwarder.servers_of(service)) for service in forwarder.services]


def forwarder_status(forwarder: Forwarder) -> dict[str, Any]:
    """``/status`` of a forwarder: each service and its registrations (one per relay)."""
    services = []
    for service, servers in _services(forwarder):
        traffic = forwarder.traffic[service]
        serving = [server for server in servers if server.is_serving()]
        first = servers[0] if servers else None
        session = serving[0].session if serving else None
        services.append(
            {
                "name": service.name,
                "relay": first.relay_endpoint if first is not None else forwarder.relay_endpoint,
                "local": service.local_endpoint,
                "public_endpoint": serving[0].public_endpoint if serving else None,
                "public_endpoints": [server.public_endpoint for server in serving],
                "registrations": sum(server.registrations for server in servers),
                "since": _iso(traffic.since),
                "open_connections": traffic.open_connections,
                "bytes_in": traffic.bytes_out,
                "bytes_out": traffic.bytes_in,
                "keepalive_rtt_seconds": session.last_rtt if session is not None else None,
            }
        )
    return {"role": "forwarder", "draining": forwarder.draining, "services": services}


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


class MetricsServer:
    """HTTP/1.1 GET ``/metrics`` and ``/status`` on ``host:port``; one request per connection.

    ``refresh``, if given, is awaited before each answer: what the collector and
    ``status`` read is fetched from elsewhere (a supervisor asks its workers).
    """

    def __init__(
        self,
        host: str,
        port: int,
        collector: Collector,
        status: Callable[[], dict[str, Any]],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        self.status = status
        self.refresh = refresh
        self._server: asyncio.Server | None = None
        self._handlers = yamux.TaskOwner(logger)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.requested_port, limit=MAX_REQUEST_HEAD
        )
        logger.info(
            "metrics on http://%s/metrics, status on /status",
            self.endpoint,
            extra={"metrics": self.endpoint},
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)

    def close(self) -> None:
        """Stop listening and cancel the requests in progress (asyncio's convention)."""
        if self._server is not None:
            self._server.close()
        self._handlers.cancel()

    async def wait_closed(self) -> None:
        await self._handlers.wait()
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.spawn(self._serve(reader, writer), name="relay-metrics-request")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._reply(writer, 431, "text/plain", b"request head too large\n")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if self.refresh is not None and path in ("/metrics", "/status"):
                await self.refresh()
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, "text/plain", b"GET only\n")
            elif path == "/metrics":
                await self._reply(
                    writer,
                    200,
                    PROMETHEUS_CONTENT_TYPE,
                    generate_latest(self.registry),
                    head_only=method == "HEAD",
                )
            elif path == "/status":
                body = json.dumps(self.status(), indent=2).encode() + b"\n"
                await self._reply(writer, 200, "application/json", body, head_only=method == "HEAD")
            else:
                await self._reply(writer, 404, "text/plain", b"try /metrics or /status\n")
        except OSError:
            pass  # the scraper went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter,
        code: int,
        content_type: str,
        body: bytes,
        *,
        head_only: bool = False,
    ) -> None:
        reasons = {
            200: "OK",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Request Header Fields Too Large",
        }
        writer.write(
            f"HTTP/1.1 {code} {reasons[code]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if not head_only:
            writer.write(body)
        await writer.drain()


@contextlib.asynccontextmanager
async def exposed(
    address: tuple[str, int] | None,
    collector: Collector,
    status: Callable[[], dict[str, Any]],
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[MetricsServer | None]:
    """Serve ``/metrics`` and ``/status`` on ``address`` (None: nothing) while in the block."""
    if address is None:
        yield None
        return
    server = MetricsServer(*address, collector, status, refresh)
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
