"""Issue #8's attacks against a real relay process, on uvloop and on asyncio's loop.

Each test starts ``relay --event-loop LOOP`` as a subprocess, attacks it over
real sockets on 127.0.0.0/8 for a few seconds (``bench/abuse.py`` holds the
attacks and runs them longer), and asserts the bound: the relay's RSS growth
(sampled from /proc/PID/status every 20 ms while the attack runs), its log
lines, or who gets served. Run alone with ``pytest -m abuse``.
"""

from __future__ import annotations

import pytest
from conftest import require_program

from bench import abuse
from interop import families

pytestmark = pytest.mark.abuse

MIB = 1024 * 1024
MAX_GROWTH = 64 * MIB
"""Issue #8: relay RSS growth under 64 MiB, whatever the attacker sends."""
MAX_LOG_LINES = 100
"""Issue #8: under 100 log lines per hostile session for 100k bad frames."""
ATTACK_SECONDS = 3.0
LOOPS = pytest.mark.parametrize("loop", abuse.LOOPS)


def describe(out: abuse.Outcome) -> str:
    return (
        f"{out.attack} on {out.loop}: RSS {out.rss_before / MIB:.1f} -> "
        f"{out.rss_peak / MIB:.1f} MiB, {out.log_lines} log lines, {out.notes}"
    )


@LOOPS
def test_client_sending_while_its_stream_waits_for_the_backlog(loop: str) -> None:
    """Issue #8 item 1: the registered side never ACKs; a public client sends flat out."""
    out = abuse.run("slow-ack-sender", loop, ATTACK_SECONDS)
    assert out.growth < MAX_GROWTH, describe(out)
    # The client is held back: the relay read at most one window, the kernel took the rest.
    assert out.notes["sent_mib"] < 64, describe(out)


@LOOPS
def test_hundred_clients_pushing_into_a_service_that_does_not_read(loop: str) -> None:
    """Issue #8 item 1: 100 public clients, a real forwarder, a service that never reads."""
    out = abuse.run("non-reading-service", loop, ATTACK_SECONDS)
    assert out.notes["sent_mib"] > 10, describe(out)  # the attack did push
    assert out.growth < MAX_GROWTH, describe(out)


@LOOPS
def test_window_update_syn_rst_flood(loop: str) -> None:
    """Issue #8 item 2: 500,000 Window Update SYN|RST frames from the registered side."""
    out = abuse.run("syn-rst", loop, ATTACK_SECONDS)
    assert out.notes["frames"] == 500_000, describe(out)
    assert out.growth < MAX_GROWTH, describe(out)
    assert out.log_lines < MAX_LOG_LINES, describe(out)


@LOOPS
def test_ping_flood_from_a_side_that_never_reads(loop: str) -> None:
    """Issue #8 item 3: pings in, pongs never read: bounded, then the session is cut."""
    out = abuse.run("ping-flood", loop, ATTACK_SECONDS)
    assert out.growth < MAX_GROWTH, describe(out)
    assert out.notes["session"].startswith("cut"), describe(out)


@LOOPS
def test_bad_frames_do_not_write_the_log(loop: str) -> None:
    """Issue #8 item 4: 100k non-fatal bad frames on one session: under 100 log lines."""
    out = abuse.run("bad-frames", loop, 1.0)
    # The session may be cut when the RSTs it is owed overrun the control queue;
    # either way the relay lives on (run() checks) and the log stays short.
    assert out.notes["session_lines"] < MAX_LOG_LINES, describe(out)


@LOOPS
def test_refused_public_connections_do_not_write_the_log(loop: str) -> None:
    """Issue #8 item 4: thousands of refused public connections: a handful of lines."""
    out = abuse.run("refused-connections", loop, 1.0, attempts=2000)
    assert out.notes["attempts"] == 2000, describe(out)
    assert out.notes["session_lines"] < MAX_LOG_LINES, describe(out)


@LOOPS
def test_idle_connections_from_one_address(loop: str) -> None:
    """Issue #8 item 5: 1,000 idle connections from 127.0.0.1 (--max-connections 1000).

    A client from 127.0.0.2 is served at once; the idle ones close at the
    idle timeout (here 3 s), not before, and all of them.
    """
    timeout = ATTACK_SECONDS
    out = abuse.run("idle-flood", loop, timeout)
    assert out.notes["other_client_ok"], describe(out)
    assert out.notes["other_client_s"] < 1.0, describe(out)
    assert out.notes["still_open"] == 0, describe(out)
    assert out.notes["idle_closed"] + out.notes["refused"] == 1000, describe(out)
    first, last = out.notes["closed_after_s"]
    # Timed from our connect() returning; the relay may have accepted a few ms earlier.
    assert first >= timeout - 0.1, describe(out)
    assert last < timeout + 3.0, describe(out)


