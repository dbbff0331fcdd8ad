"""Sessions that may be dead while their identity registers again: ping them, end the silent.

``relay.server.identities`` decides what a registration of an identity that is
held may do; when it needs room, the process that holds each of the identity's
sessions settles them here: a ping for ``REPLACE_PING_TIMEOUT``. An answer
means the session is alive (two processes use one name, or an authenticated
client runs a second service); silence means its owner reconnected after a
network blip the relay has not noticed yet, so the old session ends and the
newcomer takes its place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import yamux

from .session import RegisteredSession

logger = logging.getLogger("relay.server")

REPLACE_PING_TIMEOUT = 2.0
"""A registration whose identity has no room pings its sessions this long: an answer keeps a
session, silence ends it (its owner reconnected after a network blip the relay has not
noticed yet)."""


async def answers(holder: RegisteredSession) -> bool:
    """Whether ``holder`` answers a ping in time (and is not ending)."""
    try:
        async with asyncio.timeout(REPLACE_PING_TIMEOUT):
            await holder.session.ping()
    except (TimeoutError, yamux.YamuxError):
        return False
    return not holder.ending


async def settle(holders: Iterable[RegisteredSession], newcomer: str) -> set[int]:
    """Ping ``holders`` at once; end those that are silent (for the registration from the peer
    ``newcomer``) and wait until they are closed; the ids of those that answered."""
    sessions = list(holders)
    alive = await asyncio.gather(*(answers(holder) for holder in sessions))
    for holder, answered in zip(sessions, alive, strict=True):
        if not answered:
            logger.info(
                "session %d: %s registers again from %s; ending the old session, which "
                "did not answer a ping",
                holder.id,
                holder.identity,
                newcomer,
                extra=holder.log_fields(),
            )
            holder.end("replaced by a new registration of its owner")
    for holder, answered in zip(sessions, alive, strict=True):
        if not answered:
            await holder.wait_closed()
    return {holder.id for holder, answered in zip(sessions, alive, strict=True) if answered}
