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
"""

from __future__ import annotations

import bisect
import errno
import logging
import socket

from ..errors import RegistrationError
from ..net import BindAddress
from ..wire.refusal import PERMANENT, RETRY, RefusalKind
from .auth import PortSet
from .leases import Identity, LeaseStore
from .request import RegistrationRequest

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


class PortAllocator:
    """Chooses, binds and remembers public ports; ``allocate`` / ``release``."""

    def __init__(
        self,
        bind: BindAddress,
        port_range: tuple[int, int] | None,
        leases: LeaseStore,
        max_name_leases: int,
    ) -> None:
        self.bind = bind
        self.max_name_leases = max_name_leases
        self.port_range = None if port_range is None else PortSet((port_range,))
        self.leases = leases
        self.in_use: dict[int, str | None] = {}
        """Open public ports -> the lease key of their registration (None: anonymous)."""
        self._last_port = 0
        """The port handed out last from a set: the next search starts after it."""

    def allocate(self, request: RegistrationRequest) -> socket.socket:
        """A bound, listening socket for ``request``; raises PortRefusedError (or OSError)."""
        identity = request.identity
        key = None if identity is None else identity.key
        self.leases.expire(self.active_keys())
        if (
            identity is not None
            and not identity.authenticated
            and self.leases.of(identity.key) is None
        ):
            names = sum(1 for lease in self.leases if lease.key.startswith("name:"))
            if names >= self.max_name_leases:
                raise TooManyLeasesError(
                    f"the relay holds {names} leases of unauthenticated names, the maximum "
                    f"(--max-name-leases {self.max_name_leases}); register without a name, "
                    f"or wait until unused leases end"
                )
        if request.remote_port is not None:
            sock = self._remote_port(request, request.remote_port, key)
        else:
            leased = self._leased(request, identity) if identity is not None else None
            sock = leased if leased is not None else self._free(request)
        port = int(sock.getsockname()[1])
        self.in_use[port] = key
        if key is not None:
            self.leases.grant(key, port)
        return sock

    def release(self, port: int) -> None:
        """The registration on ``port`` ended: its lease (if any) now counts its unused time."""
        key = self.in_use.pop(port, None)
        if key is not None:
            self.leases.touch([key])

    def active_keys(self) -> set[str]:
        return {key for key in self.in_use.values() if key is not None}

    def describe(self) -> str:
        """The port policy, for the startup log."""
        where = "chosen by the OS" if self.port_range is None else f"from {self.port_range}"
        return f"public ports {where}; {len(self.leases)} lease(s), ttl {self.leases.ttl:g} s"

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

    def _remote_port(
        self, request: RegistrationRequest, port: int, key: str | None
    ) -> socket.socket:
        """The port ``request`` asks for, bound, or why not."""
        self.check(request)
        lease = self.leases.on_port(port)
        if lease is not None and lease.key != key:
            if port in self.in_use:
                raise PortTakenError(f"port {port} is in use by another client")
            raise PortTakenError(
                f"port {port} is reserved for another client, which is away (a lease ends "
                f"after {_duration(self.leases.ttl)} unused)"
            )
        if port in self.in_use:
            raise PortTakenError(f"port {port} is in use by another registration")
        try:
            return self.bind.listen(port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortTakenError(
                    f"port {port} is in use on the relay host by another program"
                ) from None
            if exc.errno == errno.EACCES:
                raise PortNotAllowedError(
                    f"port {port} cannot be opened on the relay host: permission denied"
                ) from None
            raise

    def _leased(self, request: RegistrationRequest, identity: Identity) -> socket.socket | None:
        """The identity's leased port, or None if it has none or cannot have it back."""
        lease = self.leases.of(identity.key)
        if lease is None:
            return None
        candidates = self._candidates(request)
        if candidates is not None and lease.port not in candidates:
            logger.info(
                "%s: leased port %d is no longer allowed (range %s); choosing another",
                identity,
                lease.port,
                candidates,
            )
            return None
        if lease.port in self.in_use:  # the server ends an older session of the same owner first
            return None
        try:
            return self.bind.listen(lease.port)
        except OSError as exc:
            logger.warning(
                "%s: leased port %d cannot be opened (%s); choosing another",
                identity,
                lease.port,
                exc.strerror or exc,
            )
            return None

    def _free(self, request: RegistrationRequest) -> socket.socket:
        candidates = self._candidates(request)
        if candidates is None:
            return self._os_choice()
        reserved = self.leases.reserved_ports()
        ports = list(candidates)
        count = len(ports)
        start = bisect.bisect_right(ports, self._last_port)
        leased = 0
        for i in range(count):
            port = ports[(start + i) % count]
            if port in self.in_use:
                continue
            if port in reserved:
                leased += 1
                continue
            try:
                sock = self.bind.listen(port)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._last_port = port
            return sock
        where = (
            f"range {candidates.ranges[0][0]}-{candidates.ranges[-1][1]}"
            if request.allowed_ports is None
            else f"the allowed ports {candidates}"
        )
        away = f" ({leased} reserved for clients that are away)" if leased else ""
        raise NoFreePortError(f"no free port in {where}{away}")

    def _os_choice(self) -> socket.socket:
        reserved = self.leases.reserved_ports()
        rejected: list[socket.socket] = []
        try:
            for _ in range(OS_CHOICE_ATTEMPTS):
                sock = self.bind.listen(0)
                if int(sock.getsockname()[1]) not in reserved:
                    return sock
                rejected.append(sock)  # held open, so the OS picks another one next
        finally:
            for sock in rejected:
                sock.close()
        raise NoFreePortError(
            f"the OS offered {OS_CHOICE_ATTEMPTS} ports in a row that are reserved for clients "
            f"that are away"
        )


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
