"""PROXY protocol headers (HAProxy's spec, versions 1 and 2): who the public client is.

With ``client-addr`` negotiated (registration v2), the relay starts every
stream with a version 2 header naming the public client (source) and the
public listener (destination); the registered side reads it off before the
first byte of the client. The forwarder then hands the address to the local
service in the header version it speaks (``--proxy-protocol v1|v2``).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from ..errors import RelayError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_VERSION_PROXY = 0x21
"""Version 2, command PROXY (the connection was relayed for a client)."""
V2_VERSION_LOCAL = 0x20
"""Version 2, command LOCAL (no client address: e.g. a health check, or unknown)."""
V2_TCP4 = 0x11
V2_TCP6 = 0x21
V2_UNSPEC = 0x00
_V2_FIXED = struct.Struct("!12sBBH")
V2_HEADER_LENGTH = _V2_FIXED.size
MAX_V2_PAYLOAD = 512
"""Longest address block accepted (addresses are 36 bytes; the rest would be TLVs)."""


class ProxyHeaderError(RelayError, ConnectionError):
    """A stream that should start with a PROXY v2 header does not."""


@dataclass(frozen=True, slots=True)
class ProxyAddresses:
    """Source (the public client) and destination (the relay's public listener)."""

    source: tuple[str, int]
    destination: tuple[str, int]

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.source[0] else socket.AF_INET


def _normalise(host: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack listener's view of IPv4) as plain IPv4."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def addresses_of(peer: object, local: object) -> ProxyAddresses | None:
    """From a socket's ``peername`` and ``sockname``; None if not IP (or families differ)."""
    try:
        src = (_normalise(str(peer[0])), int(peer[1]))  # type: ignore[index]
        dst = (_normalise(str(local[0])), int(local[1]))  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    if (":" in src[0]) != (":" in dst[0]):
        # A mapped IPv4 client on a v6 socket whose own address is v6 (e.g. "::"): use the
        # client's family for both, with the unspecified address as destination.
        dst = ("::" if ":" in src[0] else "0.0.0.0", dst[1])
    return ProxyAddresses(src, dst)


def v2_header(addresses: ProxyAddresses | None) -> bytes:
    """A version 2 header: PROXY with the addresses, or LOCAL when they are unknown."""
    if addresses is None:
        return _V2_FIXED.pack(V2_SIGNATURE, V2_VERSION_LOCAL, V2_UNSPEC, 0)
    (src, sport), (dst, dport) = addresses.source, addresses.destination
    if addresses.family == socket.AF_INET6:
        body = (
            socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport)
        )
        family = V2_TCP6
    else:
        body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
        family = V2_TCP4
    return _V2_FIXED.pack(V2_SIGNATURE, V2_VERSION_PROXY, family, len(body)) + body


def v1_header(addresses: ProxyAddresses | None) -> bytes:
    """A version 1 (text) header: ``PROXY TCP4 src dst sport dport\\r\\n``, or ``UNKNOWN``."""
    if addresses is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if addresses.family == socket.AF_INET6 else "TCP4"
    (src, sport), (dst, dport) = addresses.source, addresses.destination
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def header(version: int, addresses: ProxyAddresses | None) -> bytes:
    if version == 1:
        return v1_header(addresses)
    if version == 2:
        return v2_header(addresses)
    raise ValueError(f"PROXY protocol version must be 1 or 2, got {version}")


def parse_v2_fixed(data: bytes) -> tuple[int, int, int]:
    """``(version_command, family, payload length)`` of the first 16 bytes of a v2 header."""
    signature, version_command, family, length = _V2_FIXED.unpack(data)
    if signature != V2_SIGNATURE or version_command not in (V2_VERSION_PROXY, V2_VERSION_LOCAL):
        raise ProxyHeaderError(f"stream does not start with a PROXY v2 header (got {data[:16]!r})")
    if length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes is longer than {MAX_V2_PAYLOAD}")
    return version_command, family, length


def parse_v2_payload(version_command: int, family: int, payload: bytes) -> ProxyAddresses | None:
    """The addresses of a v2 header (None for LOCAL or an unspecified family); TLVs ignored."""
    if version_command == V2_VERSION_LOCAL:
        return None
    if family == V2_TCP4 and len(payload) >= 12:
        src, dst = socket.inet_ntoa(payload[0:4]), socket.inet_ntoa(payload[4:8])
        sport, dport = struct.unpack("!HH", payload[8:12])
    elif family == V2_TCP6 and len(payload) >= 36:
        src = socket.inet_ntop(socket.AF_INET6, payload[0:16])
        dst = socket.inet_ntop(socket.AF_INET6, payload[16:32])
        sport, dport = struct.unpack("!HH", payload[32:36])
    elif family == V2_UNSPEC:
        return None
    else:
        raise ProxyHeaderError(
            f"PROXY v2 header: unsupported family/length 0x{family:02x}/{len(payload)}"
        )
    return ProxyAddresses((src, sport), (dst, dport))
