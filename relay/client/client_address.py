"""The public client's address at the start of a relayed stream (``client_address``).

A relay that was asked for it (registration v2, ``client-addr=1``) starts
every stream with a PROXY protocol v2 header; it is read off before the
handler sees the stream, and the handler finds the public client where an
asyncio server finds its peer.
"""

from __future__ import annotations

import yamux

from ..wire.proxy_header import (
    V2_HEADER_LENGTH,
    ProxyAddresses,
    parse_v2_fixed,
    parse_v2_payload,
)


async def read_client_address(stream: yamux.Stream) -> ProxyAddresses | None:
    """Read a stream's PROXY v2 header; the public client becomes its ``peername``.

    The addresses are also ``get_extra_info("client_address")``: a ProxyAddresses,
    or None if the relay did not know them (a LOCAL header).
    """
    fixed = await stream.readexactly(V2_HEADER_LENGTH)
    version_command, family, length = parse_v2_fixed(fixed)
    payload = await stream.readexactly(length) if length else b""
    addresses = parse_v2_payload(version_command, family, payload)
    stream.set_extra_info("client_address", addresses)
    if addresses is not None:
        stream.set_extra_info("peername", addresses.source)
        stream.set_extra_info("sockname", addresses.destination)
    return addresses
