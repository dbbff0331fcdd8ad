"""The registering side: ``register``, ``RelayedServer``, the forwarder and its reconnects."""
