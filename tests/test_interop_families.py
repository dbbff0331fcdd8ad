"""The interop matrix against two more yamux families: JS libp2p and py-libp2p.

Every scenario of interop/SCENARIOS.md that the peer's API allows runs in both roles
(``py_client``: Python is the yamux client and drives; ``py_server``: the peer drives) against:

* ``js``: ``@chainsafe/libp2p-yamux`` 8.0.1 on Node 20 (interop/js/yamux-peer.mjs);
* ``libp2p``: py-libp2p 0.8.1's trio yamux (interop/libp2p/yamux_peer.py, own venv).

Both peers take the Go yamux-peer's command line, so ``py_peer.run_against`` drives them like
the Go one (tests/test_interop.py); a case passes only if both verdicts are good.

Where the libp2p families differ from hashicorp by design, the Python side checks what is
checkable for them (``PEER_POLICY``): they grant window on receipt, not on consumption, and
never beyond 256 KiB on SYN/ACK. What a peer cannot do is in ``UNSUPPORTED`` (not run, and its
adapter refuses it with that reason: ``test_unsupported_is_refused``); a peer's own proven bug
is in ``PEER_BUGS`` and its test asserts exactly that documented failure plus everything else
that can still be checked -- never counted as a pass. The table is in SCENARIOS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import yamux
from interop import families, harness
from interop.py_peer import Outcome, PeerListener, WireTap, run_against

pytestmark = pytest.mark.interop

FAMILY_NAMES = ("js", "libp2p")
ROLES = ("client", "server")

PEER_POLICY: dict[str, Any] = {"grants_on_synack": False, "grants_on_consume": False}
"""Both libp2p families: window grows by itself from 256 KiB; granted on receipt."""

SIZES: dict[str, dict[str, Any]] = {
    "parallel": {"size": 2 << 20},  # 100 streams, up to 2 MiB each way (Go: 8 MiB)
    "bulk": {"size": 200 << 20},  # 200 MiB each way at once on one stream (Go: 1 GiB, slow)
    "keepalive": {"size": 16 << 20},
}
"""Smaller than the Go matrix's, to keep the suite fast; the shape of each scenario is the same."""

OVERRIDES: dict[tuple[str, str, str], dict[str, Any]] = {
    # The JS opener does not wait for ACKs (hashicorp keeps <= 256 un-ACKed): 1280 SYNs arrive
    # at once, far beyond our accept backlog of 256. We stop reading until our accepts make
    # room, so every stream is accepted and echoed, none reset (the check below).
    ("js", "openstorm", "server"): {"streams": 1280},
    # py-libp2p has no ping API: it pings once, 0.5 s after start, to measure the RTT.
    ("libp2p", "ping", "client"): {"count": 1},
    ("libp2p", "ping", "server"): {"count": 1},
}

UNSUPPORTED: dict[tuple[str, str], str] = {
    ("js", "goaway"): "libp2p yamux closes the session on any Go Away",
    ("libp2p", "goaway"): "py-libp2p closes the session on any Go Away",
    ("libp2p", "keepalive"): "py-libp2p has no keepalive setting",
}
"""(family, scenario) the peer cannot run as the active side; see test_goaway_ends_session."""

UNSUPPORTED_PASSIVE: frozenset[tuple[str, str]] = frozenset(
    {("js", "goaway"), ("libp2p", "goaway")}
)
"""Of those, the ones where the peer cannot be the passive side either (keepalive can: it
answers our keepalive pings and its RTT probe counts as its own ping)."""

PEER_BUGS: dict[tuple[str, str], str] = {
    ("libp2p", "rst"): (
        "py-libp2p reports a received RST as EOF: its reader finds the stream already dropped "
        "from its table and raises MuxedStreamEOF, not MuxedStreamReset"
    ),
}
RESET_AS_EOF = "read ended with EOF after 0 bytes, expected a stream reset"


_checked: dict[str, str | None] = {}


def require(family: str) -> str:
    """The family, if its peer is installed (skips locally without it; fails under CI=true)."""
    if family not in _checked:
        _checked[family] = families.family(family).unavailable_reason()  # raises under CI
    if _checked[family] is not None:
        pytest.skip(str(_checked[family]))
    return family


