"""What the supervisor hands a worker process when it starts it: ``WorkerSetup``.

The worker is a fresh interpreter (``python -m relay.workers.worker``), so
everything it needs travels as one pickled ``WorkerSetup`` on its stdin: the
checked options (the secret file already read; a TLS context cannot be pickled,
so the worker makes its own from the same files), its place among the workers,
the control port the supervisor reserved, and the channel's file descriptor.
The pipe is private to the two processes, so pickle is safe here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from yamux.const import INITIAL_STREAM_WINDOW

from ..options import ProcessOptions, RelayOptions
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
    handoff_fd: int
    """The worker's end of its line for connections handed between workers
    (``relay.workers.handoff``)."""

    @property
    def role(self) -> WorkerRole:
        return WorkerRole(self.index, self.count, self.state_dir)

    def relay_options(self) -> RelayOptions:
        """The options of this worker's ``RelayServer``: the host's ``--max-total-window``
        split evenly among the workers (each keeps its own budget: the windows are its
        memory)."""
        share = max(self.options.max_total_window // self.count, INITIAL_STREAM_WINDOW)
        return dataclasses.replace(self.options, max_total_window=share)
