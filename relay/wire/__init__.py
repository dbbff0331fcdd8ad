"""The relay's wire contract, sans-IO: the port line, registration v2, the PROXY header, TLS.

Everything a peer must get byte for byte right lives here; docs/protocol.md
is its prose. The asyncio protocols that speak it are in ``relay.server``
(the relay's side) and ``relay.client`` (the registering side).
"""