def knobs(family: str, scenario: str, py_role: str) -> dict[str, Any]:
    return {
        **PEER_POLICY,
        **SIZES.get(scenario, {}),
        **OVERRIDES.get((family, scenario, py_role), {}),
    }


async def run(family: str, scenario: str, py_role: str) -> Outcome:
    outcome = await run_against(
        require(family), scenario, py_role, **knobs(family, scenario, py_role)
    )
    print(outcome.describe())
    return outcome


def passed(outcome: Outcome) -> None:
    if not outcome.ok:
        pytest.fail(outcome.describe(), pytrace=False)


def check(outcome: Outcome, condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"{what}\n{outcome.describe()}", pytrace=False)


def supported(family: str, scenario: str, py_role: str) -> bool:
    """keepalive with py-libp2p runs with Python active only: py-libp2p has no keepalive, but
    it answers ours during the transfer and its RTT probe is a ping of its own."""
    if (family, scenario) not in UNSUPPORTED:
        return True
    return py_role == "client" and (family, scenario) not in UNSUPPORTED_PASSIVE


MATRIX = [
    pytest.param(family, py_role, scenario, id=f"{family}-py_{py_role}-{scenario}")
    for scenario in (
        "echo",
        "parallel",
        "bulk",
        "halfclose",
        "ping",
        "keepalive",
        "bigwindow",
        "openstorm",
        "closebusy",
    )
    for family in FAMILY_NAMES
    for py_role in ROLES
    if supported(family, scenario, py_role)
]
BOTH = [pytest.param(f, r, id=f"{f}-py_{r}") for f in FAMILY_NAMES for r in ROLES]


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize(("family", "py_role", "scenario"), MATRIX)
async def test_scenario(family: str, py_role: str, scenario: str) -> None:
    """The scenario passes both verdicts, with the checks of SCENARIOS.md."""
    outcome = await run(family, scenario, py_role)
    passed(outcome)
    tap = outcome.report.tap
    check(outcome, tap.sent.invalid == 0 and tap.recv.invalid == 0, "a frame with a bad header")
    if scenario == "parallel":
        served = (
            outcome.report.served["XFER"] if py_role == "server" else outcome.go_detail("served")
        )
        check(outcome, served in (100, "XFER:100"), "not exactly 100 XFER served")
    if scenario == "halfclose":
        check(outcome, tap.sent.fin == tap.recv.fin, "FIN sent twice or not at all")
    if scenario == "openstorm":
        check(outcome, tap.sent.rst == 0 and tap.recv.rst == 0, "a stream was reset")
    if scenario == "bulk":
        check(
            outcome,
            tap.sent.data_bytes > 200 << 20 and tap.recv.data_bytes > 200 << 20,
            "less than 200 MiB crossed in some direction",
        )


@pytest.mark.parametrize(("family", "py_role"), BOTH)
async def test_rst(family: str, py_role: str) -> None:
    """RST each way, then an echo; py-libp2p's reset-as-EOF bug asserted as what it is.

    JS: both verdicts pass. py-libp2p: our own side must work in full (we see its reset on
    read and on write, and the session goes on), and the ONLY failure must be py-libp2p
    reading our RST as a clean EOF (PEER_BUGS), which its peer reports verbatim.
    """
    outcome = await run(family, "rst", py_role)
    tap = outcome.report.tap
    if (family, "rst") not in PEER_BUGS:
        passed(outcome)
        check(outcome, tap.sent.rst == 1 and tap.recv.rst == 1, "want exactly one RST each way")
        return
    check(outcome, not outcome.ok, "py-libp2p saw the reset: update PEER_BUGS and SCENARIOS.md")
    check(outcome, tap.sent.rst == 1 and tap.recv.rst == 1, "want exactly one RST each way")
    if py_role == "client":  # our EXPECT-RST reset is read as EOF by the passive peer
        check(outcome, RESET_AS_EOF in str(outcome.py_error), "another failure than the bug")
        check(
            outcome,
            outcome.report.notes.get("reset_seen") == 1,
            "we did not see py-libp2p's own reset (SEND-RST) or the echo after it failed",
        )
    else:  # py-libp2p active: our SEND-RST reset reaches it as EOF
        assert outcome.go is not None
        check(outcome, RESET_AS_EOF in outcome.go.stderr, "another failure than the bug")
        check(
            outcome,
            outcome.report.served["EXPECT-RST"] == 1,
            "we did not see py-libp2p's reset on read and write",
        )
        early_exit = ("stream 1: ", "the session ended without BYE", "served 0 ECHO")
        check(
            outcome,
            all(f.startswith(early_exit) for f in outcome.report.failures),
            "a failure on our side beyond the peer's early exit (control stream 1 cut, "
            "no BYE, no ECHO)",
        )


