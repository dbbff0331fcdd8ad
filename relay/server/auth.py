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

or, equally, one ``[[clients]]`` table per client with ``name = "alice"``.
``parse_auth_clients`` takes the already-parsed ``clients`` value (either
shape), so a larger config file can hold it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RegistrationError, RelayError
from ..ops.config import read_toml
from ..options.shared import SecretError, check_secret, read_secret_file
from ..wire.v2 import AUTH_FAILED, NAME, Challenge, Response, proof_matches

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

    def __repr__(self) -> str:  # never print a secret
        return f"AuthClient(name={self.name!r}, ports={self.ports})"


@dataclass(frozen=True, slots=True)
class Proven:
    """What a checked proof shows: who knew a secret, and the ports that come with it."""

    name: str | None
    """The auth-file name, or the (unchecked, informational) ``name=`` with a shared secret."""
    ports: PortSet | None = None


def _secret_bytes(secret: str | bytes | Path, where: str) -> bytes:
    """An inline secret (``where`` names it), or one read from a file (a Path)."""
    try:
        return read_secret_file(secret) if isinstance(secret, Path) else check_secret(secret)
    except SecretError as exc:
        raise AuthConfigError(str(exc) if isinstance(secret, Path) else f"{where}: {exc}") from None


class Authenticator:
    """Checks proofs: against one shared secret, or per named client.

    Named clients come from ``clients`` and/or ``auth_file``; ``reload()`` re-reads
    the file when it changed, so a client is added or revoked without a restart.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        clients: Mapping[str, AuthClient] | None = None,
        auth_file: str | Path | None = None,
    ) -> None:
        self._static = dict(clients or {})
        self.auth_file = Path(auth_file) if auth_file is not None else None
        self._stamp = self._file_stamp()
        self.clients = self._merge(load_auth_file(self.auth_file) if self.auth_file else {})
        if (secret is None) == (not self.clients):
            raise AuthConfigError("give either a shared secret or named clients, not both")
        self._secret = _secret_bytes(secret, "secret") if secret is not None else None

    def _merge(self, from_file: dict[str, AuthClient]) -> dict[str, AuthClient]:
        both = set(from_file) & set(self._static)
        if both:
            raise AuthConfigError(
                f"client(s) {', '.join(sorted(both))} defined twice (auth "
                f"file {self.auth_file} and the config)"
            )
        return {**self._static, **from_file}

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.auth_file is None:
            return None
        try:
            st = self.auth_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> set[str] | None:
        """Re-read the auth file if it changed since the last look.

        Returns the names whose access ended or changed (removed, new secret or
        ports): their sessions should end. None if the file did not change.
        Raises AuthConfigError if the new file is unusable; the clients in force
        stay, and the same broken file is not reported again.
        """
        stamp = self._file_stamp()
        if self.auth_file is None or stamp == self._stamp:
            return None
        self._stamp = stamp
        new = self._merge(load_auth_file(self.auth_file))
        if not new:
            raise AuthConfigError(
                f"auth file {self.auth_file}: no clients left; keeping the previous ones"
            )
        ended = {name for name, client in self.clients.items() if new.get(name) != client}
        self.clients = new
        return ended

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
            raise AuthRefused(f"{AUTH_FAILED}: this relay needs a client name (name=)")
        client = self.clients.get(response.name)
        # An unknown name still costs one HMAC, so timing does not tell names apart.
        secret = client.secret if client is not None else b"\0" * 32
        if not proof_matches(secret, challenge.nonce, response) or client is None:
            raise AuthRefused(f"{AUTH_FAILED}: unknown client or wrong secret")
        return Proven(client.name, client.ports)


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


def parse_auth_clients(
    table: Mapping[str, Any] | list[Any], base: Path | None = None
) -> dict[str, AuthClient]:
    """Clients from parsed TOML: ``{name: {secret|secret_file, ports?}}`` (``[clients.NAME]``
    tables) or a list of tables that each have a ``name`` (``[[clients]]``).

    ``base`` resolves relative ``secret_file`` paths (the auth file's directory).
    """
    if isinstance(table, list):
        table = _by_name(table)
    if not isinstance(table, Mapping) or not table:
        raise AuthConfigError(
            "clients: expected [clients.NAME] tables or [[clients]] tables with name = ..."
        )
    clients = {}
    for name, entry in table.items():
        where = f"clients.{name}"
        if not NAME.fullmatch(name):
            raise AuthConfigError(f"{where}: a name is 1-64 of A-Z a-z 0-9 . _ @ -")
        if not isinstance(entry, Mapping):
            raise AuthConfigError(f"{where}: expected a table with secret = ...")
        unknown = set(entry) - {"secret", "secret_file", "ports"}
        if unknown:
            raise AuthConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if ("secret" in entry) == ("secret_file" in entry):
            raise AuthConfigError(f"{where}: give exactly one of secret or secret_file")
        if "secret" in entry:
            if not isinstance(entry["secret"], str):
                raise AuthConfigError(f"{where}.secret: expected a string")
            secret = _secret_bytes(entry["secret"], f"{where}.secret")
        else:
            path = Path(str(entry["secret_file"]))
            secret = _secret_bytes(base / path if base and not path.is_absolute() else path, where)
        ports = PortSet.parse(entry["ports"], f"{where}.ports") if "ports" in entry else None
        clients[name] = AuthClient(name, secret, ports)
    return clients


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


class FailureLimiter:
    """Per source address: after ``limit`` failed proofs within ``window`` seconds, refuse
    that source at once (no nonce, no HMAC) until the window has passed.

    Bounded: at most ``max_sources`` addresses are remembered (oldest forgotten first).
    """

    def __init__(self, limit: int = 5, window: float = 60.0, max_sources: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(source, ()) if now - t < self.window]
        if times:
            self._failures[source] = times
        else:
            self._failures.pop(source, None)
        return times

    def blocked_for(self, source: str) -> float:
        """Seconds until ``source`` may try again (0: it may now)."""
        now = time.monotonic()
        times = self._recent(source, now)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window - now)

    def failed(self, source: str) -> int:
        """Record a failure; returns how many ``source`` has within the window."""
        now = time.monotonic()
        times = self._recent(source, now)
        times.append(now)
        self._failures[source] = times[-self.limit :]
        self._failures.move_to_end(source)
        while len(self._failures) > self.max_sources:
            self._failures.popitem(last=False)
        return len(times)


AUTH_FILE_CHECK_INTERVAL = 1.0
"""Seconds between looks at the auth file (a stat; it is read only when it changed)."""


async def watch_auth_file(
    auth: Authenticator,
    revoke: Callable[[set[str]], None],
    interval: float = AUTH_FILE_CHECK_INTERVAL,
) -> None:
    """Until cancelled: reload ``auth`` when its file changes and ``revoke`` the names whose
    access ended, so a leaked secret is withdrawn by editing the file, without a restart."""
    while True:
        await asyncio.sleep(interval)
        reload_auth_file(auth, revoke)


def reload_auth_file(auth: Authenticator, revoke: Callable[[set[str]], None]) -> None:
    """Re-read the auth file if it changed (once, now: the watch, or SIGHUP) and ``revoke``
    the names whose access ended; a broken file is logged and the clients in force stay."""
    try:
        ended = auth.reload()
    except AuthConfigError as exc:
        logger.error("%s; the clients in force stay until it is fixed", exc)
        return
    if ended is None:
        return
    logger.info(
        "auth file %s reloaded: %d clients%s",
        auth.auth_file,
        len(auth.clients),
        f"; access ended or changed for {', '.join(sorted(ended))}" if ended else "",
    )
    if ended:
        revoke(ended)
