"""What the Python side of a scenario saw: its verdict, notes and unfinished transfers."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import yamux

from .params import Params
from .tap import WireTap

logger = logging.getLogger("interop.py_peer")


@dataclass
class Meter:
    name: str
    expected: int
    """-1: unknown in advance (read until EOF)."""
    seen: int = 0


@dataclass
class Report:
    """Everything the Python side saw: its verdict and what a failure report needs."""

    scenario: str
    role: str
    params: Params
    tap: WireTap = field(default_factory=WireTap)
    failures: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)
    meters: list[Meter] = field(default_factory=list)
    session: yamux.Session | None = None

    def fail(self, message: str) -> None:
        logger.warning("FAIL %s %s: %s", self.scenario, self.role, message)
        self.failures.append(message)

    def meter(self, expected: int, name: str) -> Meter:
        m = Meter(name, expected)
        self.meters.append(m)
        return m

    def unfinished(self, limit: int = 20) -> list[str]:
        out = sorted(
            f"{m.name}: seen {m.seen} of {m.expected if m.expected >= 0 else '?'} bytes"
            for m in self.meters
            if m.seen != m.expected and m.expected >= 0
        )
        if len(out) > limit:
            out = [*out[:limit], f"... and {len(out) - limit} more"]
        return out

    def describe(self) -> str:
        lines = [f"python {self.role} ({'active' if self.role == 'client' else 'passive'}):"]
        lines += [f"  FAIL {f}" for f in self.failures] or ["  no failed checks"]
        lines += [f"  unfinished {u}" for u in self.unfinished()]
        if self.notes:
            lines.append("  notes: " + " ".join(f"{k}={v}" for k, v in self.notes.items()))
        if self.served:
            lines.append(f"  served: {dict(self.served)}")
        if self.session is not None:
            lines.append(f"  session close_reason: {self.session.close_reason!r}")
        lines += [f"  wire {line}" for line in str(self.tap).splitlines()]
        return "\n".join(lines)