@LOOPS
def test_silent_tls_connections_from_one_address(loop: str) -> None:
    """2,000 connections to a TLS control port that never send a ClientHello: only the
    source's share (--max-pending-registrations-per-source, 90 of --max-sessions 100) is
    held, the rest closed at once; another address registers over TLS."""
    require_program("openssl")
    out = abuse.run("silent-tls", loop, ATTACK_SECONDS)
    assert out.notes["held"] == 90, describe(out)
    assert out.notes["closed_at_once"] == 1910, describe(out)
    assert out.notes["other_client_ok"], describe(out)
    assert out.growth < MAX_GROWTH, describe(out)


def assert_registers(out: abuse.Outcome, at_least: int) -> None:
    """The legitimate client's tries: at least ``at_least``, >= 90 % in, each within 1 s."""
    tries = out.notes["tries"]
    assert tries >= at_least, describe(out)
    assert out.notes["ok_within_1s"] >= 0.9 * tries, describe(out)


@LOOPS
def test_challenges_held_by_13_addresses_do_not_keep_a_client_out(loop: str) -> None:
    """13 addresses of the client's own /24 hold 80 unanswered challenges each (reset
    before the answer timeout) on a relay of 1,000 places; the client has the secret."""
    out = abuse.run("challenge-slowloris", loop, 6.0)
    assert out.notes["attacker_peak"] >= 1000, describe(out)  # the relay was full
    assert_registers(out, 10)


@LOOPS
def test_stalled_client_hellos_from_12_addresses_do_not_keep_a_client_out(loop: str) -> None:
    """12 addresses hold 90 stalled ClientHellos each; a TLS client gets in."""
    require_program("openssl")
    out = abuse.run("tls-slowloris", loop, 6.0)
    assert out.notes["attacker_peak"] >= 1000, describe(out)
    assert_registers(out, 8)


@LOOPS
def test_guesses_are_checked_five_per_source_and_minute(loop: str) -> None:
    """One address opens 90 challenges, then answers each with a guess, then goes on."""
    out = abuse.run("guess-burst", loop, 2.0)
    assert out.notes["burst_checked"] == 5, describe(out)
    assert out.notes["burst_refused_unchecked"] == 85, describe(out)
    assert out.notes["checked"] == 5, describe(out)


@LOOPS
def test_single_failures_from_others_do_not_unblock_a_source(loop: str) -> None:
    """The failure table holds 300 sources here; 600 others fail once each (the table of
    10,000 is tested in memory: tests/test_admission.py)."""
    out = abuse.run(
        "failure-flush", loop, 1.0, relay_options=("--max-failure-sources", "300"), others=600
    )
    assert out.notes["blocked_before"], describe(out)
    assert out.notes["blocked_after"], describe(out)


@LOOPS
def test_reset_challenges_and_failed_tls_handshakes_count_as_failures(loop: str) -> None:
    require_program("openssl")
    out = abuse.run("unanswered", loop, 1.0)
    assert out.notes["after_resets_registers"] is False, describe(out)
    assert out.notes["after_tls_registers"] is False, describe(out)
    assert out.notes["other_registers"] is True, describe(out)


@LOOPS
def test_a_stale_client_behind_the_same_address_does_not_lock_out_another(loop: str) -> None:
    """bob (stale secret) and anonymous junk from 127.0.0.1; alice from there gets in."""
    out = abuse.run("stale-client", loop, 4.0)
    assert out.notes["bob_tries"] >= 20, describe(out)
    assert out.notes["ok"] == out.notes["tries"] >= 8, describe(out)
    assert out.notes["ok_within_1s"] == out.notes["tries"], describe(out)


@LOOPS
def test_out_of_file_descriptors(loop: str) -> None:
    """A relay under ``ulimit -n 64`` and 300 public clients at once: while its descriptors
    are exhausted it writes a few lines and spins no core; every client is served once the
    first ones leave (none dropped), and a newcomer at once."""
    out = abuse.run("fd-limit", loop, ATTACK_SECONDS)
    assert 10 < out.notes["served_while_held"] < 64, describe(out)
    assert out.notes["log_lines_while_held"] <= 2, describe(out)  # 900,000 before the fix
    # Spinning on accept() costs a core: 1.3 s of 3 on asyncio's loop before the fix.
    assert out.notes["cpu_s_while_held"] < 0.1 * ATTACK_SECONDS, describe(out)
    assert out.notes["served"] == 300, describe(out)
    assert out.notes["newcomer_ok"], describe(out)
    assert out.log_lines < 10, describe(out)


@LOOPS
def test_names_strangers_choose_are_no_metric_labels(loop: str) -> None:
    """An open relay with --metrics: 50 registrations under names their senders chose
    (5 refused: the name is taken). /metrics has one series per session, none duplicated,
    and none of those names as a label value (before: every name was one)."""
    out = abuse.run("metrics-names", loop, 0.5)
    assert out.notes["sessions"] == 45, describe(out)
    assert out.notes["duplicate_series"] == 0, describe(out)
    assert out.notes["service_series"] == 45, describe(out)
    assert out.notes["stranger_label_values"] == 0, describe(out)


