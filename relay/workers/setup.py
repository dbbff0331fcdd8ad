"""What the supervisor hands a worker process when it starts it: ``WorkerSetup``.

The worker is a fresh interpreter (``python -m relay.workers.worker``), so
everything it needs travels as one pickled ``WorkerSetup`` on its stdin: the
checked options (the secret file already read; a TLS context cannot be pickled,
so the worker makes its own from the same files), its place among the workers,
the control port (and shared ports) the supervisor reserved, and the file
descriptors of its channel and lines (``relay.workers.lines``). The pipe is
private to the two processes, so pickle is safe here. Its environment is the
supervisor's (``worker_environment``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from yamux.const import INITIAL_STREAM_WINDOW

from ..options import ProcessOptions, RelayOptions
from ..server.limits import share
from ..server.siblings import WorkerRole


@dataclass(frozen=True)
class WorkerSetup:
    index: int
    """1 to ``count``."""
    count: int
    port: int
    """The control port: the worker listens on it with SO_REUSEPORT."""
    options: RelayOptions
    """As the supervisor checked them, the secret read and without a TLS context."""
    process: ProcessOptions
    """Logging and drain; the supervisor alone serves metrics."""
    uvloop: bool
    """Run on uvloop (the supervisor resolved ``--event-loop``)."""
    channel_fd: int
    """The worker's end of its channel to the supervisor (``relay.workers.channel``)."""
    state_dir: str | None
    """The lease store's directory, which the supervisor locked (None: ``--cluster``)."""
    lines_fd: int
    """The worker's end of its line from the supervisor, on which its lines to the workers
    that start after it come (``relay.workers.lines``)."""
    peer_fds: dict[int, int]
    """Its ends of the lines to the workers running when it starts, by their index."""

    @property
    def role(self) -> WorkerRole:
        return WorkerRole(self.index, self.count, self.state_dir)

    def relay_options(self) -> RelayOptions:
        """The options of this worker's ``RelayServer``: what bounds the host split evenly
        among the workers, each keeping its share in its own memory.

        The kernel spreads a source's connections over the workers, so each worker's
        places (``relay.server.places``) are a share of the host's: of
        ``--max-pending``, of ``--max-pending-registrations-per-source`` and of
        ``--max-tls-handshakes``; they add up to about the host's limit for a
        stranger, and who gives way is decided among a worker's places. Each keeps a
        share of ``--max-failure-sources`` keys in memory (the failures themselves are
        counted for the host, ``relay.workers.worker``); the receive windows of
        ``--max-total-window`` are each worker's memory. ``--max-sessions`` is not
        split: the supervisor counts the host's sessions.
        """
        options = self.options
        per_source = share(options.max_pending_registrations_per_source, options.max_sessions)
        return dataclasses.replace(
            options,
            max_total_window=max(options.max_total_window // self.count, INITIAL_STREAM_WINDOW),
            max_pending_registrations_per_source=per_source and self.part(per_source),
            max_pending=self.part(options.max_pending),
            max_tls_handshakes=self.part(options.max_tls_handshakes),
            max_failure_sources=self.part(options.max_failure_sources),
        )

    def part(self, limit: int) -> int:
        """This worker's share of a host's ``limit`` (at least 1)."""
        return max(1, -(-limit // self.count))


def worker_environment() -> dict[str, str]:
    """The worker's environment: ours, with the relay package first on the path (the worker
    must run this code), and no NOTIFY_SOCKET (only the supervisor talks to systemd)."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env
