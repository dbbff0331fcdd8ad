"""Who may register: one shared secret, or named clients from an auth file (TOML).

The relay checks the v2 proof (``relay.wire.v2``) against the secret of the
client the response names; the name is then the client's identity in logs and
the ports it may hold come with it. An auth file looks like::

    [clients.alice]
    secret = "long random string"
    ports = "5000-5009"          # optional: a port, "LOW-HIGH", or a list of both

    [clients.bob]
    secret_file = "/etc/relay/bob.secret"
    ports = [6000, "6100-6199"]
    hosts = ["blog.example.org"] # optional: host names of its own on the shared ports

or, equally, one ``[[clients]]`` table per client with ``name = "alice"``.
``parse_auth_clients`` takes the already-parsed ``clients`` value (either
shape), so a larger config file can hold it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RegistrationError, RelayError
from ..ops.config import read_toml
from ..options.secret import SecretError, check_secret, read_secret_file
from ..wire.hostname import normal_host
from ..wire.v2 import AUTH_FAILED, NAME, NEEDS_NAME, Challenge, Response, proof_matches

logger = logging.getLogger("relay.auth")


class AuthConfigError(RelayError, ValueError):
    """A secret or auth file that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PortSet:
    """Ports as sorted, non-overlapping inclusive ranges (an auth file's ``ports``)."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)

    @classmethod
    def parse(cls, value: object, where: str = "ports") -> PortSet:
        """A port, ``"LOW-HIGH"``, or a list of those."""
        items = value if isinstance(value, list) else [value]
        ranges = []
        for item in items:
            if isinstance(item, bool):
                raise AuthConfigError(f"{where}: {item!r} is not a port or LOW-HIGH")
            if isinstance(item, int):
                lo = hi = item
            elif isinstance(item, str):
                lo_text, sep, hi_text = item.partition("-")
                try:
                    lo = int(lo_text)
                    hi = int(hi_text) if sep else lo
                except ValueError:
                    raise AuthConfigError(f"{where}: {item!r} is not a port or LOW-HIGH") from None
            else:
                raise AuthConfigError(f"{where}: {item!r} is not a port or LOW-HIGH")
            if not 1 <= lo <= hi <= 65535:
                raise AuthConfigError(f"{where}: {item!r} must be within 1-65535, LOW <= HIGH")
            ranges.append((lo, hi))
        if not ranges:
            raise AuthConfigError(f"{where}: empty list (omit it to allow any port)")
        return cls(tuple(sorted(ranges)))


@dataclass(frozen=True, slots=True)
class AuthClient:
    name: str
    secret: bytes
    ports: PortSet | None = None
    """None: any port the relay's own ``port_range`` allows."""
    hosts: frozenset[str] = frozenset()
    """Host names (besides its names on the relay's domain) its routed services may have."""
    secret_file: Path | None = field(default=None, compare=False)
    """Where the secret was read from (watched with the auth file), if not inline."""

    def __repr__(self) -> str:  # never print a secret
        return f"AuthClient(name={self.name!r}, ports={self.ports})"


@dataclass(frozen=True, slots=True)
class Proven:
    """What a checked proof shows: who knew a secret, and the ports that come with it."""

    name: str | None
    """The auth-file name, or the (unchecked, informational) ``name=`` with a shared secret."""
    ports: PortSet | None = None
    hosts: frozenset[str] = frozenset()


def _secret_bytes(secret: str | bytes | Path, where: str) -> bytes:
    """An inline secret (``where`` names it), or one read from a file (a Path)."""
    try:
        return read_secret_file(secret) if isinstance(secret, Path) else check_secret(secret)
    except SecretError as exc:
        raise AuthConfigError(str(exc) if isinstance(secret, Path) else f"{where}: {exc}") from None


