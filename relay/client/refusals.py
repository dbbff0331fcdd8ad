"""What to fix after a permanent refusal, for the one line that says the server stopped.

A refusal is permanent when trying again with the same configuration cannot
succeed (docs/protocol.md 1.1): the relay's line says so, or this side found
it out itself (no secret for a relay that requires one, ``require_v2`` against
a seed relay). The hint goes by the reason's start, the part of a relay's
reason that clients may rely on (docs/protocol.md 2.5).
"""

from __future__ import annotations

from ..errors import RegistrationError, RelayRefusedError
from ..wire.v2 import SeedRelayError, VersionError

_SECRET = "(--secret-file, RELAY_SECRET or secret=)"
_FIXES: tuple[tuple[str, str], ...] = (
    ("auth failed: wrong secret", f"use the relay's secret {_SECRET}"),
    (
        "auth failed: unknown client",
        "check --client-name and that its secret is the one the relay's auth file has",
    ),
    ("auth failed: this relay needs a client name", "give --client-name (client_name=)"),
    ("auth failed", f"check the secret {_SECRET}"),
    ("this relay requires a secret", f"give the relay's secret {_SECRET}"),
    ("port ", "ask for a port the relay allows (--remote-port), or for none"),
    ("bad response", "the relay does not understand this client's response: upgrade it"),
)


def what_to_fix(error: RegistrationError) -> str:
    """A hint for a permanent refusal: what to change so that a registration can succeed."""
    if isinstance(error, SeedRelayError):
        return "point it at a relay that speaks registration v2, or drop require_v2"
    if isinstance(error, VersionError):
        return "upgrade this client"
    reason = error.reason if isinstance(error, RelayRefusedError) else str(error)
    return next(
        (fix for start, fix in _FIXES if reason.startswith(start)),
        "change what the refusal names in the configuration",
    )
