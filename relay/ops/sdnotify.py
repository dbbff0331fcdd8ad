"""systemd's readiness protocol (sd_notify): ``READY=1``, ``STOPPING=1``, ``STATUS=...``.

With ``Type=notify`` systemd sets NOTIFY_SOCKET to a unix datagram socket and
waits for ``READY=1`` before it counts the service as started (and starts what
is ordered after it). Without NOTIFY_SOCKET every call does nothing. The
protocol is one datagram of newline-separated assignments; an address starting
with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger("relay.sdnotify")


def notify(*assignments: str) -> bool:
    """Send ``assignments`` (e.g. ``"READY=1"``) to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        logger.warning(
            "cannot notify systemd at %s: %s", address.replace("\0", "@"), exc.strerror or exc
        )
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")
