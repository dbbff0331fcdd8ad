"""Who holds each identity on this host: asked before a registration with an identity allocates.

A registration whose request has an identity (a name, an authenticated
client) claims it first, and the answer is one of:

* ``own``: nobody holds it: allocate as usual;
* ``join``: it is held by registrations that asked for several sessions
  (``sessions=K``) and there is room for one more: bind their public port too
  (SO_REUSEPORT), so the kernel spreads public connections over all of them;
* ``own port``: an authenticated client registers a second service while the
  first is alive: a port of its own, without a lease;
* ``refuse``: the identity is held by live sessions and there is no room;
* ``move``: (several workers) the identity's sessions are all in the worker that
  asks, and another worker holds none: that worker should take the registration
  (its connection is handed over), so that the sessions of one service use
  several cores.

When there is no room, the holders are pinged first (``settle``): a holder
that does not answer (its owner reconnected after a network blip the relay
has not noticed yet) ends, and the newcomer takes its place.

The table is the one place that sees every registration of an identity on
the host, so a newcomer never races another registration of the same
identity: claims of one identity are answered one at a time, and a claim
waits for the registrations still on their way. In a single relay process the
relay keeps its own table; with ``--workers`` the supervisor keeps it, and each
worker asks through its channel (``settle`` then goes to the worker that holds
the session).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

logger = logging.getLogger("relay.server")

PENDING_TIMEOUT = 30.0
"""A claim waits this long for a registration of the same identity still on its way (which
ends by being registered or dropped); then it is dropped as lost."""

Kind = Literal["own", "join", "own port", "refuse", "full", "move"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a claim; ``ref`` names the claim in ``registered`` and ``dropped``
    (0 for ``own port``, ``refuse`` and ``full``, which hold nothing)."""

    kind: Kind
    ref: int = 0
    port: int | None = None
    """``join``: the port to bind; ``refuse`` and ``own port``: the port the live holders
    have."""
    holders: int = 0
    """``refuse``: how many live sessions hold the identity; ``full``: how many
    registrations the host has."""
    worker: int = 0
    """``move``: the worker that should take the registration."""
    peer: str | None = None
    """``own port``: where the live holder registered from (for the operator)."""


Settle = Callable[[int, list[int], str], Awaitable[set[int]]]
"""``settle(worker, sessions, newcomer)``: ping those sessions of that worker; end the silent
ones (and wait until their ports are free) for the newcomer (its peer address, for the log);
return the ids of those that answered."""


class Identities(Protocol):
    """What a relay asks of the table (its own, or the supervisor's through a channel)."""

    async def claim(
        self, key: str | None, sessions: int, authenticated: bool, newcomer: str, movable: bool
    ) -> Verdict:
        """What a registration of ``key`` (None: anonymous, only counted) may do; ``movable``:
        its connection could be handed to another worker."""

    def registered(self, ref: int, session: int, port: int) -> None:
        """The claim ``ref`` has a session now, with this id and public port."""

    def dropped(self, ref: int) -> None:
        """The claim ``ref`` is over: its registration failed, or its session ended."""


