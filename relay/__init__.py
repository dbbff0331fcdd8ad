"""TCP relay over yamux: expose a service behind NAT on a public port.

Programs register directly with ``start_server`` (``asyncio.start_server``'s
shape, the listener lives on the relay) or, one registration at a time, with
``register``; ``Forwarder`` puts an unmodified local service behind a relay,
and ``RelayServer`` is the relay itself. Their keyword arguments are the
options of ``RegistrationOptions``, ``ForwardOptions`` and ``RelayOptions``,
the same as the command line's flags; a bad one raises ``OptionError``.
"""

from .client.forwarder import Forwarder
from .client.register import Registration, TLSError, register
from .client.relayed_server import RelayedServer
from .client.relays import RelayedServers, start_server
from .errors import (
    PermanentRefusalError,
    RegistrationError,
    RelayDisconnectedError,
    RelayError,
    RelayRefusedError,
)
from .options import (
    ForwardOptions,
    OptionError,
    RegistrationOptions,
    RelayOptions,
    Service,
)
from .server.relay import RelayServer
from .wire.v2 import AuthenticationError, SeedRelayError

__all__ = [
    "AuthenticationError",
    "ForwardOptions",
    "Forwarder",
    "OptionError",
    "PermanentRefusalError",
    "Registration",
    "RegistrationError",
    "RegistrationOptions",
    "RelayDisconnectedError",
    "RelayError",
    "RelayOptions",
    "RelayRefusedError",
    "RelayServer",
    "RelayedServer",
    "RelayedServers",
    "SeedRelayError",
    "Service",
    "TLSError",
    "register",
    "start_server",
]
