"""The relay's side of registration, from the control port to the public ports.

``relay`` (``RelayServer``: admission and the registry of sessions) admits
control connections through ``admission``, ``tls_listener`` and ``challenge``;
each admitted ``request`` becomes a ``session`` whose rules are in
``lifecycle``; ``replacement``, ``ports``, ``leases`` and ``auth`` decide who
gets which port, ``public`` carries the public connections, and ``notify`` is
the other relay. ``interface`` is what both relays are to the operations code;
``protection`` words the start line.
"""
