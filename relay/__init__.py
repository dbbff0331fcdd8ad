"""TCP relay over yamux: expose a service behind NAT on a public port.

Programs register directly with ``start_server`` (``asyncio.start_server``'s
shape, the listener lives on the relay); ``RelayServer`` is the relay itself
and ``Forwarder`` puts an unmodified local service behind it.
"""

from .api import (
    Registration,
    RelayDisconnectedError,
    RelayedServer,
    TLSError,
    register,
    register_v2,
    start_server,
)
from .forwarder import Forwarder, Service
from .handshake import AuthenticationError
from .protocol import RegistrationError, RelayRefusedError
from .server import RelayServer

__all__ = [
    "AuthenticationError",
    "Forwarder",
    "Registration",
    "RegistrationError",
    "RelayDisconnectedError",
    "RelayRefusedError",
    "RelayServer",
    "RelayedServer",
    "Service",
    "TLSError",
    "register",
    "register_v2",
    "start_server",
]
