"""The auth file while the relay runs: re-read when it changes, failing closed where it must.

The relay looks at the file, and at every secret file it names, once a
second (a stat each). A change is read once the stamps stayed the same for
one more look, so a file in the middle of being written is not read. Then:

* the file is gone, empty or names no clients: every client it named is
  revoked and their sessions end (deleting the file withdraws every secret
  in it at once);
* it does not parse (bad TOML, an unknown table, a malformed ``clients``):
  the clients in force stay;
* it parses but a client's table does not (a bad port, an unreadable or weak
  secret): that client keeps its previous entry, while the rest of the file
  takes effect (a client removed from it is revoked even so); a client whose
  secret file is gone or empty is revoked;
* every client removed or changed (secret, ports) is revoked; new ones may
  register.

An edit that did not take (fully) is logged at ERROR once per change of the
files, and shows in ``/status`` and ``relay_auth_file_ok``: the operator must
see that a revocation did not happen.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import RelayOptions
from .auth import (
    AuthClient,
    AuthConfigError,
    Authenticator,
    client_tables,
    load_auth_file,
    parse_client,
    secret_file_of,
)
from .interface import AuthFileStatus

logger = logging.getLogger("relay.auth")

CHECK_INTERVAL = 1.0
"""Seconds between looks at the auth file and its secret files (a stat each)."""

Stamp = tuple[int, int, int] | None
"""A file's (mtime, size, inode); None if it does not exist."""
Stamps = tuple[Stamp, tuple[Stamp, ...]]
"""The auth file's, and those of the secret files it names."""


