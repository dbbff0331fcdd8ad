"""A registration whose identity already has a session: refuse it, or replace the old one.

The old session is pinged for ``REPLACE_PING_TIMEOUT``: an answer means two
processes use one name (refused), or, for an authenticated client, a second
service of the same client (it gets a port of its own, without a lease);
silence means its owner reconnected after a network blip the relay has not
noticed yet, so the old session ends and the newcomer takes its place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from enum import Enum

import yamux

from .leases import Identity
from .session import RegisteredSession

logger = logging.getLogger("relay.server")

REPLACE_PING_TIMEOUT = 2.0
"""A registration whose identity already has a session pings that session this long: an
answer refuses the newcomer (two processes with one name), silence replaces the old one
(its owner reconnected after a network blip the relay has not noticed yet)."""


class Decision(Enum):
    REFUSE = "refuse"
    """The holder answered: two processes use one name."""
    OWN_PORT = "own port"
    """The holder answered, and an authenticated client may run several services at once."""
    REPLACE = "replace"
    """The holder was silent or ending: it has ended, and the newcomer takes its place."""


def holder_of(
    sessions: Iterable[RegisteredSession], identity: Identity
) -> RegisteredSession | None:
    """The session registered under ``identity`` that is not ending, if any."""
    for session in sessions:
        if session.identity == identity and not session.ending:
            return session
    return None


async def settle(holder: RegisteredSession, identity: Identity, newcomer: str) -> Decision:
    """Is the session that holds ``identity`` alive? Ping it and see; if it is not, end it
    and wait until its port and lease are free for ``newcomer`` (a peer address)."""
    try:
        async with asyncio.timeout(REPLACE_PING_TIMEOUT):
            await holder.session.ping()
    except (TimeoutError, yamux.YamuxError):
        pass
    else:
        if not holder.ending and identity.authenticated:
            # Two forwarders under one name are often a mistake (a copied config): say
            # where both are, so the operator can tell which one is the stray.
            logger.warning(
                "%s is already registered from %s (public port %d) and that session is "
                "alive; the new registration from %s gets a port of its own, without a "
                "lease (two forwarders with one name?)",
                identity,
                holder.peer,
                holder.public_port,
                newcomer,
                extra={"peer": newcomer, "public_port": holder.public_port},
            )
            return Decision.OWN_PORT
        if not holder.ending:
            return Decision.REFUSE
    logger.info(
        "session %d: %s registers again from %s; ending the old session, which "
        "did not answer a ping",
        holder.id,
        identity,
        newcomer,
    )
    holder.end("replaced by a new registration of its owner")
    await holder.wait_closed()
    return Decision.REPLACE
