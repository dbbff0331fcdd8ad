"""One service on several relays: which relays, and a server that registers with each.

Relays that share a cluster store (``relay server --cluster``) give a service
the same public port, so public clients may use any of them (two A records of
one name, for instance); relays that do not each give their own. Each relay
is registered with and reconnected to on its own (one ``RelayedServer`` each):
losing one costs only the connections it carried.

A host name given with ``relays`` that resolves to several addresses is one
relay per address (looked up once, at start). The first relay, given alone
as ``host, port``, is one relay whatever it resolves to, as it always was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yamux

from ..errors import RelayDisconnectedError
from ..net import format_endpoint
from ..options import RegistrationOptions
from ..options.declare import takes_options
from .relayed_server import Handler, RelayedServer


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """One relay to register with: where to connect, and the name its TLS certificate has."""

    host: str
    port: int
    server_name: str | None = None
    """The host name the address came from (TLS checks the certificate against it)."""

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def relay_addresses(
    first: tuple[str, int] | None, more: Sequence[tuple[str, int]]
) -> list[RelayAddress]:
    """``first`` as it is, then each of ``more`` once per address it resolves to; each
    relay once. A name that does not resolve stays a name (its server retries it)."""
    found: list[RelayAddress] = [] if first is None else [RelayAddress(*first)]
    loop = asyncio.get_running_loop()
    for host, port in more:
        if _literal(host):
            found.append(RelayAddress(host, port))
            continue
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            found.append(RelayAddress(host, port))
            continue
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(addresses) == 1:
            found.append(RelayAddress(host, port))
        else:
            found += [RelayAddress(address, port, host) for address in addresses]
    unique: dict[tuple[str, int], RelayAddress] = {}
    for address in found:
        unique.setdefault((address.host, address.port), address)
    return list(unique.values())


def relayed_server(
    handler: Handler,
    relay: RelayAddress,
    options: RegistrationOptions,
    *,
    on_endpoint: Callable[[str], object] | None = None,
    config: yamux.Config | None = None,
    **connection: Any,
) -> RelayedServer:
    """A ``RelayedServer`` for one relay of several (its TLS name, if it came from one)."""
    if relay.server_name is not None and options.ssl:
        connection.setdefault("server_hostname", options.tls_server_name or relay.server_name)
    return RelayedServer(
        handler,
        relay.host,
        relay.port,
        options,
        on_endpoint=on_endpoint,
        config=config,
        **connection,
    )


class RelayedServers:
    """``RelayedServer``'s API over one server per relay: ``public_endpoints`` lists them."""

    def __init__(self, servers: list[RelayedServer]) -> None:
        self.servers = servers

    @property
    def public_port(self) -> int | None:
        """The public port of the first registered relay (with a cluster: of all)."""
        return next((s.public_port for s in self.servers if s.public_port is not None), None)

    @property
    def public_endpoint(self) -> str:
        """The first relay's endpoint where the service is registered now."""
        return next(s.public_endpoint for s in self._serving_first())

    @property
    def public_endpoints(self) -> list[str]:
        """One ``host:port`` per relay the service is registered with now."""
        return [s.public_endpoint for s in self.servers if s.is_serving()]

    @property
    def connections(self) -> int:
        return sum(s.connections for s in self.servers)

    def is_serving(self) -> bool:
        """Registered with at least one relay."""
        return any(s.is_serving() for s in self.servers)

    async def start(self, *, retry: bool = False) -> None:
        """Register with every relay; without ``retry`` it raises only if none takes it (the
        others keep trying in the background)."""
        if retry:
            for server in self.servers:
                await server.start(retry=True)
            return
        failures: list[BaseException] = []
        for server in self.servers:
            try:
                await server.start()
            except (OSError, TimeoutError) as exc:
                failures.append(exc)
        if len(failures) == len(self.servers):
            raise failures[0]
        for server in self.servers:
            if not server.started:
                await server.start(retry=True)

    async def wait_endpoint(self) -> str:
        """The endpoint of the first relay that is (or becomes) registered."""
        waits = [asyncio.ensure_future(s.wait_endpoint()) for s in self.servers]
        try:
            for done in asyncio.as_completed(waits):
                try:
                    return await done
                except RelayDisconnectedError:
                    continue
            raise RelayDisconnectedError("the server is closed, or every relay was lost")
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()

    async def serve_forever(self) -> None:
        """Until cancelled or closed; raises when every relay was lost (``reconnect=False``)."""
        try:
            ends = await asyncio.gather(
                *(s.serve_forever() for s in self.servers), return_exceptions=True
            )
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise
        errors = [end for end in ends if isinstance(end, BaseException)]
        if errors and len(errors) == len(ends):
            raise errors[0]

    async def __aenter__(self) -> RelayedServers:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def _serving_first(self) -> list[RelayedServer]:
        serving = [s for s in self.servers if s.is_serving()]
        if not serving:
            raise RuntimeError("not registered with any relay yet")
        return serving


@takes_options(RegistrationOptions, others=True)
async def start_server(
    client_connected_cb: Handler,
    host: str,
    port: int,
    options: RegistrationOptions | None = None,
    *,
    on_endpoint: Callable[[str], object] | None = None,
    **keywords: Any,
) -> RelayedServer | RelayedServers:
    """Register with the relay at ``host:port`` and serve each relayed connection.

    ``client_connected_cb(reader, writer)`` has the shape of asyncio.start_server's
    callback; the returned server exposes ``public_port`` / ``public_endpoint``.
    ``options`` and the keywords that name options are ``RegistrationOptions``:
    with a v2 relay, ``writer.get_extra_info("peername")`` is the public client
    (``client_address``, on by default), ``name`` keeps the public port (a lease),
    ``remote_port`` asks for one, ``client_name`` says who we are at a relay with
    an auth file (``name`` then names one of that client's services), and
    ``require_v2`` refuses a seed relay (it could be a challenge stripped in
    transit) with SeedRelayError instead of falling back to the seed protocol.
    The first registration raises as ``register()`` does; after that the server
    registers again whenever the relay is lost (``reconnect=False``: it stops),
    calling ``on_endpoint(endpoint)`` each time. The other keywords go to
    ``loop.create_connection``.

    ``relays=[(host, port), ...]`` registers with those relays too, each on its own
    (``RelayedServers``: ``public_endpoints`` lists one endpoint per relay); the
    first registration must succeed with one of them.
    """
    option_keywords, connection = RegistrationOptions.split(keywords)
    checked = RegistrationOptions.build(options, **option_keywords).with_files_read()
    if not checked.relays:
        server = RelayedServer(
            client_connected_cb, host, port, checked, on_endpoint=on_endpoint, **connection
        )
        await server.start()
        return server
    config = checked.session_config()
    servers = RelayedServers(
        [
            relayed_server(
                client_connected_cb,
                relay,
                checked,
                on_endpoint=on_endpoint,
                config=config,
                **connection,
            )
            for relay in await relay_addresses((host, port), checked.relays)
        ]
    )
    await servers.start()
    return servers
