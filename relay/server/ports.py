"""Public ports: which one a registration gets, and why it cannot have the one it asked for.

The policy, in order:

1. A requested port must lie in the relay's ``--port-range`` and in the
   client's allowance (auth file); it must not be leased to another identity
   (present or away) nor be in use by another registration; then it is bound
   or refused with the reason.
2. Without a request, an identity with a lease gets its leased port back
   (if the range and allowance still include it and the port can be bound;
   else it gets a new port and the lease moves).
3. Otherwise a free port: from the range and allowance, round robin from the
   last port handed out (a port just freed is not handed to a different
   client at once, while stale public clients may still knock); or, with no
   range, the one the OS picks. Either way never a port leased to someone
   who is away.

Every refusal is a ``PortRefusedError`` whose text goes to the registering
side in the ``error:`` line, with its class (``relay.wire.refusal``): a port
the client may never have is permanent, a port taken or none free right now
is worth a retry.

The decisions are the lease store's (``relay.store``: one atomic step, so
that relays and processes sharing a store never give one port to two
identities, nor one identity two ports); binding the port is this relay's,
and a port it cannot bind goes back to the store (``abandon``). An identity
may hold its port on several relays at once (one service registered with
each), never two ports.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import socket
from dataclasses import dataclass, replace

import yamux

from ..errors import RegistrationError
from ..net import BindAddress
from ..store import (
    Ask,
    Claimed,
    Denied,
    Held,
    LeaseStore,
    NeedsOffer,
    StoreUnavailableError,
)
from ..wire.refusal import PERMANENT, RETRY, RefusalKind
from .auth import PortSet
from .request import RegistrationRequest
from .store_health import StoreHealth

logger = logging.getLogger("relay.ports")

OS_CHOICE_ATTEMPTS = 64
"""Ports the OS may pick that are leased to someone away before we give up."""


class PortRefusedError(RegistrationError):
    """A registration cannot have a public port; ``str()`` is the reason for the error line,
    ``kind`` its class."""

    kind: RefusalKind = RETRY


class PortTakenError(PortRefusedError):
    """The requested port is leased to or used by another identity, or by another program."""


class PortOutsideRangeError(PortRefusedError):
    """The requested port is outside the relay's ``--port-range``."""

    kind = PERMANENT


class PortNotAllowedError(PortRefusedError):
    """The client may not have the requested port (its allowance, or the OS refuses it)."""

    kind = PERMANENT


class NoFreePortError(PortRefusedError):
    """Every port a registration could have is in use or leased."""


class TooManyLeasesError(PortRefusedError):
    """A new unauthenticated name, but the relay holds the most leases of such names (a
    retry may succeed once unused leases end)."""


class HeldElsewhereError(PortTakenError):
    """The identity holds another port in a live session (here or on another relay), and
    one identity never gets two ports."""


class StoreDownError(PortRefusedError):
    """The lease store cannot be reached: a later try may succeed."""


def intersection(a: PortSet, b: PortSet) -> PortSet:
    """Ports in both ``a`` and ``b``."""
    return PortSet(
        tuple(
            (max(lo, low), min(hi, high))
            for lo, hi in a.ranges
            for low, high in b.ranges
            if max(lo, low) <= min(hi, high)
        )
    )


@dataclass(slots=True)
class Holding:
    """An open public port of this relay: whose it is in the store."""

    key: str | None
    token: str
    sessions: int = 1
    """Sessions of this relay on the port: several sessions of one identity
    (``sessions=``) share it, and its claim goes with the last."""


