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
    """The relay did not give us a public port (refused, or not a relay at all)."""


class RelayClosedError(RegistrationError):
    """The relay closed the connection before its greeting line was complete."""


class RelayRefusedError(RegistrationError):
    """The relay answered with an ``error: ...`` line; ``reason`` is its text."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"relay refused the registration: {reason}")
        self.reason = reason


class RelayDisconnectedError(RelayError, ConnectionError):
    """The session with the relay ended while serving; the public port is gone."""
