"""What protects a relay, in the words of its start line: authentication, TLS, the leases.

An operator reads the first line a relay logs to know whether it is open to anyone,
whether its control port is private, and whether names keep their ports across a
restart (a state directory that cannot be used leaves the leases in memory).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..options import RelayOptions
from ..store import LeaseStore
from .auth import Authenticator


def describe_protection(
    auth: Authenticator | None,
    auth_file: Path | None,
    options: RelayOptions,
    protocol: str,
    store: LeaseStore,
) -> dict[str, str]:
    """``auth``, ``tls``, ``leases`` and ``protocol``, as the start line shows them.

    ``options`` are the relay's with its files read (``ssl`` made).
    """
    if auth is None:
        who = "none"
    elif not auth.clients:
        who = "shared secret"
    else:
        count = len(auth.clients)
        where = f" (auth file {auth_file})" if auth_file is not None else ""
        who = f"{count} named client{'s' if count != 1 else ''}{where}"
    if options.ssl is None:
        tls = "off"
    elif options.ssl.verify_mode == ssl.CERT_REQUIRED:
        tls = "on, client certificates required"
    else:
        tls = "on"
    if options.cluster is not None:
        leases = store.describe()
    elif options.state_dir is None:
        leases = "in memory"
    elif not store.persistent:
        leases = f"in memory only, the state directory {options.state_dir} is unusable"
    else:
        leases = options.state_dir
    return {"auth": who, "tls": tls, "leases": leases, "protocol": protocol}
