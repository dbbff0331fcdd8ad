"""The registering side: ``register`` (one registration, ``registering`` its asyncio
protocol), ``RelayedServer`` and ``start_server`` (serve, and register again when the
relay is lost, ``reconnect``), and the forwarder built on them."""
