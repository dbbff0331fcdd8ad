"""The TOML config file (``--config FILE``): option defaults, forwarded services, auth clients.

The file only supplies defaults: click ranks a flag over its ``RELAY_*``
environment variable over the file (``Context.default_map``) over the built-in
default. Keys are the long option names, with dashes or underscores::

    log-format = "json"              # options of both modes at the top level

    [server]                         # relay options (relay server)
    port = 7000                      # the PORT argument
    port-range = "5000-5099"

    [[server.clients]]               # auth clients, one table each
    name = "alice"

    [forward]                        # forwarder options (relay forward)
    relay = "relay.example.com:7000" # the HOST:PORT argument

    [[forward.services]]             # forwarded services, one table each
    name = "redis"                   # its lease on the relay
    local-port = 6379
    remote-port = 7201               # optional: ask for this public port

An unknown key is an error that names the file and the key, so a typo never
goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RelayError
from ..options.service import Service

SERVER_SECTION = "server"
FORWARD_SECTION = "forward"
CLIENTS_KEY = "clients"
SERVICES_KEY = "services"

SERVER_ARGUMENTS = frozenset({"port"})
"""Keys of [server] that stand for positional arguments of ``relay server``."""
FORWARD_ARGUMENTS = frozenset({"relay", "local_port"})
"""Keys of [forward] that stand for positional arguments of ``relay forward``."""
SERVICE_KEYS = frozenset(f.name for f in dataclasses.fields(Service))
"""Keys of one [[forward.services]] table: the fields of a ``relay.Service``."""


class ConfigFileError(RelayError, ValueError):
    """The config file cannot be read, is not TOML, or has a key no option knows."""


@dataclass
class ConfigFile:
    """A parsed config file: option defaults per mode, plus the lists tables hold."""

    path: Path
    common: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    forward: dict[str, Any] = field(default_factory=dict)
    clients: list[dict[str, Any]] = field(default_factory=list)
    """``[[server.clients]]``: passed as they are to the relay's authentication."""
    services: list[dict[str, Any]] = field(default_factory=list)
    """``[[forward.services]]``: each a dict with SERVICE_KEYS (underscored)."""

    def defaults(self, *modes: str) -> dict[str, Any]:
        """The ``default_map`` for a command running ``modes``: common keys, then each mode's."""
        merged = dict(self.common)
        for mode in modes:
            merged.update(self.server if mode == SERVER_SECTION else self.forward)
        return merged


def _key(name: str) -> str:
    return name.replace("-", "_")


def _options(
    table: Mapping[str, Any],
    where: str,
    allowed: Collection[str],
    path: Path,
    elsewhere: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """The table's options; a key it may not hold is an error that names the table it
    belongs in (``elsewhere``: the keys of each other table), or else the known keys."""
    options: dict[str, Any] = {}
    for name, value in table.items():
        key = _key(name)
        if key not in allowed:
            homes = [f"[{home}]" for home, keys in (elsewhere or {}).items() if key in keys]
            if homes:
                raise ConfigFileError(
                    f"{path}: '{where}{name}' belongs in {' or '.join(homes)}: move it "
                    f"under that table header"
                )
            known = ", ".join(sorted(k.replace("_", "-") for k in allowed))
            raise ConfigFileError(f"{path}: unknown key {where}{name!r} (known: {known})")
        options[key] = value
    return options


def _tables(value: Any, where: str, path: Path) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigFileError(f"{path}: {where} must be an array of tables ([[{where}]])")
    return list(value)


def read_toml(path: Path, error: type[RelayError], what: str = "") -> dict[str, Any]:
    """The TOML document at ``path``; an unreadable file or bad TOML raises ``error``.

    ``what`` names the kind of file in the message (e.g. "auth file").
    """
    label = f"{what} {path}" if what else str(path)
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise error(f"cannot read {label}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{label} is not valid TOML: {exc}") from None


def load(
    path: str | Path, *, common: Collection[str], server: Collection[str], forward: Collection[str]
) -> ConfigFile:
    """Read ``path``; ``common``, ``server`` and ``forward`` name the options each table may set."""
    path = Path(path)
    data = read_toml(path, ConfigFileError)
    config = ConfigFile(path)
    sections = {
        SERVER_SECTION: {*server, *SERVER_ARGUMENTS},
        FORWARD_SECTION: {*forward, *FORWARD_ARGUMENTS},
    }
    top = {k: v for k, v in data.items() if k not in sections}
    config.common = _options(top, "", common, path, sections)
    for section, allowed, arguments, list_key in (
        (SERVER_SECTION, server, SERVER_ARGUMENTS, CLIENTS_KEY),
        (FORWARD_SECTION, forward, FORWARD_ARGUMENTS, SERVICES_KEY),
    ):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigFileError(f"{path}: {section} must be a table ([{section}])")
        table = dict(table)
        lists = _tables(table.pop(list_key, []), f"{section}.{list_key}", path)
        others = {name: keys for name, keys in sections.items() if name != section}
        options = _options(table, f"{section}.", {*common, *allowed, *arguments}, path, others)
        if section == SERVER_SECTION:
            config.server, config.clients = options, lists
        else:
            config.forward = options
            config.services = [
                _options(service, f"{section}.{list_key}[{i}].", SERVICE_KEYS, path)
                for i, service in enumerate(lists)
            ]
    return config