@pytest.mark.parametrize(("family", "scenario"), sorted(UNSUPPORTED))
async def test_unsupported_is_refused(family: str, scenario: str) -> None:
    """A scenario the peer cannot run is refused by its adapter with the documented reason."""
    outcome = await run(family, scenario, "server")
    assert outcome.go is not None
    check(outcome, outcome.go.returncode == 1, "the peer did not fail")
    check(
        outcome,
        f"not supported: {UNSUPPORTED[family, scenario]}" in outcome.go.stderr,
        "the peer's refusal does not give the documented reason",
    )


# --------------------------------------------------------------------------- Go Away


GO_AWAY_TIMEOUT = 1.0
"""Our ``Config.go_away_timeout`` here: a silent stream is reset 1-2x this after its last frame."""


@pytest.mark.parametrize("family", FAMILY_NAMES)
async def test_goaway_ends_session(family: str) -> None:
    """libp2p peers end the session on our Go Away 0; our busy stream must not hang.

    We open a HOLD stream (the peer answers READY, then blocks reading) and send Go Away 0.
    py-libp2p closes the connection: our read ends and the session closes. JS drops its
    streams without FIN or RST and leaves the socket open (issue #13 item 3): our
    ``go_away_timeout`` must then reset the silent stream, so the read ends with a
    StreamResetError within two timeouts instead of hanging forever.
    """
    require(family)
    tap = WireTap()
    config = yamux.Config(go_away_timeout=GO_AWAY_TIMEOUT)
    bound = 2 * GO_AWAY_TIMEOUT + 3.0
    async with PeerListener(client=True, config=config, tap=tap) as listener:
        assert listener.accepted is not None
        peer = await asyncio.to_thread(
            families.family(family).start_peer, "server", listener.addr, "closebusy", timeout=30.0
        )
        try:
            session = await asyncio.wait_for(listener.accepted, 30)
            stream = await session.open_stream()
            stream.write(b"HOLD\n")
            assert await asyncio.wait_for(stream.readline(), 10) == b"READY\n"
            session.go_away()
            ended: type[BaseException]
            try:
                async with asyncio.timeout(bound):
                    data = await stream.read(1024)
            except (yamux.YamuxError, ConnectionError) as exc:
                ended = type(exc)
            except TimeoutError:
                pytest.fail(
                    f"our read still hangs {bound} s after our Go Away to the {family} "
                    f"peer (wire: {tap})"
                )
            else:
                assert data == b"", f"HOLD read returned {data!r}"
                ended = EOFError
            print(f"{family}: read ended with {ended.__name__}; session {session.close_reason!r}")
            if family == "js":  # the socket stays open: our Go Away watch reset the stream
                assert ended is yamux.StreamResetError, f"read ended with {ended.__name__}"
                assert tap.recv.go_away == 0, "JS answered with a Go Away of its own"
            else:  # py-libp2p closed the connection
                async with asyncio.timeout(bound):
                    await session.wait_closed()
        finally:
            await asyncio.to_thread(peer.close)


# --------------------------------------------------------------------------- harness


def test_families_registry() -> None:
    """Every family can say whether it is installed, and unknown names are an error."""
    with pytest.raises(ValueError, match="unknown yamux family"):
        families.family("rust")
    for name in ("go", *FAMILY_NAMES):
        fam = families.family(name)
        with contextlib.suppress(harness.HarnessError):
            reason = fam.unavailable_reason()
            assert reason is None or isinstance(reason, str)