@dataclass(eq=False)
class Holding:
    """One registration of an identity: on its way (no session yet) or registered."""

    key: str | None
    ref: int
    worker: int
    sessions: int
    peer: str
    """Where the registration came from."""
    session: int | None = None
    port: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once registered or dropped: a claim of the same identity waits for it."""


class IdentityTable:
    """Every registration with an identity on this host (see the module doc); with a
    ``capacity`` the anonymous ones too, counted toward it (``--max-sessions`` of a host
    whose registrations several processes hold)."""

    def __init__(
        self,
        settle: Settle,
        capacity: int | None = None,
        workers: Callable[[], list[int]] | None = None,
    ) -> None:
        self._settle = settle
        self.capacity = capacity
        self._workers = workers
        """The workers that take registrations now (None: one process)."""
        self._held: dict[str, list[Holding]] = {}
        self._by_ref: dict[int, Holding] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        """Per identity being claimed: its lock and how many claims use it."""
        self._refs = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_ref)

    def holdings(self, key: str) -> list[Holding]:
        return list(self._held.get(key, ()))

    async def claim(
        self,
        key: str | None,
        sessions: int,
        authenticated: bool,
        newcomer: str,
        movable: bool = False,
        worker: int = 0,
    ) -> Verdict:
        """What a registration of ``key`` asking for ``sessions`` (in ``worker``, from the
        peer ``newcomer``; ``movable`` to another worker) may do; an anonymous one (``key``
        None) is only counted."""
        if self.capacity is not None and len(self._by_ref) >= self.capacity:
            return Verdict("full", holders=len(self._by_ref))
        if key is None:
            return Verdict("own", self._hold(None, 1, worker, newcomer))
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                await self._wait_pending(key)
                verdict = self._room(key, sessions, worker, movable, newcomer)
                if verdict is not None:
                    return verdict
                await self._ping(key, newcomer)
                verdict = self._room(key, sessions, worker, movable, newcomer)
                if verdict is not None:
                    return verdict
                holders = self._held[key]
                if authenticated and sessions == 1 and all(h.sessions == 1 for h in holders):
                    ref = self._hold(None, 1, worker, newcomer)
                    return Verdict("own port", ref, holders[0].port, peer=holders[0].peer)
                return Verdict("refuse", port=holders[0].port, holders=len(holders))
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def registered(self, ref: int, session: int, port: int) -> None:
        holding = self._by_ref.get(ref)
        if holding is not None:
            holding.session = session
            holding.port = port
            holding.done.set()

    def dropped(self, ref: int) -> None:
        holding = self._by_ref.pop(ref, None)
        if holding is None:
            return
        if holding.key is not None:
            held = self._held[holding.key]
            held.remove(holding)
            if not held:
                del self._held[holding.key]
        holding.done.set()

    def crowded(self, worker: int) -> list[tuple[int, int]]:
        """``(worker, session)`` of one session per identity that has several sessions in one
        worker and none in ``worker`` (which just started): retired, its owner registers it
        again, and it is moved there (sessions spread over the workers again)."""
        found = []
        for held in self._held.values():
            registered = [h for h in held if h.session is not None and h.sessions > 1]
            by_worker: dict[int, list[Holding]] = {}
            for holding in registered:
                by_worker.setdefault(holding.worker, []).append(holding)
            if worker in by_worker:
                continue
            most = max(by_worker.values(), key=len, default=[])
            if len(most) >= 2:
                newest = most[-1]
                assert newest.session is not None
                found.append((newest.worker, newest.session))
        return found

    def drop_worker(self, worker: int) -> None:
        """Every registration of ``worker`` is gone (the process died)."""
        for holding in [h for h in self._by_ref.values() if h.worker == worker]:
            self.dropped(holding.ref)

    # ----------------------------------------------------------------- steps
    async def _wait_pending(self, key: str) -> None:
        while pending := [h for h in self._held.get(key, ()) if h.session is None]:
            try:
                async with asyncio.timeout(PENDING_TIMEOUT):
                    await pending[0].done.wait()
            except TimeoutError:
                logger.error("a registration of %s was not heard of for %g s", key, PENDING_TIMEOUT)
                self.dropped(pending[0].ref)

    def _room(
        self, key: str, sessions: int, worker: int, movable: bool, newcomer: str
    ) -> Verdict | None:
        """``own`` or ``join`` (the claim is held from now on), ``move``, or None: no room."""
        holders = self._held.get(key, [])
        if not holders:
            return Verdict("own", self._hold(key, sessions, worker, newcomer))
        if sessions > 1 and len(holders) < sessions and all(h.sessions > 1 for h in holders):
            here = {h.worker for h in holders}
            if movable and worker in here and self._workers is not None:
                elsewhere = [w for w in self._workers() if w not in here]
                if elsewhere:
                    return Verdict("move", worker=elsewhere[0])
            port = holders[0].port
            return Verdict("join", self._hold(key, sessions, worker, newcomer), port)
        return None

    def _hold(self, key: str | None, sessions: int, worker: int, peer: str) -> int:
        ref = next(self._refs)
        holding = Holding(key, ref, worker, sessions, peer)
        if key is not None:
            self._held.setdefault(key, []).append(holding)
        self._by_ref[ref] = holding
        return ref

    async def _ping(self, key: str, newcomer: str) -> None:
        """Ping every holder of ``key``, by worker; drop those that did not answer."""
        by_worker: dict[int, list[Holding]] = {}
        for holding in self._held.get(key, ()):
            by_worker.setdefault(holding.worker, []).append(holding)
        answers = await asyncio.gather(
            *(
                self._settle(worker, [h.session for h in held if h.session is not None], newcomer)
                for worker, held in by_worker.items()
            )
        )
        for held, alive in zip(by_worker.values(), answers, strict=True):
            for holding in held:
                if holding.session not in alive:
                    self.dropped(holding.ref)
