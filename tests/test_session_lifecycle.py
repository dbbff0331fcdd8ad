"""The registered session's lifecycle table (relay.server.lifecycle): its rules, read as data."""

from __future__ import annotations

import pytest

from relay.server.lifecycle import (
    TRANSITIONS,
    SessionEffect,
    SessionEvent,
    SessionState,
    SessionStateError,
    step,
)

S, V, E = SessionState, SessionEvent, SessionEffect


def test_the_admission_place_goes_back_exactly_when_a_session_leaves_pending() -> None:
    releasing = {pair for pair, (_, effects) in TRANSITIONS.items() if E.RELEASE_PLACE in effects}
    assert releasing == {(S.PENDING, V.CONFIRM), (S.PENDING, V.END)}
    assert all(after is not S.PENDING for after, _ in TRANSITIONS.values())


def test_a_session_stops_once_and_is_forgotten_once() -> None:
    state, effects = step(S.CONFIRMED, V.END)
    assert (state, effects) == (S.ENDING, (E.STOP,))
    assert step(state, V.END) == (S.ENDING, ())  # a second end() changes nothing
    state, effects = step(state, V.CLOSED)
    assert (state, effects) == (S.ENDED, (E.FORGET,))
    assert step(state, V.END) == (S.ENDED, ())


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.CONFIRMED, V.CONFIRM),
        (S.ENDING, V.CONFIRM),
        (S.PENDING, V.CLOSED),
        (S.CONFIRMED, V.CLOSED),
        (S.ENDED, V.CLOSED),
    ],
)
def test_anything_not_in_the_table_is_an_error(state: SessionState, event: SessionEvent) -> None:
    with pytest.raises(SessionStateError, match=f"{event.value!r} in state {state.value!r}"):
        step(state, event)
