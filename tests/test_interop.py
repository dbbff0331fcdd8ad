"""Wire compatibility with Go hashicorp/yamux (Debian 12's 2019 snapshot), in a container.

Every scenario of interop/SCENARIOS.md runs in both roles:

* ``py_client``: Python is the yamux client and the ACTIVE side (opens the
  streams, drives, verifies); the Go peer runs ``yamux-peer -role server``.
* ``py_server``: Python is the yamux server and the PASSIVE side (accepts and
  obeys command lines); the Go peer runs ``yamux-peer -role client``.

The Python test listens on 127.0.0.1 and the Go peer (podman, --network=host)
dials it. A case passes only if BOTH verdicts are good: the Go program exits 0
with its ``OK <scenario> <role>`` line, and the Python side raised nothing and
failed none of its own checks (interop/py_peer.py; they mirror the Go peer's, on
a wire tap of the Python session). A failure prints ``Outcome.describe()``:
scenario, roles, knobs, the Python exception and traceback, bytes seen/expected
of every transfer that did not finish, frame counters of both directions, and
the Go program's stdout/stderr.

Where the peers differ (see each test's docstring), the test states what this
project chose. Under CI=true a missing go/podman fails (harness.unavailable_reason
raises); elsewhere it skips.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import yamux
from interop import harness
from interop.py_peer import INITIAL_WINDOW, Outcome, run_against_go
from yamux_peers import session_pair

interop = pytest.mark.interop
"""On every Go-vs-Python test; the yamux bug reproductions at the end need no Go peer."""

ROLES = ("client", "server")


@pytest.fixture(scope="session")
def go_peer_image() -> str | None:
    """Build the Go programs and the FROM-scratch image once per test run."""
    reason = harness.unavailable_reason()  # raises HarnessError under CI=true
    if reason is not None:
        pytest.skip(reason)
    return harness.build_image()


@pytest.fixture(params=ROLES, ids=["py_client", "py_server"])
def py_role(request: pytest.FixtureRequest, go_peer_image: str | None) -> str:
    """Python's yamux role; the Go peer takes the other one."""
    return str(request.param)


async def run(scenario: str, py_role: str, **overrides: Any) -> Outcome:
    """Run the scenario; fail with the full diagnostics unless both sides are happy."""
    outcome = await run_against_go(scenario, py_role, **overrides)
    print(outcome.describe())  # shown by pytest for failing tests (and with -s)
    if not outcome.ok:
        pytest.fail(outcome.describe(), pytrace=False)
    return outcome


def check(outcome: Outcome, condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"{what}\n{outcome.describe()}", pytrace=False)


def go_int(outcome: Outcome, key: str) -> int:
    value = outcome.go_detail(key)
    check(outcome, value is not None, f"Go's OK line has no {key}=")
    return int(str(value))


def common_wire_checks(outcome: Outcome) -> None:
    """Frame-level facts every scenario must show, from the Python tap."""
    sent, recv = outcome.report.tap.sent, outcome.report.tap.recv
    check(outcome, sent.invalid == 0 and recv.invalid == 0, "a frame with a bad version/type")
    check(
        outcome,
        sent.max_data <= outcome.params.config().max_frame_size,
        "we sent a Data frame larger than Config.max_frame_size",
    )
    # Go's own counters agree with ours on the payload both ways.
    check(outcome, go_int(outcome, "tx_data") == recv.data_bytes, "Go's tx_data != our rx data")
    check(outcome, go_int(outcome, "rx_data") == sent.data_bytes, "Go's rx_data != our tx data")


# --------------------------------------------------------------------------- scenarios


@interop
async def test_echo(py_role: str) -> None:
    """1 MiB echoed on one stream; the digests of sent and echoed bytes match.

    Peer disagreement at the session's end: hashicorp's ``Session.Close()`` sends
    no Go Away (despite its comment), it just closes the socket; our
    ``Session.close()`` sends Go Away 0 ("no new streams") before closing, so the
    peer learns the end was deliberate. hashicorp ignores it harmlessly.
    """
    outcome = await run("echo", py_role)
    common_wire_checks(outcome)
    tap = outcome.report.tap
    check(outcome, tap.recv.data_bytes >= 1 << 20, "less than 1 MiB came back")
    check(outcome, tap.recv.go_away == 0, "hashicorp sent a Go Away (its Close sends none)")
    if py_role == "client":  # we end the session: Session.close() says Go Away 0
        check(
            outcome,
            tap.sent.go_away == 1 and tap.sent.go_away_code == 0,
            "our Session.close() did not send exactly one Go Away 0",
        )