def _stamp(path: Path) -> Stamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise AuthConfigError(f"cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthConfigError(f"not valid TOML: {exc}") from None


def _gone(path: Path) -> bool:
    """A secret file that does not exist or holds nothing (deleted or emptied)."""
    try:
        return not path.read_bytes().strip()
    except FileNotFoundError:
        return True
    except OSError:
        return False


@dataclass(slots=True)
class _Reading:
    """One read of the file: the clients to put in force and what went wrong."""

    clients: dict[str, AuthClient]
    secret_files: tuple[Path, ...] = ()
    errors: tuple[str, ...] = ()
    why: Mapping[str, str] | None = None
    """Why each client not in ``clients`` any more lost its access, where it is not the
    usual (removed from the file)."""


class AuthFile:
    """An auth file's clients in force, and the stamps that tell when to read it again.

    ``static`` are clients of the config file (``[[server.clients]]``), in force
    with the file's; a name may not be in both. The first read is strict: a file
    that does not parse stops the relay from starting (AuthConfigError).
    """

    def __init__(self, path: str | Path, static: Mapping[str, AuthClient] | None = None) -> None:
        self.path = Path(path)
        self._static = dict(static or {})
        from_file = load_auth_file(self.path)
        twice = set(from_file) & set(self._static)
        if twice:
            raise AuthConfigError(
                f"client(s) {', '.join(sorted(twice))} defined twice (auth file {self.path} "
                f"and the config)"
            )
        self._from_file = from_file
        self._secret_files = tuple(c.secret_file for c in from_file.values() if c.secret_file)
        self._seen = self._stamps()
        self._pending: Stamps | None = None
        self.status = AuthFileStatus(str(self.path), True, len(from_file), None, time.time())

    @property
    def clients(self) -> dict[str, AuthClient]:
        """Every named client in force: the config's and the file's."""
        return {**self._static, **self._from_file}

    def _stamps(self) -> Stamps:
        return _stamp(self.path), tuple(_stamp(path) for path in self._secret_files)

    def reload(self, *, at_once: bool = False) -> dict[str, str] | None:
        """Read the files again if they changed (and then held still for one look, unless
        ``at_once``: the operator said they are written, with SIGHUP).

        Returns the clients whose access ended or changed, each with why (their
        sessions should end); None if nothing was read. ``status`` says how it went.
        """
        stamps = self._stamps()
        if stamps == self._seen:
            self._pending = None
            return None
        if stamps != self._pending and not at_once:
            self._pending = stamps  # changed since the last look: read it once it holds still
            return None
        self._pending = None
        reading = self._read()
        before = self._from_file
        self._from_file = reading.clients
        self._secret_files = reading.secret_files
        self._seen = self._stamps()
        error = "; ".join(reading.errors) or None
        self.status = AuthFileStatus(
            str(self.path), error is None, len(reading.clients), error, time.time()
        )
        why = reading.why or {}
        return {
            name: why.get(name, "was removed from the auth file")
            if name not in reading.clients
            else "had its secret or ports changed in the auth file"
            for name, client in before.items()
            if reading.clients.get(name) != client
        }

    def _read(self) -> _Reading:
        before = self._from_file
        if not self.path.exists():
            return self._closed("the file is gone", "the auth file is gone")
        try:
            data = _toml(self.path)
            unknown = set(data) - {"clients"}
            if unknown:
                raise AuthConfigError(f"unknown table(s) {', '.join(sorted(unknown))}")
            if not data.get("clients"):
                return self._closed("it names no clients", "the auth file names no clients")
            tables = client_tables(data["clients"])
        except AuthConfigError as exc:
            return _Reading(
                dict(before),
                self._secret_files,
                (f"{exc}; the clients in force stay until it is fixed",),
            )
        clients: dict[str, AuthClient] = {}
        errors: list[str] = []
        why: dict[str, str] = {}
        secret_files = tuple(
            path for entry in tables.values() if (path := secret_file_of(entry, self.path.parent))
        )
        for name, entry in tables.items():
            if name in self._static:
                errors.append(f"clients.{name}: also in the config ([[server.clients]]); ignored")
                continue
            try:
                clients[name] = parse_client(name, entry, self.path.parent)
            except AuthConfigError as exc:
                secret_file = secret_file_of(entry, self.path.parent)
                if secret_file is not None and _gone(secret_file):
                    errors.append(f"clients.{name}: secret file {secret_file} is gone or empty")
                    why[name] = f"lost its secret file {secret_file}"
                elif name in before:
                    clients[name] = before[name]
                    errors.append(f"{exc}; {name} keeps its previous entry until it is fixed")
                else:
                    errors.append(f"{exc}; {name} is not added until it is fixed")
        return _Reading(clients, secret_files, tuple(errors), why)

    def _closed(self, what: str, because: str) -> _Reading:
        """Fail closed: no client of the file is in force any more."""
        return _Reading(
            {},
            errors=(f"{what}: every client it named is revoked",),
            why=dict.fromkeys(self._from_file, f"was revoked: {because}"),
        )


def authentication(options: RelayOptions) -> tuple[AuthFile | None, Authenticator | None]:
    """The relay's auth file, if it has one, and who may register (None: anyone)."""
    auth_file = AuthFile(options.auth_file, options.auth_clients) if options.auth_file else None
    if options.secret is None and not options.auth_clients and auth_file is None:
        return None, None
    clients = auth_file.clients if auth_file else options.auth_clients
    return auth_file, Authenticator(secret=options.secret, clients=clients)


async def watch_auth_file(
    auth_file: AuthFile,
    auth: Authenticator,
    revoke: Callable[[Mapping[str, str]], None],
    interval: float = CHECK_INTERVAL,
) -> None:
    """Until cancelled: re-read ``auth_file`` when it changes, put its clients in force in
    ``auth``, and ``revoke`` those whose access ended (name -> why)."""
    while True:
        await asyncio.sleep(interval)
        reload_auth_file(auth_file, auth, revoke)


def reload_auth_file(
    auth_file: AuthFile,
    auth: Authenticator,
    revoke: Callable[[Mapping[str, str]], None],
    *,
    at_once: bool = False,
) -> None:
    """One look of ``watch_auth_file`` (``at_once``: SIGHUP, the files are read now if they
    changed, without waiting for them to hold still)."""
    was_ok = auth_file.status.ok
    ended = auth_file.reload(at_once=at_once)
    if ended is None:
        return
    auth.clients = auth_file.clients
    status = auth_file.status
    if status.error is not None:
        logger.error("auth file %s: %s", auth_file.path, status.error)
    elif not was_ok:
        logger.info("auth file %s is in force as written again", auth_file.path)
    logger.info(
        "auth file %s read: %d clients%s",
        auth_file.path,
        status.clients,
        f"; access ended or changed for {', '.join(sorted(ended))}" if ended else "",
    )
    if ended:
        revoke(ended)