class PortAllocator:
    """Chooses (through the store), binds and remembers public ports; ``await allocate``,
    ``release``, and ``await close()`` at the end."""

    def __init__(
        self,
        bind: BindAddress,
        port_range: tuple[int, int] | None,
        store: LeaseStore,
        max_name_leases: int,
    ) -> None:
        self.bind = bind
        self.max_name_leases = max_name_leases
        self.port_range = None if port_range is None else PortSet((port_range,))
        self.store = store
        self.health = StoreHealth(store.describe())
        """Whether the store answers: while it does not, allocations fail at once."""
        self.in_use: dict[int, Holding] = {}
        """Open public ports of this relay -> their claim in the store."""
        self._last_port = 0
        """The port handed out last from a set: the next search starts after it."""
        self._tokens = itertools.count(1)
        self._closed = False
        self._releases = yamux.TaskOwner(logger)
        """Releases on their way to the store; an allocation waits for them first, so
        that a port (or a lease) freed here is free in the store too."""

    @property
    def ttl(self) -> float:
        return self.store.ttl

    async def allocate(
        self, request: RegistrationRequest, *, join: int | None = None
    ) -> socket.socket:
        """A bound, listening socket for ``request``; raises PortRefusedError (StoreDownError
        when the store cannot be reached) or OSError.

        A registration of several sessions (``request.sessions``) binds with SO_REUSEPORT,
        so that the other sessions of its identity can bind the same port; ``join`` is
        that port, for one of them (``relay.server.identities`` says which)."""
        await self.settled()
        if join is not None:
            return await self._join(request, join)
        identity = request.identity
        candidates = self._candidates(request)
        ask = Ask(
            key=None if identity is None else identity.key,
            token=str(next(self._tokens)),
            port=request.remote_port,
            candidates=None if candidates is None else candidates.ranges,
            counted=identity is not None and not identity.authenticated,
            max_names=self.max_name_leases,
        )
        if request.remote_port is not None:
            self.check(request)
        offers: list[socket.socket] = []
        try:
            while True:
                ask = replace(ask, after=self._last_port)
                outcome = await self._ask(ask)
                if isinstance(outcome, NeedsOffer):
                    offered, ask = self._offer(ask, offers)
                    offers.append(offered)  # closed unless taken: a refused offer stays open
                    outcome = await self._ask(ask)  # meanwhile, so the OS offers another next
                    if isinstance(outcome, Denied):
                        if outcome.why not in ("reserved", "in use"):
                            raise self._refusal(outcome, request)
                        ask = replace(ask, port=None, offered=False)
                        continue
                    assert isinstance(outcome, Claimed)
                    offers.remove(offered)
                    if request.sessions > 1:  # SO_REUSEPORT is set before the bind
                        offered.close()
                        shared = await self._bind(request, ask, outcome)
                        if shared is None:
                            ask = replace(ask, port=None, offered=False)
                            continue
                        offered = shared
                    return self._opened(offered, ask, outcome)
                if isinstance(outcome, Denied):
                    raise self._refusal(outcome, request)
                bound = await self._bind(request, ask, outcome)
                if bound is not None:
                    return self._opened(bound, ask, outcome)
                ask = replace(ask, exclude=(*ask.exclude, outcome.port))
        finally:
            for sock in offers:
                sock.close()

    def release(self, port: int) -> None:
        """The registration on ``port`` ended: its claim goes (with the last session on the
        port), its lease (if any) now counts its unused time."""
        holding = self.in_use.get(port)
        if holding is None:
            return
        holding.sessions -= 1
        if holding.sessions == 0:
            del self.in_use[port]
            self._releases.spawn(self._release(port, holding.token), name=f"release-{port}")

    async def settled(self) -> None:
        """Until the releases so far have reached the store."""
        await self._releases.wait()

    def held(self) -> list[Held]:
        """Every open public port, as the store should know it (``LeaseStore.sync``)."""
        return [Held(port, h.key, h.token) for port, h in self.in_use.items()]

    def describe(self) -> str:
        """The port policy, for the startup log."""
        where = "chosen by the OS" if self.port_range is None else f"from {self.port_range}"
        return f"public ports {where}; {self.store.describe()}, lease ttl {self.ttl:g} s"

    async def close(self) -> None:
        """Let the releases reach the store, leave it (claims go, leases stay), close it;
        once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.settled()
            await self.store.leave()
        except StoreUnavailableError:
            pass  # said by the store; its members' TTL ends our claims
        finally:
            await self.store.close()

    # ---------------------------------------------------------------- policy
    def _candidates(self, request: RegistrationRequest) -> PortSet | None:
        """Ports the request may get (None: any the OS picks)."""
        if self.port_range is None:
            return request.allowed_ports
        if request.allowed_ports is None:
            return self.port_range
        return intersection(self.port_range, request.allowed_ports)

    def check(self, request: RegistrationRequest) -> None:
        """Refuse a requested port the range or the allowance excludes (nothing is bound)."""
        port = request.remote_port
        if port is None:
            return
        if not 1 <= port <= 65535:
            raise PortNotAllowedError(f"port {port} is not a port number (1-65535)")
        if self.port_range is not None and port not in self.port_range:
            raise PortOutsideRangeError(
                f"port {port} is outside the relay's port range {self.port_range}"
            )
        if request.allowed_ports is not None and port not in request.allowed_ports:
            client = None if request.identity is None else request.identity.client
            who = "this client" if client is None else f"client {client}"
            raise PortNotAllowedError(
                f"port {port} is not allowed for {who} (allowed: {request.allowed_ports})"
            )

    async def _ask(self, ask: Ask) -> Claimed | Denied | NeedsOffer:
        if self.health.problem is not None:
            raise StoreDownError(f"the relay's lease store is unavailable ({self.health.problem})")
        try:
            return await self.store.allocate(ask)
        except StoreUnavailableError as exc:
            self.health.lost(str(exc))
            raise StoreDownError(f"the relay's lease store is unavailable ({exc})") from None

    def _offer(self, ask: Ask, offers: list[socket.socket]) -> tuple[socket.socket, Ask]:
        """A port the OS picks, bound, and the ask for it."""
        if len(offers) >= OS_CHOICE_ATTEMPTS:
            raise NoFreePortError(
                f"the OS offered {OS_CHOICE_ATTEMPTS} ports in a row that are reserved for "
                f"clients that are away"
            )
        sock = self.bind.listen(0)
        return sock, replace(ask, port=int(sock.getsockname()[1]), offered=True)

    def _opened(self, sock: socket.socket, ask: Ask, claimed: Claimed) -> socket.socket:
        port = claimed.port
        self.in_use[port] = Holding(ask.key, ask.token)
        if claimed.how == "free":
            self._last_port = port
        previous = claimed.previous
        if (
            previous is not None
            and previous.port != port
            and claimed.how != "requested"
            and ask.candidates is not None
            and previous.port not in PortSet(ask.candidates)
        ):
            logger.info(
                "%s: leased port %d is no longer allowed (range %s); now port %d",
                ask.key,
                previous.port,
                PortSet(ask.candidates),
                port,
            )
        return sock

    async def _bind(
        self, request: RegistrationRequest, ask: Ask, claimed: Claimed
    ) -> socket.socket | None:
        """The claimed port, bound; None to choose another (the claim is taken back)."""
        port = claimed.port
        try:
            return self.bind.listen(port, reuse_port=request.sessions > 1)
        except OSError as exc:
            await self._abandon(ask, claimed)
            if claimed.how == "requested":
                if exc.errno == errno.EADDRINUSE:
                    raise PortTakenError(
                        f"port {port} is in use on the relay host by another program"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise PortNotAllowedError(
                        f"port {port} cannot be opened on the relay host: permission denied"
                    ) from None
                raise
            if claimed.how == "leased":
                logger.warning(
                    "%s: leased port %d cannot be opened (%s); choosing another",
                    request.identity,
                    port,
                    exc.strerror or exc,
                )
                return None
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise

    async def _join(self, request: RegistrationRequest, port: int) -> socket.socket:
        """``port``, bound beside the sessions of the same identity that have it."""
        identity = request.identity
        assert identity is not None
        holding = self.in_use.get(port)
        ask = Ask(key=identity.key, token=str(next(self._tokens)), port=port)
        claimed: Claimed | None = None
        if holding is None:  # its sessions are in other processes: claim it here too
            outcome = await self._ask(ask)
            if not isinstance(outcome, Claimed):
                raise (
                    self._refusal(outcome, request)
                    if isinstance(outcome, Denied)
                    else PortTakenError(f"port {port} is not the identity's")
                )
            claimed = outcome
        elif holding.key != identity.key:
            raise PortTakenError(f"port {port} is in use by another registration")
        try:
            sock = self.bind.listen(port, reuse_port=True)
        except OSError as exc:
            if claimed is not None:
                await self._abandon(ask, claimed)
            raise PortTakenError(
                f"cannot open port {port} beside the other sessions of {identity}: "
                f"{exc.strerror or exc}"
            ) from None
        if claimed is not None:
            return self._opened(sock, ask, claimed)
        assert holding is not None
        holding.sessions += 1
        return sock

    async def _abandon(self, ask: Ask, claimed: Claimed) -> None:
        try:
            await self.store.abandon(ask, claimed)
        except StoreUnavailableError as exc:
            self.health.lost(str(exc))
            raise StoreDownError(f"the relay's lease store is unavailable ({exc})") from None

    async def _release(self, port: int, token: str) -> None:
        # A store that cannot be reached now hears of it at the next sync of our claims.
        with contextlib.suppress(StoreUnavailableError):
            await self.store.release(port, token)

    def _refusal(self, denied: Denied, request: RegistrationRequest) -> PortRefusedError:
        port = denied.port
        if denied.why == "names":
            return TooManyLeasesError(
                f"the relay holds {denied.count} leases of unauthenticated names, the maximum "
                f"(--max-name-leases {self.max_name_leases}); register without a name, "
                f"or wait until unused leases end"
            )
        if denied.why == "in use by a client":
            return PortTakenError(f"port {port} is in use by another client")
        if denied.why == "reserved":
            return PortTakenError(
                f"port {port} is reserved for another client, which is away (a lease ends "
                f"after {_duration(self.ttl)} unused)"
            )
        if denied.why == "in use":
            return PortTakenError(f"port {port} is in use by another registration")
        if denied.why == "elsewhere":
            return HeldElsewhereError(
                f"{request.identity} holds port {port} in another live session (on this "
                f"relay or another one sharing its lease store); one identity gets one port: "
                f"ask for port {port}, or end the other session"
            )
        candidates = self._candidates(request)
        assert candidates is not None
        where = (
            f"range {candidates.ranges[0][0]}-{candidates.ranges[-1][1]}"
            if request.allowed_ports is None
            else f"the allowed ports {candidates}"
        )
        away = f" ({denied.count} reserved for clients that are away)" if denied.count else ""
        return NoFreePortError(f"no free port in {where}{away}")


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
