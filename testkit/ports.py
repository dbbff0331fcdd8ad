"""Free TCP ports, for programs that cannot be told to listen on port 0."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the OS's choice; another process may take it
    before the caller binds it, so callers retry on "address already in use")."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