@interop
async def test_parallel(py_role: str) -> None:
    """100 streams at once, each XFER with up/down sizes uniform in 0..8 MiB, by digest.

    The passive side checks it served exactly 100 XFERs. hashicorp writes Data
    frames as large as the send window (256 KiB), we write at most 64 KiB
    (``Config.max_frame_size``); both are fine for the other side.
    """
    outcome = await run("parallel", py_role)
    common_wire_checks(outcome)
    if py_role == "server":
        check(outcome, outcome.report.served["XFER"] == 100, "not exactly 100 XFER served")
    else:
        check(outcome, outcome.go_detail("served") == "XFER:100", "Go did not serve 100 XFERs")
    check(
        outcome,
        outcome.report.tap.recv.max_data <= INITIAL_WINDOW,
        "Go sent a Data frame beyond the 256 KiB window",
    )


@interop
@pytest.mark.slow
async def test_bulk_1gib(py_role: str) -> None:
    """1 GiB each way on ONE stream, both directions at once, checked by digest."""
    outcome = await run("bulk", py_role)
    common_wire_checks(outcome)
    tap = outcome.report.tap
    check(
        outcome,
        tap.sent.data_bytes > 1 << 30 and tap.recv.data_bytes > 1 << 30,
        "less than 1 GiB crossed in some direction",
    )


@interop
async def test_halfclose(py_role: str) -> None:
    """Half-close each way: the side that FINs first still receives the rest (1 MiB + line).

    HALFCLOSE: the active side FINs first and reads 1 MiB and a result line
    afterwards; HALFCLOSE-REV: the passive side does. So in each role Python both
    reads after its own FIN (and sees the final EOF) and writes after the peer's FIN.

    Peer disagreement: Debian's hashicorp ends reads after a LOCAL Close (``Read``
    returns EOF whenever its buffer is momentarily empty); the Go closer works
    around it by retrying. This project follows the spec: ``Stream.close()`` is
    ``write_eof()``, a half-close, and reading goes on until the peer's FIN,
    because protocols like HTTP/1.0 or redis pipelines rely on it and a relay must
    not cut answers short. Window updates keep flowing after our FIN (1 MiB is
    4x the window) and stop after the peer's FIN (nothing more can arrive).

    Debian's hashicorp also has no StreamCloseTimeout: a stream it closed whose
    peer never FINs lives forever. Ours resets such a stream after
    ``Config.stream_close_timeout`` (300 s, newer hashicorp's default), so a
    stuck peer cannot pin memory; a peer that answers, as here, never sees it.
    """
    outcome = await run("halfclose", py_role)
    common_wire_checks(outcome)
    tap = outcome.report.tap
    check(
        outcome, tap.sent.fin == tap.recv.fin, "FIN counts differ: a FIN sent twice or not at all"
    )


@interop
async def test_rst(py_role: str) -> None:
    """RST each way, then an echo proves the session survived.

    EXPECT-RST: the active side resets; the passive side's pending read and then
    a write must fail with a *reset* (Python: StreamResetError, a
    ConnectionResetError; Go: ErrConnectionReset), not EOF. SEND-RST: the other
    way round. Debian's hashicorp has no ``Stream.Reset``; the Go peer injects a
    Window Update|RST frame itself. Ours is ``Stream.reset()``, which sends the
    same frame. Like hashicorp, a received RST drops unread buffered data at once.
    """
    outcome = await run("rst", py_role)
    common_wire_checks(outcome)
    tap = outcome.report.tap
    check(outcome, tap.sent.rst == 1 and tap.recv.rst == 1, "want exactly one RST each way")
    check(
        outcome,
        go_int(outcome, "tx_rst") == 1 and go_int(outcome, "rx_rst") == 1,
        "Go's tap disagrees: want exactly one RST each way",
    )