@LOOPS
def test_notify_dial_backs_without_the_token_take_no_client(loop: str) -> None:
    """--protocol notify --notify-token: 4 processes on the server's address dial back
    without the token for 2 s while the server serves 200 clients: none is taken (before
    tokens: 84 of 201), and their refusals cost a few log lines (before: one each)."""
    out = abuse.run("notify-thief", loop, 2.0)
    assert out.notes["tokens"], describe(out)
    assert out.notes["thief_attempts"] > 500, describe(out)
    assert out.notes["stolen"] == 0, describe(out)
    assert out.notes["served"] == 201, describe(out)
    assert out.log_lines < 30, describe(out)


CHURN_SECONDS = 20.0


@LOOPS
def test_churn(loop: str) -> None:
    """20 s of churn (``python -m bench.abuse --attack churn`` runs 10 minutes): registered
    sides that register, reset streams, send Go Away or drop; public clients that
    complete, half-close, reset or vanish. Not one ERROR line (before the pipe fix:
    InvalidStateError from relay/pipe.py, then the whole session lost), RSS flat."""
    out = abuse.run("churn", loop, CHURN_SECONDS)
    assert out.notes["public_connections"] > 2000, describe(out)
    assert out.notes["sessions"] > 20, describe(out)
    assert out.notes["error_lines"] == 0, describe(out)
    assert out.notes["rss_growth_after_quarter_mib"] < 16, describe(out)


WEAK_SECRET_ATTEMPTS = 5
"""A relay's --secret, RELAY_SECRET and --secret-file, bob's in an auth file, a forwarder's."""


@LOOPS
def test_weak_secrets_are_refused_with_how_to_make_one(loop: str) -> None:
    """password, passwordpassword and short hex, wherever a secret is given: the process
    exits at once with a usage error that says how to make a secret (before: a relay with
    ``password`` served), without showing it; the forwarder never reaches the relay."""
    out = abuse.run("weak-secret", loop, 0.0)
    assert out.notes["of"] == WEAK_SECRET_ATTEMPTS, describe(out)
    assert out.notes["refused"] == WEAK_SECRET_ATTEMPTS, describe(out)
    assert set(out.notes["exits"].values()) == {2}, describe(out)
    assert out.notes["says_how"] == WEAK_SECRET_ATTEMPTS, describe(out)
    assert out.notes["shows_secret"] == 0, describe(out)
    assert out.notes["relay_lines_from_forwarder"] == 0, describe(out)


@LOOPS
def test_auth_file_edits_revoke_where_they_must(loop: str) -> None:
    """bob removed beside a typo in alice's table: bob is cut and refused for good, alice
    keeps her entry and is served. Not TOML: alice stays, one ERROR however long it stays
    so. Deleted or emptied: alice and bob are cut and refused (before: a removed client
    stayed connected and could register again). Each failed edit shows in /status and
    relay_auth_file_ok."""
    out = abuse.run("auth-file-edit", loop, 2.0)
    notes = out.notes
    assert notes["removed_cut"] == 1, describe(out)
    assert notes["removed_may_register"] == "refused for good", describe(out)
    assert notes["typo_alice_served"], describe(out)
    kept = {"ok": False, "clients": 1, "gauge_ok": 0.0}  # the failed edit shows
    assert notes["typo_state"] == kept, describe(out)
    assert notes["broken_alice_served"], describe(out)
    assert notes["broken_state"] == kept, describe(out)
    assert notes["broken_error_lines"] == 1, describe(out)
    revoked = {"ok": False, "clients": 0, "gauge_ok": 0.0}
    for edit in ("deleted", "emptied"):
        assert notes[f"{edit}_cut"] == 2, describe(out)
        assert notes[f"{edit}_may_register"] == "refused for good", describe(out)
        assert notes[f"{edit}_state"] == revoked, describe(out)


@LOOPS
def test_a_burst_of_a_thousand_js_streams_is_accepted_in_full(loop: str) -> None:
    """A JS libp2p relay opens 1,000 streams in one write at a forwarder whose accept
    backlog is 256: every one is echoed, none reset (before: 364 and 462 of 1,000 reset,
    a log line each)."""
    reason = families.family("js").unavailable_reason()  # raises under CI=true
    if reason is not None:
        pytest.skip(reason)
    out = abuse.run("stream-burst", loop, 0.0)
    assert out.notes["streams"] == 1000, describe(out)
    assert out.notes["echoed"] == 1000, describe(out)
    assert out.notes["reset"] == 0, describe(out)
    assert out.notes["forwarder_refusal_lines"] == 0, describe(out)
