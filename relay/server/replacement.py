"""A registration whose identity already has a session: refuse it, or replace the old one.

The old session is pinged for ``REPLACE_PING_TIMEOUT``: an answer means two
processes use one name (refused), or, for an authenticated client, a second
service of the same client (it gets a port of its own, without a lease);
silence means its owner reconnected after a network blip the relay has not
noticed yet, so the old session ends and the newcomer takes its place.

Also ``revoke``: the sessions of clients removed from the auth file end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import yamux

from .challenge import RegistrationRequest
from .leases import Identity
from .session import Registration, peer_of

if TYPE_CHECKING:
    from .relay import RelayServer

logger = logging.getLogger("relay.server")

REPLACE_PING_TIMEOUT = 2.0
"""A registration whose identity already has a session pings that session this long: an
answer refuses the newcomer (two processes with one name), silence replaces the old one
(its owner reconnected after a network blip the relay has not noticed yet)."""


def holder_of(registrations: Iterable[Registration], identity: Identity) -> Registration | None:
    """The live session registered under ``identity``, if any."""
    for reg in registrations:
        if reg.identity == identity and not reg.ending:
            return reg
    return None


async def replace(
    server: RelayServer,
    transport: asyncio.Transport,
    request: RegistrationRequest | None,
    source: str,
    identity: Identity,
    holder: Registration,
) -> None:
    """``identity`` registers again while its old session looks alive: is it?

    The newcomer holds its source's slot of unfinished registrations throughout;
    every way out releases it or passes it on to ``registration_made``.
    """
    try:
        async with asyncio.timeout(REPLACE_PING_TIMEOUT):
            await holder.session.ping()
    except (TimeoutError, yamux.YamuxError):
        pass
    except asyncio.CancelledError:  # the relay is closing
        server.registering.release(source)
        transport.abort()
        raise
    else:
        if not holder.ending and identity.authenticated:
            # An authenticated client may run several services at once.
            logger.info(
                "%s already has a live session on public port %d; this one gets "
                "a port of its own, without a lease",
                identity,
                holder.public_port,
            )
            if not transport.is_closing():
                server.registration_made(transport, request, lease=False)
            else:
                server.registering.release(source)
            return
        if not holder.ending:
            server.registering.release(source)
            server.refuse(
                transport,
                peer_of(transport),
                "name in use",
                f"{identity} is already registered (public port "
                f"{holder.public_port}) and that session is alive",
            )
            return
    logger.info(
        "session %d: %s registers again from %s; ending the old session, which "
        "did not answer a ping",
        holder.id,
        identity,
        peer_of(transport),
    )
    holder.end_reason = holder.end_reason or "replaced by a new registration of its owner"
    if holder.task is not None:
        holder.task.cancel()
        try:
            await asyncio.wait([holder.task])
        except asyncio.CancelledError:
            server.registering.release(source)
            transport.abort()
            raise
    if transport.is_closing():
        server.registering.release(source)
        return
    server.registration_made(transport, request)  # still holding the source's slot


def revoke(registrations: Iterable[Registration], names: set[str]) -> None:
    """End the sessions of clients whose auth-file entry was removed or changed."""
    for reg in list(registrations):
        client = reg.request.client if reg.request is not None else None
        if (
            client in names
            and reg.request is not None
            and reg.request.authenticated
            and not reg.ending
            and reg.task is not None
        ):
            reg.end_reason = (
                f"client {client} was removed from the auth file or its secret or ports changed"
            )
            reg.task.cancel()