@interop
async def test_ping(py_role: str) -> None:
    """Ping each way: 5 pings from each side, each answered (RTTs in the notes).

    hashicorp numbers its pings 0, 1, 2...; ours start at 1. The value is opaque:
    each side only echoes it.
    """
    outcome = await run("ping", py_role)
    tap = outcome.report.tap
    check(outcome, tap.sent.ping_req >= 5 and tap.recv.ping_resp >= 5, "our pings unanswered")
    check(outcome, tap.recv.ping_req >= 5 and tap.sent.ping_resp >= 5, "Go's pings unanswered")


@interop
async def test_keepalive(py_role: str) -> None:
    """Keepalive on BOTH sides (100 ms) during 64 MiB each way, then 1 s idle, then an echo.

    Both sides check the session survived, the peer's keepalive pinged, and all
    but at most one (in flight) of our pings were answered. hashicorp kills the
    session when a pong is later than ConnectionWriteTimeout (10 s): ours go out
    in the control queue, never behind queued stream data. Pings must also have
    flowed during the bulk transfer itself, in both directions.
    """
    outcome = await run("keepalive", py_role)
    common_wire_checks(outcome)
    notes = outcome.report.notes
    check(outcome, int(notes["our_pings_during_xfer"]) >= 1, "we sent no ping during the XFER")
    check(outcome, int(notes["peer_pings_during_xfer"]) >= 1, "Go sent no ping during the XFER")
    check(outcome, go_int(outcome, "peer_pings") >= 1, "Go saw none of our keepalive pings")


@interop
async def test_goaway(py_role: str) -> None:
    """Go Away (code 0) from each side; what the other side then does.

    Two streams are opened before any Go Away and keep working after it.

    * Python receives Go Away 0 (EXPECT-GOAWAY with py_server, SEND-GOAWAY with
      py_client): ``open_stream`` raises NoNewStreamsError *locally*, no SYN is sent
      (``OPEN-REFUSED local``) -- as hashicorp's ErrRemoteGoAway. Existing streams
      go on. (It should also keep accepting and answering pings; it does not, see
      test_accept_after_remote_go_away below: the passive side works around it.)
    * Go receives our Go Away 0: hashicorp refuses its own OpenStream locally
      (``OPEN-REFUSED local``, ``syn_after_our_goaway=0`` on both taps) and
      keeps existing streams. Had a SYN come anyway, both sides would answer it
      with RST (ours: Connection refuses SYNs after local_go_away).
    * libp2p peers close the session on any Go Away; this project follows
      hashicorp (code 0 = no new streams), since that is the peer it relays for.
    """
    outcome = await run("goaway", py_role)
    common_wire_checks(outcome)
    check(
        outcome,
        outcome.go_detail("peer_open_after_our_goaway") == "OPEN-REFUSED local",
        "Go's report of the open after a go away is not OPEN-REFUSED local",
    )
    check(
        outcome, outcome.go_detail("syn_after_our_goaway") == "0", "Go saw a SYN after its go away"
    )
    check(outcome, outcome.report.tap.syn_after_our_goaway == 0, "we saw a SYN after our go away")
    ours = outcome.report.notes.get(
        "our_open" if py_role == "client" else "our_open_after_peer_goaway"
    )
    check(outcome, ours == "local", "our open after the peer's go away was not refused locally")
    tap = outcome.report.tap
    check(
        outcome,
        tap.sent.go_away >= 1 and tap.recv.go_away == 1 and tap.recv.go_away_code == 0,
        "want our go away out and exactly one go away code 0 in",
    )


@interop
async def test_bigwindow(py_role: str) -> None:
    """A 16 MiB window granted on SYN/ACK: one (16 MiB - 64 KiB) write each way, one frame each.

    Both sides use max_stream_window_size = 16 MiB. The SYN and the ACK each carry
    a Window Update delta of 16 MiB - 256 KiB (added to the implicit 256 KiB), so
    each side's single big write crosses as ONE Data frame (Go checks its own; we
    check both directions). For this scenario we raise our max_frame_size to the
    window; by default we cap frames at 64 KiB, which every peer accepts.
    """
    outcome = await run("bigwindow", py_role)
    common_wire_checks(outcome)
    n, extra = outcome.params.size, outcome.params.window - INITIAL_WINDOW
    tap = outcome.report.tap
    check(outcome, tap.recv.max_data == n and tap.sent.max_data == n, "a big write was split")
    check(
        outcome,
        tap.sent.max_grant == extra and tap.recv.max_grant == extra,
        "the SYN/ACK grants are not window - 256 KiB",
    )
    check(outcome, go_int(outcome, "peer_grant_on_synack") == extra, "Go saw another grant")


