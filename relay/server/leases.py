"""Who keeps a public port: an ``Identity``, and its key in the lease store.

A registration with an identity (an authenticated client, a service ``name``,
or both) leaves a lease ``identity -> port`` behind (``relay.store``). The
relay hands that port to the same identity when it comes back (after a
network blip, a restart of the forwarder or of the relay) and to nobody else
until the lease has been unused for ``ttl`` seconds (default 24 hours, as
frp's reserved ports).

Without authentication an identity is only a name the registering side chose:
anyone who knows it can take the port. That is a convenience, not security.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """Who registers: an authenticated ``client`` (with the ``remote_port`` it asks for, if
    any), or a ``name`` that nobody checked.

    An authenticated client may run several services: each that asks for its
    own port is an identity of its own, with its own lease. The store key keeps
    the kinds apart, so that an unauthenticated name never matches a client of
    the auth file.
    """

    client: str | None = None
    name: str | None = None
    remote_port: int | None = None

    def __post_init__(self) -> None:
        if self.client is None and self.name is None:
            raise ValueError("an identity needs a client or a name")

    @property
    def key(self) -> str:
        if self.client is None:
            return f"name:{self.name}"
        return (
            f"client:{self.client}"
            + ("" if self.name is None else f"/{self.name}")
            + ("" if self.remote_port is None else f"#{self.remote_port}")
        )

    @property
    def authenticated(self) -> bool:
        return self.client is not None

    def __str__(self) -> str:
        if self.client is None:
            return f"name {self.name!r}"
        return (
            f"client {self.client!r}"
            + ("" if self.name is None else f" name {self.name!r}")
            + ("" if self.remote_port is None else f" (port {self.remote_port})")
        )
