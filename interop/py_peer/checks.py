"""Checks on the wire tap shared by both sides: keepalive, window bounds, big frames."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .params import INITIAL_WINDOW
from .report import Report


def check_keepalive(report: Report) -> None:
    """Both our keepalive and the peer's ran, and (all but one in flight of) ours were answered."""
    sent, recv = report.tap.sent, report.tap.recv
    if recv.ping_req < 1:
        report.fail("the peer sent no ping requests: is its keepalive on?")
    if sent.ping_req < 1:
        report.fail(f"our keepalive sent no pings (interval {report.params.keepalive_interval}s)")
    if recv.ping_resp < sent.ping_req - 1:
        report.fail(f"the peer answered {recv.ping_resp} of our {sent.ping_req} pings")
    report.notes.update(
        keepalive_pings_sent=sent.ping_req, answered=recv.ping_resp, peer_pings=recv.ping_req
    )


@contextlib.contextmanager
def pings_during(report: Report, what: str) -> Iterator[None]:
    """Note the ping requests each side sent while ``what`` ran (keepalive during bulk data)."""
    sent0, recv0 = report.tap.sent.ping_req, report.tap.recv.ping_req
    try:
        yield
    finally:
        report.notes[f"our_pings_during_{what}"] = report.tap.sent.ping_req - sent0
        report.notes[f"peer_pings_during_{what}"] = report.tap.recv.ping_req - recv0


def window_overrun(report: Report, stream_id: int, *, ours: bool) -> str | None:
    """What one side sent on a stream whose reader stopped, if more than the reader allowed.

    hashicorp grants only for consumed data: a stalled reader's stream carries at most the
    initial 256 KiB. Peers that grant on receipt (``Params.grants_on_consume`` False) allow
    256 KiB plus whatever they granted; no side may ever send beyond that.
    """
    tap = report.tap
    sender, receiver = (tap.sent, tap.recv) if ours else (tap.recv, tap.sent)
    limit = INITIAL_WINDOW
    if not report.params.grants_on_consume:
        limit += receiver.grant_by_stream[stream_id]
    on_wire = sender.data_by_stream[stream_id]
    if on_wire <= limit:
        return None
    who = "we" if ours else "the peer"
    return f"{who} sent {on_wire} bytes on stream {stream_id}, the reader allowed {limit}"


def check_big_frames(report: Report, n: int) -> None:
    """bigwindow: both single n-byte writes crossed as one Data frame; both sides granted."""
    sent, recv = report.tap.sent, report.tap.recv
    extra = report.params.window - INITIAL_WINDOW
    report.notes.update(
        big_write=n,
        peer_grant_on_synack=recv.max_grant,
        largest_rx_frame=recv.max_data,
        largest_tx_frame=sent.max_data,
    )
    if not report.params.grants_on_synack:
        return  # the digests checked the bytes; frame sizes depend on the peer's own tuning
    if recv.max_data < n:
        report.fail(f"the peer's {n}-byte write arrived split (largest Data frame {recv.max_data})")
    if sent.max_data < n:
        report.fail(
            f"our {n}-byte write was split (largest Data frame {sent.max_data}): the peer's "
            f"grant on its SYN/ACK ({recv.max_grant}) was not used"
        )
    if sent.max_grant != extra:
        report.fail(f"we granted {sent.max_grant} extra on our SYN/ACK, want {extra}")
    if recv.max_grant != extra:
        report.fail(f"the peer granted {recv.max_grant} extra on its SYN/ACK, want {extra}")