@interop
async def test_openstorm(py_role: str) -> None:
    """1280 streams (5x the 256 accept backlog) opened at once, each a 32-byte echo; no RST.

    hashicorp ACKs a stream only when its application accepts it and RSTs a SYN
    that finds its 256-entry accept queue full; its opener keeps at most 256
    streams un-ACKed. Ours does the same (``Session.open_stream`` waits while
    ``accept_backlog`` opens are un-ACKed), and ACKs as soon as accepted.
    Newer hashicorp closes the whole session when an ACK takes longer than
    StreamOpenTimeout (75 s); Debian's has no such timeout, ours has it
    (``Config.stream_open_timeout``, 75 s), which this storm must never trip.
    """
    outcome = await run("openstorm", py_role)
    common_wire_checks(outcome)
    tap = outcome.report.tap
    check(outcome, tap.sent.rst == 0 and tap.recv.rst == 0, "a stream was reset")
    opened = tap.sent.syn if py_role == "client" else tap.recv.syn
    check(outcome, opened == 1280 + 1, "want 1280 streams + the control stream opened")


@interop
async def test_closebusy(py_role: str) -> None:
    """The active side closes the session while 4 HOLD, 4 FLOOD and 4 STALL streams are busy.

    HOLD = a read pending, FLOOD = writes blocked on an exhausted window, STALL =
    the other side blocked writing. Every pending read and write must end within
    5 s of the session's end, and nobody may write past the 256 KiB window.

    Peer disagreement: hashicorp reports a session shutdown to a pending ``Read``
    as plain io.EOF (indistinguishable from the peer's FIN); ours raises
    SessionClosedError from read() and drain(), so a relay can tell a truncated
    transfer from a complete one. The Go active closes abruptly (no Go Away:
    hashicorp's Session.Close sends none); ``Session.close()`` sends Go Away 0 first.
    """
    outcome = await run("closebusy", py_role)
    if py_role == "client":
        check(
            outcome,
            outcome.report.notes["outcomes"] == "error SessionClosedError",
            "our pending reads/writes did not all end with SessionClosedError",
        )
    else:
        check(outcome, outcome.report.notes["busy_ops_ended"] == 12, "not all 12 busy ops ended")


# --------------------------------------------------------------------------- yamux bugs
# Found while writing the passive half of `goaway`. Pure Python, no Go peer needed.


async def _go_away(sender: yamux.Session, receiver: yamux.Session) -> None:
    """``sender`` sends Go Away 0; returns once ``receiver`` has processed it."""
    sender.go_away()
    await asyncio.wait_for(sender.ping(), 5)  # the pong comes back after the Go Away was read
    assert receiver.remote_go_away


async def test_accept_after_remote_go_away() -> None:
    """Go Away only forbids OUR new streams: accepting the peer's must go on.

    The side that sent Go Away may still open streams (hashicorp's AcceptStream
    and OpenStream after sending Go Away both work; only the receiver's
    OpenStream fails). yamux's ``Session.accept_stream`` raises NoNewStreamsError as
    soon as the peer's Go Away arrived and the accept queue is empty, which also
    ends ``async for stream in session`` / ``serve()`` with an exception.
    """
    async with session_pair() as (client, server):
        await _go_away(server, client)
        accept = asyncio.ensure_future(client.accept_stream())
        try:
            stream = await server.open_stream()
            stream.write(b"hi")
            accepted = await asyncio.wait_for(accept, 5)
            assert await accepted.readexactly(2) == b"hi"
        finally:
            accept.cancel()
            await asyncio.gather(accept, return_exceptions=True)


async def test_ping_after_remote_go_away() -> None:
    """A peer that sent Go Away 0 still answers pings; ``ping()`` must keep working.

    yamux's ``Session.ping`` raises NoNewStreamsError after the peer's Go Away, and so
    the keepalive task dies with that exception (logged "task yamux-keepalive
    failed"): a half-open connection is then never detected on that session.
    """
    async with session_pair() as (client, server):
        await _go_away(server, client)
        rtt = await asyncio.wait_for(client.ping(), 5)
        assert rtt >= 0
