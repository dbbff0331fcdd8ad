"""Names on the relay's domain: which host name a registration gets, and where each leads.

With ``--domain tunnel.example.com`` a registration that asks for
``route=http`` (or ``tls``) gets no port of its own but a host name on the
relay's shared HTTP (or TLS) port. The name follows from who registers, so
that nobody picks a name another holds:

* ``<client>.<domain>`` for a registration with ``name=`` only (``relay
  forward --name blog``: ``blog.tunnel.example.com``);
* ``<service>.<client>.<domain>`` with ``service=`` (``--client-name alice
  --name blog``: ``blog.alice.tunnel.example.com``). With an auth file, every
  name under ``alice`` is alice's, proven by her secret;
* a service named by a whole host name (``--client-name alice --name
  blog.example.org``) gets exactly that name, if its auth-file client lists it
  in ``hosts`` (the operator hands out names outside the client's own, even
  ``blog.tunnel.example.com``).

Without per-client secrets a name is first come, first served, like a port
lease: the identity rules of registration (one live session per identity,
``relay.server.replacement``) decide between two registrations of one name,
and this table refuses a second live session for a host name that is taken.
With ``--workers`` each worker keeps its own sessions here and knows which
worker holds every other name (``elsewhere``, kept by the supervisor's
broadcasts, ``relay.workers.routes``): a name another worker holds is taken too.
A name is a label of a host name (letters, digits, ``-``); the table keys
are normal host names (``relay.wire.hostname``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import RegistrationError
from ..wire.hostname import is_label, normal_host
from ..wire.refusal import PERMANENT, RETRY, RefusalKind
from ..wire.route import Route, RouteKind, feature
from .request import RegistrationRequest

if TYPE_CHECKING:
    from .session import RegisteredSession


class RouteRefusedError(RegistrationError):
    """A registration cannot have the host name it needs; ``str()`` is the reason."""

    def __init__(self, reason: str, kind: RefusalKind) -> None:
        super().__init__(reason)
        self.kind = kind
        self.permanent = kind == PERMANENT


class Routes:
    """The host names of one relay and the session each leads to."""

    def __init__(self, domain: str) -> None:
        self.domain = normal_host(domain)
        self.ports: dict[RouteKind, int] = {}
        """The shared port of each kind the relay serves, once bound."""
        self._table: dict[tuple[RouteKind, str], RegisteredSession] = {}
        self.elsewhere: dict[tuple[RouteKind, str], int] = {}
        """The host names the other workers of this relay hold, and which worker holds
        each (empty in a single process)."""
        self.changed: Callable[[RouteKind, str, int, bool], None] | None = None
        """Told ``(kind, host, session id, held)`` whenever this table gains or loses a host
        (a worker tells its supervisor)."""

    @property
    def features(self) -> frozenset[str]:
        """What the challenge offers for them."""
        return frozenset(feature(kind) for kind in self.ports)

    def route_for(self, request: RegistrationRequest) -> Route:
        """The route ``request`` gets, if free now; RouteRefusedError otherwise."""
        assert request.route is not None
        route = Route(request.route, self.host_of(request), self.ports[request.route])
        holder = self._table.get((route.kind, route.host))
        if holder is not None and not holder.ending:
            raise RouteRefusedError(
                f"host name {route.host} is in use by another registration "
                f"({holder.request.describe()}, session {holder.id}) that is alive",
                RETRY,
            )
        worker = self.elsewhere.get((route.kind, route.host))
        if worker is not None:
            raise RouteRefusedError(
                f"host name {route.host} is in use by another registration (in worker "
                f"{worker} of this relay) that is alive",
                RETRY,
            )
        return route

    def host_of(self, request: RegistrationRequest) -> str:
        """The host name of a routed registration (see the module's rules)."""
        client, service = request.client, request.service
        if client is None:
            raise RouteRefusedError(
                "a service reached by name needs one (name=, --name)", PERMANENT
            )
        if service is not None and "." in service:
            return self._own_host(service, request)
        labels = [client] if service is None else [service, client]
        for label in labels:
            if not is_label(label):
                raise RouteRefusedError(
                    f"name {label!r} cannot be part of a host name under {self.domain}: use "
                    f"letters, digits and '-' (at most 63), no '.', '_' or '@'",
                    PERMANENT,
                )
        return ".".join([*labels, self.domain]).lower()

    def _own_host(self, name: str, request: RegistrationRequest) -> str:
        try:
            host = normal_host(name)
        except ValueError as exc:
            raise RouteRefusedError(f"{name!r} is not a host name: {exc}", PERMANENT) from None
        if host in request.allowed_hosts:
            return host
        allowed = ", ".join(sorted(request.allowed_hosts))
        raise RouteRefusedError(
            f"host name {host} is not allowed for client {request.client} ("
            + (f"allowed: {allowed}" if allowed else "an auth file's hosts = [...] allows one")
            + f"; or use a name without dots, for a name under {self.domain})",
            PERMANENT,
        )

    def add(self, route: Route, session: RegisteredSession) -> None:
        """``session`` has ``route`` from now on (``route_for`` said it was free)."""
        self._table[(route.kind, route.host)] = session
        if self.changed is not None:
            self.changed(route.kind, route.host, session.id, True)

    def forget(self, session: RegisteredSession) -> None:
        """``session`` has closed; its name leads nowhere (unless it went on to another)."""
        route = session.route
        if route is not None and self._table.get((route.kind, route.host)) is session:
            del self._table[(route.kind, route.host)]
            if self.changed is not None:
                self.changed(route.kind, route.host, session.id, False)

    def find(self, kind: RouteKind, host: str) -> RegisteredSession | None:
        """The live session ``host`` leads to on the port of ``kind``, if any."""
        session = self._table.get((kind, host))
        return None if session is None or session.ending else session

    def where(self, kind: RouteKind, host: str) -> int | None:
        """The other worker that holds ``host`` on the port of ``kind``, as last heard."""
        return self.elsewhere.get((kind, host))

    def __len__(self) -> int:
        return len(self._table)