class Authenticator:
    """Checks proofs: against one shared secret, or per named client.

    ``clients`` may be replaced while the relay runs (``relay.server.auth_file``
    re-reads the auth file), so a client is added or revoked without a restart.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        clients: Mapping[str, AuthClient] | None = None,
    ) -> None:
        self.clients = dict(clients or {})
        if (secret is None) == (not self.clients):
            raise AuthConfigError("give either a shared secret or named clients, not both")
        self._secret = _secret_bytes(secret, "secret") if secret is not None else None

    def __repr__(self) -> str:
        kind = "shared secret" if self._secret else f"{len(self.clients)} clients"
        return f"Authenticator({kind})"

    def check(self, challenge: Challenge, response: Response) -> Proven:
        """Who proved knowing a secret in ``response``; raises AuthRefused with the reason
        to send."""
        if response.proof is None:
            raise AuthRefused(f"{AUTH_FAILED}: this relay requires a secret; none was sent")
        if self._secret is not None:
            if not proof_matches(self._secret, challenge.nonce, response):
                raise AuthRefused(f"{AUTH_FAILED}: wrong secret")
            return Proven(response.name)
        if response.name is None:
            raise AuthRefused(f"{AUTH_FAILED}: {NEEDS_NAME}")
        client = self.clients.get(response.name)
        # An unknown name still costs one HMAC, so timing does not tell names apart.
        secret = client.secret if client is not None else b"\0" * 32
        if not proof_matches(secret, challenge.nonce, response) or client is None:
            raise AuthRefused(f"{AUTH_FAILED}: unknown client or wrong secret")
        return Proven(client.name, client.ports, client.hosts)


class AuthRefused(RegistrationError):
    """A proof the relay refuses; ``str()`` is the reason on the error line."""


def _by_name(entries: list[Any]) -> dict[str, Any]:
    """``[[clients]]`` tables with ``name = ...`` keyed by their names."""
    table: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise AuthConfigError(f'clients[{index}]: expected a table with name = "..."')
        name = entry["name"]
        if name in table:
            raise AuthConfigError(f"clients: {name!r} is listed twice")
        table[name] = {key: value for key, value in entry.items() if key != "name"}
    return table


def client_tables(table: Mapping[str, Any] | list[Any]) -> dict[str, Any]:
    """``[clients.NAME]`` tables or ``[[clients]]`` tables with a ``name``, keyed by name."""
    if isinstance(table, list):
        table = _by_name(table)
    if not isinstance(table, Mapping) or not table:
        raise AuthConfigError(
            "clients: expected [clients.NAME] tables or [[clients]] tables with name = ..."
        )
    return dict(table)


def secret_file_of(entry: object, base: Path | None) -> Path | None:
    """The secret file a client's table names (relative to ``base``), if it names one."""
    if not isinstance(entry, Mapping) or "secret_file" not in entry:
        return None
    path = Path(str(entry["secret_file"]))
    return base / path if base is not None and not path.is_absolute() else path


def parse_client(name: str, entry: object, base: Path | None = None) -> AuthClient:
    """One client from its table (``secret`` or ``secret_file``, ``ports``)."""
    where = f"clients.{name}"
    if not NAME.fullmatch(name):
        raise AuthConfigError(f"{where}: a name is 1-64 of A-Z a-z 0-9 . _ @ -")
    if not isinstance(entry, Mapping):
        raise AuthConfigError(f"{where}: expected a table with secret = ...")
    unknown = set(entry) - {"secret", "secret_file", "ports", "hosts"}
    if unknown:
        raise AuthConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if ("secret" in entry) == ("secret_file" in entry):
        raise AuthConfigError(f"{where}: give exactly one of secret or secret_file")
    secret_file = secret_file_of(entry, base)
    if secret_file is None:
        if not isinstance(entry["secret"], str):
            raise AuthConfigError(f"{where}.secret: expected a string")
        secret = _secret_bytes(entry["secret"], f"{where}.secret")
    else:
        secret = _secret_bytes(secret_file, where)
    ports = PortSet.parse(entry["ports"], f"{where}.ports") if "ports" in entry else None
    hosts = parse_hosts(entry["hosts"], f"{where}.hosts") if "hosts" in entry else frozenset()
    return AuthClient(name, secret, ports, hosts, secret_file)


def parse_hosts(value: object, where: str) -> frozenset[str]:
    """A list of host names (``hosts = ["blog.example.org"]``)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AuthConfigError(f'{where}: expected a list of host names, e.g. ["blog.example.org"]')
    hosts = set()
    for item in value:
        try:
            hosts.add(normal_host(item))
        except ValueError as exc:
            raise AuthConfigError(f"{where}: {item!r}: {exc}") from None
    return frozenset(hosts)


def parse_auth_clients(
    table: Mapping[str, Any] | list[Any], base: Path | None = None
) -> dict[str, AuthClient]:
    """Clients from parsed TOML: ``{name: {secret|secret_file, ports?}}`` (``[clients.NAME]``
    tables) or a list of tables that each have a ``name`` (``[[clients]]``).

    ``base`` resolves relative ``secret_file`` paths (the auth file's directory).
    """
    return {name: parse_client(name, entry, base) for name, entry in client_tables(table).items()}


def load_auth_file(path: str | Path) -> dict[str, AuthClient]:
    """Named clients from an auth file (TOML with a ``[clients.NAME]`` table per client)."""
    path = Path(path)
    data = read_toml(path, AuthConfigError, "auth file")
    unknown = set(data) - {"clients"}
    if unknown:
        raise AuthConfigError(f"auth file {path}: unknown table(s) {', '.join(sorted(unknown))}")
    try:
        return parse_auth_clients(data.get("clients", {}), base=path.parent)
    except AuthConfigError as exc:
        raise AuthConfigError(f"auth file {path}: {exc}") from None
