"""The stream state table: what it allows, what it refuses, and that the docs print it."""

from __future__ import annotations

from pathlib import Path

import pytest

from yamux.stream_state import (
    HANDSHAKE,
    LIFECYCLE,
    Effect,
    Handshake,
    Input,
    State,
    StreamMachine,
    StreamStateError,
    render_tables,
)

ROOT = Path(__file__).resolve().parent.parent


def machine(*inputs: Input) -> StreamMachine:
    m = StreamMachine()
    for input_ in inputs:
        m.process(input_)
    return m


def test_docs_print_the_table_the_code_uses() -> None:
    assert (ROOT / "docs" / "stream-states.md").read_text() == render_tables()


def test_open_close_both_ways_ours_first() -> None:
    m = StreamMachine()
    assert m.process(Input.SEND_SYN) == ()
    assert (m.state, m.handshake) == (State.SYN_SENT, Handshake.AWAITING_ACK)
    assert m.process(Input.RECV_ACK) == (Effect.ACKNOWLEDGED,)
    assert (m.state, m.handshake) == (State.ESTABLISHED, Handshake.NONE)
    assert m.process(Input.SEND_FIN) == ()
    assert m.state is State.LOCAL_CLOSE
    assert m.local_closed
    assert not m.remote_closed
    assert m.process(Input.RECV_DATA) == ()  # the peer may still write
    assert m.process(Input.RECV_FIN) == (Effect.ENDED, Effect.CLOSED)
    assert m.state is State.CLOSED
    assert m.local_closed
    assert m.remote_closed


def test_peer_opens_writes_and_closes_before_we_accept_and_still_gets_its_ack() -> None:
    m = machine(Input.RECV_SYN, Input.RECV_DATA)
    assert m.process(Input.RECV_FIN) == (Effect.ENDED,)
    assert (m.state, m.handshake) == (State.REMOTE_CLOSE, Handshake.ACK_OWED)
    assert m.process(Input.SEND_ACK) == (Effect.ACCEPTED,)
    assert m.process(Input.SEND_DATA) == ()  # we may still answer
    assert m.process(Input.SEND_FIN) == (Effect.CLOSED,)


def test_ack_after_our_fin_still_acknowledges_the_open() -> None:
    m = machine(Input.SEND_SYN, Input.SEND_FIN)
    assert m.process(Input.RECV_ACK) == (Effect.ACKNOWLEDGED,)
    assert m.process(Input.RECV_ACK) == ()  # a second ACK is ignored, as by hashicorp


@pytest.mark.parametrize("rst", [Input.SEND_RST, Input.RECV_RST])
def test_rst_resets_every_live_state(rst: Input) -> None:
    live = {state for state, _ in LIFECYCLE} - {State.INIT}
    for state in live:
        assert LIFECYCLE[state, rst] == (State.RESET, (Effect.RESET,))


@pytest.mark.parametrize(
    ("inputs", "illegal"),
    [
        ((Input.RECV_SYN, Input.RECV_FIN), Input.RECV_DATA),  # data after the peer's FIN
        ((Input.SEND_SYN, Input.SEND_FIN), Input.SEND_DATA),  # write after close
        ((Input.SEND_SYN,), Input.RECV_SYN),  # duplicate SYN
        ((Input.SEND_SYN, Input.SEND_RST), Input.RECV_DATA),  # anything after reset
        ((), Input.RECV_DATA),  # data before any SYN
    ],
)
def test_illegal_inputs_raise_the_one_error_and_change_nothing(
    inputs: tuple[Input, ...], illegal: Input
) -> None:
    m = machine(*inputs)
    before = (m.state, m.handshake)
    with pytest.raises(StreamStateError, match=f"{illegal.value} is not allowed in state"):
        m.process(illegal)
    assert (m.state, m.handshake) == before


def test_final_states_accept_only_what_a_lingering_closed_stream_needs() -> None:
    assert {i for s, i in LIFECYCLE if s is State.RESET} == set()
    assert {i for s, i in LIFECYCLE if s is State.CLOSED} == {
        Input.SEND_ACK,
        Input.RECV_ACK,
        Input.RECV_FIN,
        Input.SEND_RST,
        Input.RECV_RST,
    }


def test_handshake_table_only_leaves_pending_states_on_the_matching_input() -> None:
    assert set(HANDSHAKE) == {
        (Handshake.NONE, Input.SEND_SYN),
        (Handshake.NONE, Input.RECV_SYN),
        (Handshake.AWAITING_ACK, Input.RECV_ACK),
        (Handshake.ACK_OWED, Input.SEND_ACK),
    }
