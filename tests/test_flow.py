"""The flow-control rule in isolation: ReceiveWindow and SendWindow.

The receiver grants the peer credit; the peer may never send more than it; the
receiver gives credit back (hashicorp's rule) only once the application has
consumed at least half of the maximum window, so memory per stream stays
bounded by the window and a fast reader never stalls the sender.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yamux import ProtocolError
from yamux.const import INITIAL_STREAM_WINDOW
from yamux.flow import ReceiveWindow, SendWindow

KIB = 1024
W = INITIAL_STREAM_WINDOW


def test_both_directions_start_with_256_kib() -> None:
    assert W == 256 * KIB
    assert ReceiveWindow(W).credit == W
    assert ReceiveWindow(4 * W).credit == W  # until the grant goes out on SYN/ACK
    assert SendWindow().credit == W


@pytest.mark.parametrize("max_window", [W, W + 1, 2 * W, 64 * W])
def test_initial_grant_is_the_excess_over_256_kib(max_window: int) -> None:
    window = ReceiveWindow(max_window)
    assert window.initial_grant() == max_window - W
    assert window.credit == max_window
    assert window.buffered == 0


def test_receive_within_credit_then_overrun_is_protocol_error() -> None:
    window = ReceiveWindow(W)
    window.receive(7, W - 10)
    assert (window.credit, window.buffered) == (10, W - 10)
    window.receive(7, 10)  # exactly the rest of the credit is fine
    assert (window.credit, window.buffered) == (0, W)
    with pytest.raises(ProtocolError, match=r"stream 7: data frame of 1 bytes exceeds"):
        window.receive(7, 1)
    assert (window.credit, window.buffered) == (0, W)  # the rejected frame is not counted


def test_overrun_message_names_the_sizes() -> None:
    window = ReceiveWindow(W)
    with pytest.raises(ProtocolError, match=rf"stream 3: data frame of {W + 1} bytes .* {W} bytes"):
        window.receive(3, W + 1)


def test_no_update_before_half_the_window_is_consumed() -> None:
    window = ReceiveWindow(W)
    window.receive(1, W)
    assert window.consume(W // 2 - 1) == 0
    assert window.credit == 0
    assert window.consume(1) == W // 2  # half consumed: exactly one update, for that half
    assert window.credit == W // 2
    assert window.consume(W // 2 - 1) == 0
    assert window.consume(1) == W // 2
    assert (window.credit, window.buffered) == (W, 0)


def test_small_reads_batch_into_one_update() -> None:
    """Many small consumes produce one update once half is consumed, never one per read."""
    window = ReceiveWindow(W)
    window.receive(1, W)
    updates = [window.consume(1024) for _ in range(W // 1024)]
    assert [u for u in updates if u] == [W // 2, W // 2]
    assert updates.index(W // 2) == W // 2 // 1024 - 1


def test_partial_read_of_half_plus_one_grants_exactly_that() -> None:
    """hashicorp's TestSession_PartialReadWindowUpdate, at the window level."""
    window = ReceiveWindow(W)
    window.receive(1, W)
    assert window.consume(W // 2 + 1) == W // 2 + 1
    assert window.credit == W // 2 + 1


def test_update_counts_data_still_in_flight() -> None:
    """Credit the peer still holds is not granted twice."""
    window = ReceiveWindow(W)
    window.receive(1, W // 2)  # half still unused by the peer
    assert window.consume(W // 2) == W // 2
    assert window.credit == W
    window.receive(1, 1)
    assert window.consume(1) == 0  # the peer holds W - 1: no update needed


@pytest.mark.parametrize("max_window", [2 * W, 4 * W])
def test_large_window_threshold_is_half_of_the_maximum(max_window: int) -> None:
    window = ReceiveWindow(max_window)
    window.initial_grant()
    window.receive(1, max_window)
    assert window.consume(max_window // 2 - 1) == 0
    assert window.consume(1) == max_window // 2


def test_consume_before_initial_grant_never_grants_beyond_the_window() -> None:
    """Data on a stream not yet ACKed may be consumed before the ACK's grant goes out.

    Whatever order consume and initial_grant come in, credit plus unconsumed bytes
    must stay within the maximum window, or a peer may make us buffer more.
    """
    max_window = 4 * W
    window = ReceiveWindow(max_window)
    window.receive(1, 1000)
    delta = window.consume(1000)
    grant = window.initial_grant()
    assert window.credit + window.buffered <= max_window
    assert window.credit == max_window
    assert W + delta + grant - 1000 == max_window  # the total the peer was given


def test_send_window_grant_adds_and_rejects_32_bit_overflow() -> None:
    window = SendWindow()
    window.grant(5, 100)
    assert window.credit == W + 100
    window.grant(5, 0xFFFFFFFF - W - 100)
    assert window.credit == 0xFFFFFFFF
    with pytest.raises(ProtocolError, match=r"stream 5: window update of 1 bytes"):
        window.grant(5, 1)


receive_ops = st.lists(
    st.tuples(st.sampled_from(["receive", "consume"]), st.floats(0, 1)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    max_window=st.sampled_from([W, W + 3, 2 * W, 5 * W + 7]),
    ops=receive_ops,
    consume_first=st.booleans(),
)
def test_window_rule_properties(
    max_window: int, ops: list[tuple[str, float]], consume_first: bool
) -> None:
    """Any legal sequence: memory bounded by the window, updates only in big steps, no stall.

    ``sent`` is what a well-behaved peer may send in total: 256 KiB, plus the initial
    grant, plus every update. The receiver never has more than max_window unconsumed.
    """
    window = ReceiveWindow(max_window)
    peer_credit = W
    granted = False
    if not consume_first:
        peer_credit += window.initial_grant()
        granted = True
    for i, (op, fraction) in enumerate(ops):
        if not granted and i == len(ops) // 2:
            peer_credit += window.initial_grant()
            granted = True
        if op == "receive":
            n = int(peer_credit * fraction)
            window.receive(1, n)
            peer_credit -= n
        else:
            n = int(window.buffered * fraction)
            before = max_window - (window.buffered - n) - window.credit
            delta = window.consume(n)
            if delta:
                assert delta >= max_window // 2
                assert delta == before
                assert window.credit + window.buffered == max_window
            else:
                assert before < max_window // 2
            peer_credit += delta
        assert peer_credit == window.credit  # both ends agree on the credit
        assert window.credit >= 0
        assert 0 <= window.buffered <= max_window
        assert window.credit + window.buffered <= max_window
    if not granted:
        peer_credit += window.initial_grant()
    assert window.credit + window.buffered <= max_window
    # A reader that consumed everything leaves the sender more than half the window.
    peer_credit += window.consume(window.buffered)
    assert peer_credit == window.credit
    assert max_window - max_window // 2 < window.credit <= max_window
