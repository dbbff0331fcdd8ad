"""Option values from a config file and from systemd's credentials, read the one way.

A config file's paths are relative to the file, whatever the working
directory (a service's is ``/``): every option of the ``Path`` kind, in every
section. systemd's ``LoadCredential=NAME:PATH`` hands a file to the service
as ``$CREDENTIALS_DIRECTORY/NAME``, readable by the service's user only; a
credential named as a file option (``secret-file``, ``tls-cert``, ``tls-key``,
``tls-client-ca``, ``tls-ca``, ``auth-file``) is that option's file whenever
the option is not given another way (flag, ``RELAY_*`` variable, config
file).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .client import ForwardOptions
from .declare import Declaration, declarations
from .kinds import Path as PathKind
from .process import ProcessOptions
from .server import RelayOptions

CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
"""The variable systemd sets to the directory of the unit's credentials."""

_ALTERNATIVES = {"secret_file": ("secret",)}
"""Options that stand for a file option when given: its credential is not used then."""


def _declared() -> dict[str, Declaration]:
    return {
        d.name: d
        for options in (RelayOptions, ForwardOptions, ProcessOptions)
        for d in declarations(options)
    }


def in_config_file(values: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """A config file's option values, its paths relative to ``directory`` made whole."""
    declared = _declared()
    return {
        name: declared[name].spec.kind.in_file(value, directory) if name in declared else value
        for name, value in values.items()
    }


def credential_files(
    names: Collection[str], given: Collection[str], environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``{option: path}`` for the file options among ``names`` that are not ``given``
    (nor an option standing for them) and that have a credential of their key's name."""
    directory = environ.get(CREDENTIALS_DIRECTORY)
    if not directory:
        return {}
    found = {}
    for declared in _declared().values():
        kind = declared.spec.kind
        if not isinstance(kind, PathKind) or not kind.is_file or declared.name not in names:
            continue
        if declared.name in given or any(
            other in given for other in _ALTERNATIVES.get(declared.name, ())
        ):
            continue
        path = os.path.join(directory, declared.key)
        if os.path.isfile(path):
            found[declared.name] = path
    return found
