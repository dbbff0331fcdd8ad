"""TCP relay over yamux: expose a service behind NAT on a public port.

Programs register directly with ``start_server`` (``asyncio.start_server``'s
shape, the listener lives on the relay); ``RelayServer`` is the relay itself
and ``Forwarder`` puts an unmodified local service behind it.
"""

from .client.api import (
    Registration,
    RelayedServer,
    TLSError,
    register,
    register_v2,
    start_server,
)
from .client.forwarder import Forwarder, Service
from .errors import (
    RegistrationError,
    RelayDisconnectedError,
    RelayError,
    RelayRefusedError,
)
from .server.ports import NoFreePortError, PortRefusedError
from .server.relay import RelayServer
from .wire.v2 import AuthenticationError, SeedRelayError

__all__ = [
    "AuthenticationError",
    "Forwarder",
    "NoFreePortError",
    "PortRefusedError",
    "Registration",
    "RegistrationError",
    "RelayDisconnectedError",
    "RelayError",
    "RelayRefusedError",
    "RelayServer",
    "RelayedServer",
    "SeedRelayError",
    "Service",
    "TLSError",
    "register",
    "register_v2",
    "start_server",
]
