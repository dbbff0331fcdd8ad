"""Every option of the relay and the registering side, each declared once.

A frozen dataclass per role holds the options of that role; each field is
declared once (``declare.option``) with its default, kind and help, and the
Python keyword, the flag, the ``RELAY_*`` variable and the config-file key all
come from it:

* ``SharedOptions`` (``shared``): the secret, TLS files, keepalive, windows;
* ``RelayOptions`` (``server``): ``RelayServer``, ``relay server``;
* ``RegistrationOptions`` and ``ForwardOptions`` (``client``):
  ``relay.register``, ``relay.start_server``, ``Forwarder``, ``relay forward``;
* ``ProcessOptions`` (``process``): logging, event loop, metrics, drain.

The checked object is handed down as it is, to the protocol layer.
"""

from .client import ForwardOptions, RegistrationOptions
from .declare import ENV_PREFIX, Declaration, OptionError, Options, declarations
from .process import ProcessOptions
from .secret import SecretError
from .server import RelayOptions
from .service import Service
from .shared import SharedOptions

__all__ = [
    "ENV_PREFIX",
    "Declaration",
    "ForwardOptions",
    "OptionError",
    "Options",
    "ProcessOptions",
    "RegistrationOptions",
    "RelayOptions",
    "SecretError",
    "Service",
    "SharedOptions",
    "declarations",
]
