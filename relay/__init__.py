"""TCP relay over yamux: expose a service behind NAT on a public port.

Programs register directly with ``start_server`` (``asyncio.start_server``'s
shape, the listener lives on the relay); ``RelayServer`` is the relay itself
and ``Forwarder`` puts an unmodified local service behind it.
"""

from .api import RelayDisconnectedError, RelayedServer, register, start_server
from .forwarder import Forwarder
from .protocol import RegistrationError, RelayRefusedError
from .server import RelayServer

__all__ = [
    "Forwarder",
    "RegistrationError",
    "RelayDisconnectedError",
    "RelayRefusedError",
    "RelayServer",
    "RelayedServer",
    "register",
    "start_server",
]
