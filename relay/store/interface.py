"""The lease store: which public port each identity keeps, and who holds which port now.

One interface (``LeaseStore``), two implementations: SQLite, embedded and the
default (``relay.store.sqlite_store``), safe for several processes of one host;
and Redis (``relay.store.redis_store``), shared by several relays. Every
change is one atomic step of the store (a transaction, a Lua script), so no two
relays or processes ever give one port to two identities, nor one identity two
ports.

What the store keeps:

- **leases**: identity key -> port, with the time it was granted and last
  used. An identity gets its leased port back, and nobody else gets it until
  the lease has been unused for ``ttl`` seconds;
- **claims**: the ports each *holder* (a relay process) has open now, with
  the identity on each (none for an anonymous registration) and a token that
  names the one registration. A port claimed by a live holder is in use for
  every relay; one identity may be claimed on the same port by several
  holders (one service on several relays), never on two ports;
- **members**: the live holders, each renewing its membership (a heartbeat)
  before it lapses; a holder that lapsed (killed, cut off) has no claims any
  more, while its leases stay.

The store decides; binding the port stays with the relay (``relay.server.ports``):
``allocate`` claims a port, the relay binds it, and ``abandon`` takes the claim
back if the bind fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ..errors import RelayError

Ranges = tuple[tuple[int, int], ...]
"""Ports as sorted, non-overlapping inclusive ranges."""

How = Literal["requested", "leased", "free", "offered"]
"""How a claimed port was chosen: the client asked for it, it is the identity's lease, the
store chose it from the candidates, or the OS offered it (``Ask.offered``)."""

Denial = Literal["in use", "in use by a client", "reserved", "elsewhere", "names", "no port"]
"""Why the store gives no port: ``in use`` (claimed by another registration), ``in use by a
client`` (claimed, and leased to another identity), ``reserved`` (leased to an identity that
is away), ``elsewhere`` (the identity holds another port on other relays), ``names`` (too many
leases of unauthenticated names), ``no port`` (no candidate is free)."""


class StoreError(RelayError):
    """The store cannot answer (base class)."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store cannot be reached or did not answer in time; ``str()`` says why. A
    registration that needs it gets a "retry later" refusal."""


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    """The owner (``relay.server.leases.Identity.key``)."""
    port: int
    granted: float
    """Wall-clock time (``time.time()``) the port was first granted to this owner."""
    last_used: float
    """Wall-clock time the owner was last seen registered."""


@dataclass(frozen=True, slots=True)
class Ask:
    """One allocation: what the registration may have, and what this relay knows locally."""

    key: str | None
    """The identity that gets the lease; None: an anonymous registration (no lease)."""
    token: str
    """Names this registration's claim (``release`` and ``abandon`` take it back)."""
    port: int | None = None
    """A port the client asked for (``offered`` False), or the OS offered (True)."""
    offered: bool = False
    candidates: Ranges | None = None
    """Ports the registration may get when it asks for none; None: any the OS offers
    (then the store answers ``NeedsOffer`` unless the identity's lease will do)."""
    exclude: tuple[int, ...] = ()
    """Ports this relay could not bind: not to be chosen again."""
    after: int = 0
    """Round robin: a free port is searched for after this one."""
    counted: bool = False
    """The identity is an unauthenticated name: its new lease counts toward ``max_names``."""
    max_names: int = 0


@dataclass(frozen=True, slots=True)
class Claimed:
    """A port claimed for a registration (and leased to its identity, if any)."""

    port: int
    how: How
    previous: Lease | None
    """The identity's lease before this step (None: it had none, or is anonymous)."""


@dataclass(frozen=True, slots=True)
class Denied:
    """No port for this ask, and why (``relay.server.ports`` words it)."""

    why: Denial
    port: int | None = None
    """The port concerned: the one asked for or offered, or the identity's elsewhere."""
    count: int = 0
    """``names``: leases of unauthenticated names; ``no port``: candidates reserved for
    identities that are away."""


@dataclass(frozen=True, slots=True)
class NeedsOffer:
    """No candidates and no usable lease: bind a port the OS picks and ask again with it."""

    previous: Lease | None


Outcome = Claimed | Denied | NeedsOffer


@dataclass(frozen=True, slots=True)
class Held:
    """One port this holder has open, as ``sync`` re-asserts it."""

    port: int
    key: str | None
    token: str


class LeaseStore(Protocol):
    """Leases, claims and membership of one holder (this relay process); every method is
    one atomic step of the store, and raises StoreUnavailableError when it cannot be had."""

    @property
    def holder(self) -> str:
        """This process's name in the store: unique per process start."""

    @property
    def ttl(self) -> float:
        """Seconds a lease stays unused before it ends."""

    def describe(self) -> str:
        """Where the store is, for logs (never a password)."""

    @property
    def persistent(self) -> bool:
        """True if the leases outlive this process (a file, or a cluster store)."""

    async def allocate(self, ask: Ask) -> Outcome:
        """Claim a port for ``ask`` and lease it to its identity, or say why not (the
        policy: ``relay.server.ports``). Leases unused for ``ttl`` end first."""

    async def abandon(self, ask: Ask, claimed: Claimed) -> None:
        """Undo ``allocate`` when the port could not be bound: the claim goes, and the
        identity's lease is as before unless another holder uses it meanwhile."""

    async def release(self, port: int, token: str) -> None:
        """The registration with ``token`` on ``port`` ended: its claim goes, its lease
        starts counting its unused time."""

    async def heartbeat(self) -> bool:
        """Renew this holder's membership; False if it had lapsed (its claims may be gone:
        ``sync`` them)."""

    async def sync(self, held: list[Held]) -> list[Held]:
        """Make this holder's claims exactly ``held``, touch their leases, end leases unused
        for ``ttl`` and the claims of holders that lapsed. Returns what could not be
        claimed again because another identity has the port now (after a long outage)."""

    async def leave(self) -> None:
        """This holder stops: its membership and claims go (its leases stay)."""

    async def lease_of(self, key: str) -> Lease | None: ...

    async def lease_on(self, port: int) -> Lease | None: ...

    async def leases(self) -> list[Lease]: ...

    async def close(self) -> None:
        """Close the connection (after ``leave``, or without it on a crash-like stop)."""
