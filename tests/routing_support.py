"""Helpers for the tests of names on shared ports (this module holds no tests)."""

from __future__ import annotations

import ssl
import struct

import pytest


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS client (OpenSSL) for ``server_name``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(hello: bytes, size: int) -> bytes:
    """The same handshake message, re-cut into records of at most ``size`` bytes."""
    message = b""
    while hello:
        length = struct.unpack_from("!H", hello, 3)[0]
        message += hello[5 : 5 + length]
        hello = hello[5 + length :]
    return b"".join(
        struct.pack("!BHH", 22, 0x0301, len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )
