"""``--metrics HOST:PORT``: what the relay and the forwarder show there.

The numbers are read at scrape time from the relay's (or the forwarders')
own counters (``relay.stats``), by a prometheus_client ``Collector`` on a
registry of its own, so nothing is counted twice and embedding several relays
in one process works; ``/status`` is the same state as JSON. The HTTP endpoint
that serves them is ``relay.ops.http``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import yamux

from ..client.forwarder import Forwarder
from ..client.relayed_server import RelayedServer
from ..options import Service
from ..server.interface import Relay, SessionInfo

logger = logging.getLogger("relay.metrics")

ANONYMOUS = "anonymous"
"""The ``client`` label of a registration that no secret vouches for."""


def series_labels(info: SessionInfo) -> tuple[str, str]:
    """The ``client`` and ``service`` labels of a registration's series.

    Only names a secret or the auth file vouches for become label values: on an
    open relay anyone may register under any name, and a label value per name
    would be a series per stranger. So an unauthenticated registration is
    ``anonymous`` and its service is its public port (at most one registration
    holds a port at a time); an authenticated one is its client, and its service is
    its ``service=`` name, else its client name (a forwarder with a secret and
    ``--name`` sends that as its name).
    """
    if not info.authenticated:
        return ANONYMOUS, str(info.public_port)
    client = info.client or ANONYMOUS
    return client, info.service or info.client or str(info.public_port)


class _Series:
    """What the sessions of one (client, service) add up to."""

    __slots__ = ("bytes_in", "bytes_out", "rtt", "sessions", "stalls")

    def __init__(self) -> None:
        self.sessions = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.stalls = 0
        self.rtt: float | None = None

    def add(self, info: SessionInfo) -> None:
        self.sessions += 1
        self.bytes_in += info.bytes_in
        self.bytes_out += info.bytes_out
        self.stalls += info.stalls
        if info.rtt is not None:
            self.rtt = info.rtt if self.rtt is None else max(self.rtt, info.rtt)


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
        series: dict[tuple[str, str], _Series] = {}
        for info in sessions:
            labels = series_labels(info)
            if (entry := series.get(labels)) is None:
                entry = series[labels] = _Series()
            entry.add(info)
        service_sessions = GaugeMetricFamily(
            "relay_service_sessions",
            "Registered sessions per client and service.",
            labels=["client", "service"],
        )
        service_bytes = CounterMetricFamily(
            "relay_service_bytes",
            "Bytes relayed per client and service; in = from the public "
            "clients, out = to them (open connections included).",
            labels=["client", "service", "direction"],
        )
        rtt = GaugeMetricFamily(
            "relay_keepalive_rtt_seconds",
            "Last keepalive (or handshake) ping round trip per client and service "
            "(the slowest of its sessions).",
            labels=["client", "service"],
        )
        stalls = CounterMetricFamily(
            "relay_service_window_stalls",
            "Times a stream paused its public connection because "
            "the registered side's yamux window was full, per client and service.",
            labels=["client", "service"],
        )
        for (client, service), entry in series.items():
            service_sessions.add_metric([client, service], entry.sessions)
            service_bytes.add_metric([client, service, "in"], entry.bytes_in)
            service_bytes.add_metric([client, service, "out"], entry.bytes_out)
            stalls.add_metric([client, service], entry.stalls)
            if entry.rtt is not None:
                rtt.add_metric([client, service], entry.rtt)
        total_in = stats.bytes_in + sum(info.bytes_in for info in sessions)
        total_out = stats.bytes_out + sum(info.bytes_out for info in sessions)
        total_stalls = stats.stalls + sum(info.stalls for info in sessions)
        yield service_sessions
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
            "Failed registrations: refused proofs, malformed responses, no answer, failed TLS.",
            stats.auth_failures,
        )
        yield GaugeMetricFamily(
            "relay_draining", "1 while draining (after SIGTERM).", 1 if server.draining else 0
        )
        auth_file = server.auth_file_status
        if auth_file is not None:
            yield GaugeMetricFamily(
                "relay_auth_file_ok",
                "1 if the auth file (and its secret files) is in force as written; 0 if its "
                "last edit did not take (fully): see the ERROR log or /status.",
                1 if auth_file.ok else 0,
            )
            yield GaugeMetricFamily(
                "relay_auth_file_clients", "Clients of the auth file in force.", auth_file.clients
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
    """``/status`` of a relay: every registration, and its auth file if it has one."""
    auth_file = server.auth_file_status
    return {
        "role": "relay",
        "control_port": server.port,
        "draining": server.draining,
        "auth_file": None
        if auth_file is None
        else {
            "path": auth_file.path,
            "ok": auth_file.ok,
            "clients": auth_file.clients,
            "error": auth_file.error,
            "since": _iso(auth_file.since),
        },
        "registrations": [
            {
                "session": info.id,
                "client": info.client,
                "service": info.service,
                "authenticated": info.authenticated,
                "peer": info.peer,
                "public_port": info.public_port,
                "host": info.host,
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
