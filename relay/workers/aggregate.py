"""One ``/metrics`` and one ``/status`` for all the workers of a relay.

Each scrape asks every worker for its own Prometheus text and status
(``Supervisor.refresh``) and merges them here: every sample keeps its name and
labels and gets a ``worker`` label, every registration of ``/status`` a
``worker`` field, so dashboards written for one relay read a relay of
several workers unchanged (``sum without (worker)`` adds them up).

Why not prometheus_client's multiprocess mode: it adds up values that the
library's own metric objects write to files, while the relay's collectors read
live state at scrape time (sessions open, bytes of connections still open),
which only the process that holds that state can see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .supervisor import Supervisor


class WorkersCollector(Collector):
    """Every worker's families with a ``worker`` label, and the supervisor's own."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, answer in sorted(self.supervisor.scraped.items()):
            for family in text_string_to_metric_families(answer["metrics"]):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    into.add_sample(
                        sample.name,
                        {**sample.labels, "worker": str(index)},
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                    )
        yield from merged.values()
        yield from self._own()

    def _own(self) -> Iterator[Metric]:
        workers = self.supervisor.workers
        yield GaugeMetricFamily("relay_workers", "Worker processes configured.", len(workers))
        up = GaugeMetricFamily(
            "relay_worker_up", "1 while the worker listens on the control port.", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "relay_worker_restarts",
            "Times the worker died and was started again.",
            labels=["worker"],
        )
        for worker in workers:
            up.add_metric([str(worker.index)], 1 if worker.ready else 0)
            restarts.add_metric([str(worker.index)], worker.restarts)
        yield up
        yield restarts


def workers_status(supervisor: Supervisor) -> dict[str, Any]:
    """``/status``: a single relay's shape (``relay.ops.metrics.relay_status``), each
    registration with its ``worker``, and the workers themselves."""
    registrations = []
    draining = supervisor.draining
    auth_files = []
    for index, answer in sorted(supervisor.scraped.items()):
        status = answer["status"]
        draining = draining or bool(status.get("draining"))
        registrations += [{**entry, "worker": index} for entry in status["registrations"]]
        if status.get("auth_file") is not None:
            auth_files.append(status["auth_file"])
    return {
        "role": "relay",
        "control_port": supervisor.port,
        "draining": draining,
        # Every worker reads the same file: one that has not taken an edit shows.
        "auth_file": min(auth_files, key=lambda entry: bool(entry["ok"]), default=None),
        "registrations": registrations,
        "workers": [
            {
                "worker": worker.index,
                "pid": worker.pid,
                "up": worker.ready,
                "since": _iso(worker.since) if worker.ready else None,
                "restarts": worker.restarts,
            }
            for worker in supervisor.workers
        ],
    }


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
