"""The lifecycle of a registered session: every rule in one table, as ``yamux.stream_state``.

A session is ``PENDING`` from its port line until the registered side answers
the handshake ping (``CONFIRM``); until then it holds its admission place, so
one address cannot keep many registrations half-open. ``END`` (Go
Away, the yamux session closed, the handshake timeout, ``end()`` by the relay)
stops it at once: its public port is freed and its tasks are cancelled. It is
``ENDED`` once everything it held is closed and awaited (``CLOSED``). A pair
missing from ``TRANSITIONS`` is a bug and raises ``SessionStateError``.
"""

from __future__ import annotations

from enum import Enum

from ..errors import RelayError


class SessionState(Enum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    ENDING = "ending"
    ENDED = "ended"


class SessionEvent(Enum):
    CONFIRM = "handshake ping answered"
    END = "end"
    CLOSED = "everything closed"


class SessionEffect(Enum):
    """What the session does on a step."""

    RELEASE_PLACE = "release place"
    """The admission place goes back (the only place it does)."""
    STOP = "stop"
    """The public listener closes, the port is released, every task is cancelled, and the
    closing of the yamux session starts."""
    FORGET = "forget"
    """The relay forgets the session: its totals are kept, its end line is logged."""


class SessionStateError(RelayError):
    """An event the session's state does not allow: a bug in the relay."""


_S, _V, _E = SessionState, SessionEvent, SessionEffect

TRANSITIONS: dict[
    tuple[SessionState, SessionEvent], tuple[SessionState, tuple[SessionEffect, ...]]
] = {
    (_S.PENDING, _V.CONFIRM): (_S.CONFIRMED, (_E.RELEASE_PLACE,)),
    (_S.PENDING, _V.END): (_S.ENDING, (_E.RELEASE_PLACE, _E.STOP)),
    (_S.CONFIRMED, _V.END): (_S.ENDING, (_E.STOP,)),
    (_S.ENDING, _V.END): (_S.ENDING, ()),
    (_S.ENDING, _V.CLOSED): (_S.ENDED, (_E.FORGET,)),
    (_S.ENDED, _V.END): (_S.ENDED, ()),
}
"""``(state, event) -> (next state, effects)``; a missing pair is illegal."""


def step(
    state: SessionState, event: SessionEvent
) -> tuple[SessionState, tuple[SessionEffect, ...]]:
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise SessionStateError(f"{event.value!r} in state {state.value!r}") from None
