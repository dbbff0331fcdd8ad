"""One registration with a relay: ``relay.register(host, port, ...)`` and what it negotiated.

The low-level call under ``relay.start_server`` and the forwarder: iterate
the registration's session (``async for stream in registration.session``) to
get one stream per public connection.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yamux

from ..errors import RegistrationError, RelayClosedError
from ..net import format_endpoint
from ..options import RegistrationOptions
from ..options.declare import takes_options
from ..wire.route import RouteKind, url
from ..wire.tls import describe_tls_error
from .registering import RegisteringProtocol


class TLSError(RegistrationError):
    """The TLS handshake with the relay failed (certificate not trusted, wrong host, ...)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered session and what was negotiated."""

    session: yamux.Session
    """The yamux session (we are its server): one stream per public connection."""
    public_port: int
    """The port the relay opened for us (a routed service: its shared port): public clients
    connect there."""
    version: int
    """2 if the relay challenged (registration v2), 1 for a seed relay."""
    client_address: bool
    """Every stream starts with a PROXY v2 header naming the public client."""
    route: RouteKind | None = None
    """How public clients name a service reached by name (None: a port of its own)."""
    host: str | None = None
    """The host name public clients use for a service reached by name."""
    sessions: int = 1
    """Sessions of our identity the relay lets share this port (``sessions=``, if it
    offers that; 1 otherwise)."""

    @property
    def url(self) -> str | None:
        """``http://blog.tunnel.example.com/`` for a routed service, else None."""
        if self.route is None or self.host is None:
            return None
        return url(self.route, self.host, self.public_port)


@takes_options(RegistrationOptions, others=True)
async def register(
    host: str, port: int, options: RegistrationOptions | None = None, **keywords: Any
) -> Registration:
    """Register with the relay at ``host:port``, once.

    ``options`` and the keywords that name options are ``RegistrationOptions``
    (``secret=``, ``name=``, ``remote_port=``, ``ssl=``, ...; the reconnect
    options are the servers'); the other keywords go to
    ``loop.create_connection`` (e.g. ``local_addr=``). Streams start with the
    client's PROXY header only with ``client_address=True``.

    Raises OSError if the relay cannot be reached, RegistrationError (a
    ConnectionError) if it answers anything but a port (RelayRefusedError for
    an ``error: ...`` line, AuthenticationError when it refused the secret,
    SeedRelayError for a seed relay with ``require_v2``), TimeoutError after
    ``connect_timeout`` seconds; OptionError (a ValueError) for a bad option.
    """
    option_keywords, connection = RegistrationOptions.split(keywords)
    checked = RegistrationOptions.build(options, **option_keywords).with_files_read()
    return await connect(host, port, checked, checked.session_config(), connection)


async def connect(
    host: str,
    port: int,
    options: RegistrationOptions,
    config: yamux.Config,
    connection: Mapping[str, Any],
) -> Registration:
    """``register`` with options whose files are read and the yamux settings to use."""
    loop = asyncio.get_running_loop()
    protocol: RegisteringProtocol | None = None
    endpoint = format_endpoint(host, port)
    registered = False
    ssl = options.ssl or None
    kwargs = dict(connection)
    if ssl:
        kwargs.setdefault("ssl_handshake_timeout", options.connect_timeout)
        if options.tls_server_name:
            kwargs.setdefault("server_hostname", options.tls_server_name)
    try:
        async with asyncio.timeout(options.connect_timeout):
            try:
                _, protocol = await loop.create_connection(
                    lambda: RegisteringProtocol(config, options), host, port, ssl=ssl, **kwargs
                )
            except (ssl_module.SSLError, ConnectionResetError) as exc:
                described = describe_tls_error(exc) if ssl else None
                if described is None:
                    raise
                raise TLSError(described) from exc
            try:
                session, public_port = await protocol.result
            except RelayClosedError as exc:
                if not ssl or protocol.version != 1:
                    raise
                # A TLS 1.3 relay refuses a client certificate after the handshake, and
                # asyncio reports its alert as a plain close: say what it most likely was.
                raise TLSError(
                    f"{exc}, right after the TLS handshake: does it require a client "
                    f"certificate (--tls-cert/--tls-key) that it did not accept?"
                ) from exc
        registered = True
        return Registration(
            session,
            public_port,
            protocol.version,
            protocol.client_address,
            protocol.route,
            protocol.host,
            protocol.sessions,
        )
    except TimeoutError:
        what = "connect to" if protocol is None else "get a port line from"
        hint = (
            " (if it serves TLS on this port, connect with --tls)"
            if protocol is not None and not ssl
            else ""
        )
        raise TimeoutError(
            f"could not {what} the relay at {endpoint} within {options.connect_timeout:g} s{hint}"
        ) from None
    finally:
        if not registered and protocol is not None:
            protocol.abort()  # the connection, and the session if one was attached
