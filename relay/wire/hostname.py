"""Host names as the relay routes by them: one spelling for a Host header, an SNI and a route.

A public connection on a shared port names its service in the ``Host`` header
(``relay.wire.http_head``) or in the TLS server name (``relay.wire.client_hello``);
a registration gets its name from the relay's ``--domain`` and an auth file's
``hosts``. All of them are compared in one form: ASCII, lower case, without a
trailing dot and without a port.
"""

from __future__ import annotations

import re

MAX_HOST = 253
"""The longest DNS name (without its trailing dot)."""
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_CHARS = re.compile(r"[a-z0-9._-]+")
_HOST = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")


def normal_host(text: str) -> str:
    """``text`` as a host name to route by; ValueError with the reason if it cannot be one.

    Letters, digits, ``-``, ``_`` and ``.`` (underscores occur in real names), in
    labels of 1 to 63 characters; case and one trailing dot do not count.
    """
    host = text.lower() if text.isascii() else "\0"  # lower() makes some non-ASCII ASCII
    if host.endswith("."):
        host = host[:-1]
    if 0 < len(host) <= MAX_HOST and _HOST.fullmatch(host):
        return host
    if not host or len(host) > MAX_HOST:
        raise ValueError(f"a host name is 1-{MAX_HOST} characters")
    if not _HOST_CHARS.fullmatch(host):
        raise ValueError("a host name has only letters, digits, '-', '_' and '.'")
    raise ValueError("each label of a host name is 1-63 characters")


def is_label(name: str) -> bool:
    """Can ``name`` be one DNS label of a host name (``blog`` of ``blog.tunnel.example.com``)?"""
    return _LABEL.fullmatch(name.lower()) is not None
