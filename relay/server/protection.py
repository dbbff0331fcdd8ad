"""What protects a relay, in the words of its start line: authentication, TLS, the leases.

An operator reads the first line a relay logs to know whether it is open to anyone,
whether its control port is private, and whether names keep their ports across a
restart (a state directory that cannot be used leaves the leases in memory).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from ..net import BindAddress
from ..options import RelayOptions
from ..store import LeaseStore
from .auth import Authenticator
from .ports import PortAllocator

if TYPE_CHECKING:
    from .siblings import WorkerRole

logger = logging.getLogger("relay.server")


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


def log_start(
    port: int,
    bind: BindAddress,
    auth: Authenticator | None,
    auth_file: Path | None,
    options: RelayOptions,
    protocol: str,
    ports: PortAllocator,
    worker: WorkerRole | None = None,
) -> None:
    """The start line (with what protects the relay), and a warning when a relay that
    anyone can reach lets anyone register. A ``worker`` of several says which it is (the
    supervisor has the start line), and only the first warns."""
    protection = describe_protection(auth, auth_file, options, protocol, ports.store)
    words = "; ".join(f"{key}: {value}" for key, value in protection.items())
    extra = {"control_port": port, **protection}
    if worker is None:
        logger.info("Serving relay requests on port %d (%s)", port, words, extra=extra)
    else:
        logger.info(
            "worker %d of %d takes registrations on port %d (%s)",
            worker.index,
            worker.count,
            port,
            words,
            extra=extra,
        )
    if auth is None and not bind.is_loopback() and (worker is None or worker.index == 1):
        logger.warning(
            "the relay listens on %s without authentication: anyone who can reach port %d "
            "gets a public port (use --secret or --auth-file)",
            bind,
            port,
        )
    logger.debug(
        "bound to %s; %s; at most %d sessions of %d connections each",
        bind,
        ports.describe(),
        options.max_sessions,
        options.max_connections,
    )
