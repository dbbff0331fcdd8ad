"""A relay that is one of several processes on a host (``relay server --workers N``).

The processes share the control port (each its own SO_REUSEPORT listener) and
each keeps the registrations it admitted, with their public ports and
connections. What one process must know of the others comes through a
``WorkerRole``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Which of the host's relay processes this one is."""

    index: int
    """1 to ``count``; 0 is the supervisor, which holds no registration."""
    count: int
