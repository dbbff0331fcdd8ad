"""The relay's own errors: every one derives from RelayError.

Each also keeps the standard base it had (ConnectionError, OSError), so
``except ConnectionError`` in existing callers still catches it. The port
policy's refusals (relay/ports.py) and the registration v2 errors derive from
RegistrationError.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of the errors the relay package raises."""


class RegistrationError(RelayError, ConnectionError):
    """The relay did not give us a public port (refused, or not a relay at all).

    ``permanent``: trying again with the same configuration cannot succeed (a wrong
    secret, a port the client may never have, ...); a client then stops instead of
    retrying (docs/protocol.md 1.1).
    """

    permanent: bool = False


class RelayClosedError(RegistrationError):
    """The relay closed the connection before its greeting line was complete."""


class RelayRefusedError(RegistrationError):
    """The relay answered with an ``error: ...`` line; ``reason`` is its text (without the
    line's class), ``permanent`` and ``retry_after`` (seconds, or None) come from its class."""

    def __init__(
        self, reason: str, *, permanent: bool = False, retry_after: int | None = None
    ) -> None:
        super().__init__(f"relay refused the registration: {reason}")
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after


class PermanentRefusalError(RelayRefusedError):
    """A ``RelayedServer`` (or forwarder) stopped registering because of a permanent
    refusal: the relay's, or this side's own (no secret for a relay that requires one,
    ``require_v2`` against a seed relay). ``__cause__`` is that refusal."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(reason, permanent=True)
        self.args = (message,)


class RelayDisconnectedError(RelayError, ConnectionError):
    """The session with the relay ended while serving; the public port is gone."""
