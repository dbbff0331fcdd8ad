"""Registration v2 over real sockets, in process: challenge, proof, replay, ports, addresses.

The relay and the registering side are this process; public clients are real
TCP connections (from 127.0.0.5, so their address is recognisable). What the
relay allocates is read from /proc (the listening sockets of this process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from registration_support import PUBLIC_CLIENT, listening_ports

import relay
from relay.errors import RegistrationError, RelayRefusedError
from relay.server.auth import AuthConfigError, load_auth_file, parse_auth_clients
from relay.server.failures import FailureLimiter
from relay.server.relay import RelayServer
from relay.wire.v2 import (
    AuthenticationError,
    HandshakeError,
    is_challenge,
    parse_challenge,
    response_line,
)
from relay_support import free_port_block

HOST = "127.0.0.1"
SECRET = "correct horse battery staple"


async def echo_handler(reader, writer) -> None:  # type: ignore[no-untyped-def]
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def whoami_handler(reader, writer) -> None:  # type: ignore[no-untyped-def]
    host, port = writer.get_extra_info("peername")[:2]
    writer.write(f"{host} {port}\n".encode())
    await writer.drain()


async def raw_greeting(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw TCP client on the control port and the first line the relay sends."""
    reader, writer = await asyncio.open_connection(HOST, port)
    line = await asyncio.wait_for(reader.readline(), 5)
    return reader, writer, line


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def roundtrip(port: int, payload: bytes = b"hello through v2\n") -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(PUBLIC_CLIENT, 0))
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    await close_writer(writer)
    return data


# ------------------------------------------------------------------ the exchange


async def test_seed_client_gets_a_clear_error_and_nothing_is_allocated() -> None:
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        before = listening_ports(os.getpid())
        _reader, writer, line = await raw_greeting(server.port)
        assert line.startswith(b"error: v2 needed")
        assert b"nonce=" in line
        assert not line[:1].isdigit()
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []
        # A seed client sends nothing; at the handshake timeout it is dropped, still nothing.
        await close_writer(writer)
        assert listening_ports(os.getpid()) == before


async def test_right_secret_registers_and_carries_traffic() -> None:
    async with (
        RelayServer(0, bind=HOST, secret=SECRET) as server,
        await relay.start_server(
            echo_handler, HOST, server.port, secret=SECRET, name="web"
        ) as served,
    ):
        assert served.public_port in listening_ports(os.getpid())
        assert await roundtrip(served.public_port) == b"hello through v2\n"
        assert [s.client for s in server.sessions] == ["web"]


async def test_wrong_or_missing_secret_is_refused_before_allocation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        before = listening_ports(os.getpid())
        with pytest.raises(AuthenticationError, match="refused our secret: auth failed: wrong"):
            await relay.start_server(
                echo_handler, HOST, server.port, secret="not the relay's secret, 2"
            )
        with pytest.raises(AuthenticationError, match="requires a secret and none"):
            await relay.start_server(echo_handler, HOST, server.port)
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []
    assert "refusing registration from 127.0.0.1" in caplog.text
    assert "auth failed: wrong secret" in caplog.text


async def test_replayed_response_is_refused_and_allocates_nothing() -> None:
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        # A genuine exchange, recorded on the wire.
        reader, writer, challenge_line = await raw_greeting(server.port)
        challenge = parse_challenge(challenge_line.rstrip(b"\n"))
        recorded = response_line(challenge, secret=SECRET.encode(), name="web", port=None)
        writer.write(recorded)
        port_line = await asyncio.wait_for(reader.readline(), 5)
        assert port_line.rstrip(b"\n").isdigit()
        assert len(server.sessions) == 1
        await close_writer(writer)
        await asyncio.sleep(0.1)
        before = listening_ports(os.getpid())
        sessions = len(server.sessions)
        # The attacker replays the recorded response on a new connection.
        reader, writer, second = await raw_greeting(server.port)
        assert parse_challenge(second.rstrip(b"\n")).nonce != challenge.nonce
        writer.write(recorded)
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer == b"error: auth failed: wrong secret; refusal=permanent\n"
        assert await reader.read() == b""
        await close_writer(writer)
        assert listening_ports(os.getpid()) == before
        assert len(server.sessions) <= sessions


async def test_altered_response_is_refused() -> None:
    """The proof covers the options: a port or name changed in flight breaks it."""
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        reader, writer, line = await raw_greeting(server.port)
        challenge = parse_challenge(line.rstrip(b"\n"))
        genuine = response_line(challenge, secret=SECRET.encode(), name="web")
        writer.write(genuine.replace(b"name=web", b"name=evil"))
        assert (
            await asyncio.wait_for(reader.readline(), 5)
            == b"error: auth failed: wrong secret; refusal=permanent\n"
        )
        await close_writer(writer)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            b"relay/3 proof=" + b"0" * 64 + b"\n",
            b"error: bad response: expected a response starting",
        ),
        (b"relay/2 colour=blue proof=" + b"0" * 64 + b"\n", b"error: bad response: unknown option"),
        (b"relay/2 port=70000 proof=" + b"0" * 64 + b"\n", b"error: bad response: port='70000'"),
        (b"relay/2 port=1 port=2\n", b"error: bad response: field 'port' twice"),
        (b"relay/2 name=web\n", b"error: auth failed: this relay requires a secret"),
        (b"x" * 2000, b"error: bad response: response line longer than 1023 bytes"),
        (
            b"relay/2 service=web proof=" + b"0" * 64 + b"\n",
            b"error: bad response: service= needs name=",
        ),
        (
            b"relay/2 name=a service=a/b proof=" + b"0" * 64 + b"\n",
            b"error: bad response: service= must be 1-64 of",
        ),
    ],
    ids=[
        "version",
        "unknown-key",
        "bad-port",
        "duplicate",
        "no-proof",
        "too-long",
        "service-without-name",
        "bad-service",
    ],
)
async def test_malformed_responses_get_a_reason(response: bytes, reason: bytes) -> None:
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        reader, writer, _ = await raw_greeting(server.port)
        writer.write(response)
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer.startswith(reason), answer
        assert server.sessions == []
        await close_writer(writer)


async def test_silent_client_is_dropped_at_the_answer_timeout() -> None:
    async with RelayServer(0, bind=HOST, secret=SECRET, answer_timeout=0.3) as server:
        reader, writer, _ = await raw_greeting(server.port)
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer == b"error: no answer to the challenge within 0.3 s; refusal=retry\n"
        await close_writer(writer)


async def test_failures_are_rate_limited_per_source(caplog: pytest.LogCaptureFixture) -> None:
    limiter = FailureLimiter(limit=3, window=30)
    async with RelayServer(0, bind=HOST, secret=SECRET, auth_failures=limiter) as server:
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await relay.start_server(
                    echo_handler, HOST, server.port, secret="a wrong secret, but strong"
                )
        # Blocked now, even with the right secret: refused at once, no nonce spent.
        _reader, writer, line = await raw_greeting(server.port)
        assert line.startswith(b"error: too many failed registrations from 127.0.0.1; retry in")
        assert re.search(rb"; refusal=retry retry-after=(29|30)\n$", line), line
        await close_writer(writer)
        with pytest.raises(RelayRefusedError, match="too many failed"):
            await relay.start_server(echo_handler, HOST, server.port, secret=SECRET)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(r.name for r in warnings) == ["relay.registration"] * 3 + ["relay.server"]
    assert any("refusing it for a while" in r.getMessage() for r in warnings)


async def test_v2_without_auth_and_the_seed_default() -> None:
    async with RelayServer(0, bind=HOST, protocol="v2") as server:
        _reader, writer, line = await raw_greeting(server.port)
        assert is_challenge(line.rstrip(b"\n"))
        assert b"auth=none" in line
        await close_writer(writer)
        async with await relay.start_server(echo_handler, HOST, server.port, name="anon") as served:
            assert await roundtrip(served.public_port) == b"hello through v2\n"
    async with RelayServer(0, bind=HOST) as seed:
        _reader, writer, line = await raw_greeting(seed.port)
        assert line.rstrip(b"\n").isdigit()  # the seed protocol, byte for byte
        await close_writer(writer)


async def test_v2_client_options_on_a_seed_relay_warn(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        RelayServer(0, bind=HOST) as server,
        await relay.start_server(echo_handler, HOST, server.port, secret=SECRET) as served,
    ):
        assert await roundtrip(served.public_port) == b"hello through v2\n"
        assert served.client_address is False
    assert "the relay speaks the seed protocol" in caplog.text
    assert "a secret not used" in caplog.text


async def test_require_v2_refuses_a_seed_relay_and_registers_with_a_v2_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The opt-in against a downgrade: a port line first is an error, not seed mode."""
    async with RelayServer(0, bind=HOST) as seed:
        before = listening_ports(os.getpid())
        for options in ({"secret": SECRET}, {}):
            with pytest.raises(
                relay.SeedRelayError, match=r"did not offer registration v2 \(it sent a port line"
            ):
                await relay.start_server(echo_handler, HOST, seed.port, require_v2=True, **options)
        # The seed relay had opened a port for each; it closes them when we hang up.
        for _ in range(100):
            if not seed.sessions and listening_ports(os.getpid()) == before:
                break
            await asyncio.sleep(0.05)
        assert seed.sessions == []
        assert listening_ports(os.getpid()) == before
    assert "the relay speaks the seed protocol" not in caplog.text  # refused, not fallen back
    for relay_options in ({"secret": SECRET}, {"protocol": "v2"}):
        async with (
            RelayServer(0, bind=HOST, **relay_options) as server,
            await relay.start_server(
                echo_handler, HOST, server.port, require_v2=True, secret=relay_options.get("secret")
            ) as served,
        ):
            assert await roundtrip(served.public_port) == b"hello through v2\n"


# ------------------------------------------------------------------ public ports


async def test_requested_port_inside_the_range_and_refusals() -> None:
    low, _ = free_port_block(5)
    async with RelayServer(0, bind=HOST, secret=SECRET, port_range=(low, low + 4)) as server:
        async with await relay.start_server(
            echo_handler, HOST, server.port, secret=SECRET, remote_port=low + 3
        ) as served:
            assert served.public_port == low + 3
            with pytest.raises(RelayRefusedError, match=f"port {low + 3} is in use"):
                await relay.start_server(
                    echo_handler, HOST, server.port, secret=SECRET, remote_port=low + 3
                )
        with pytest.raises(RelayRefusedError, match="outside the relay's port range"):
            await relay.start_server(
                echo_handler, HOST, server.port, secret=SECRET, remote_port=low + 10
            )


async def test_auth_file_clients_and_their_ports(tmp_path: Path) -> None:
    low, _ = free_port_block(2)
    auth_file = tmp_path / "auth.toml"
    (tmp_path / "bob.secret").write_text("bob's own secret, strong enough\n")
    auth_file.write_text(f"""
[clients.alice]
secret = "alice's secret, strong enough"
ports = "{low}-{low + 1}"

[clients.bob]
secret_file = "bob.secret"
""")
    clients = load_auth_file(auth_file)
    assert set(clients) == {"alice", "bob"}
    async with RelayServer(0, bind=HOST, auth_clients=clients) as server:
        async with await relay.start_server(
            echo_handler, HOST, server.port, name="alice", secret="alice's secret, strong enough"
        ) as alice:
            assert alice.public_port in (low, low + 1)
            assert [s.client for s in server.sessions] == ["alice"]
            with pytest.raises(
                RelayRefusedError, match=f"port {low + 5} is not allowed for client alice"
            ):
                await relay.start_server(
                    echo_handler,
                    HOST,
                    server.port,
                    name="alice",
                    secret="alice's secret, strong enough",
                    remote_port=low + 5,
                )
        async with await relay.start_server(
            echo_handler, HOST, server.port, name="bob", secret="bob's own secret, strong enough"
        ) as bob:
            assert await roundtrip(bob.public_port) == b"hello through v2\n"
        # One client's secret does not open another's name; unknown names look the same.
        for name, secret in (
            ("alice", "bob's own secret, strong enough"),
            ("mallory", "alice's secret, strong enough"),
        ):
            with pytest.raises(AuthenticationError, match="unknown client or wrong secret"):
                await relay.start_server(echo_handler, HOST, server.port, name=name, secret=secret)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "expected [clients.NAME] tables"),
        ({"a": {"secret": "passwordpassword"}}, "clients.a.secret: too weak: about 42 bits"),
        ({"a": {"secret": "a long enough secret", "ports": "9-1"}}, "LOW <= HIGH"),
        ({"a": {"secret": "a long enough secret", "port": 5}}, "unknown key(s) port"),
        ({"a b": {"secret": "a long enough secret"}}, "a name is"),
        ({"a": {}}, "exactly one of secret or secret_file"),
    ],
)
def test_auth_table_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(AuthConfigError) as info:
        parse_auth_clients(table)
    assert message in str(info.value)


# ------------------------------------------------------------------ client address


async def test_handler_sees_the_public_client_address() -> None:
    async with (
        RelayServer(0, bind=HOST, protocol="v2") as server,
        await relay.start_server(whoami_handler, HOST, server.port) as served,
    ):
        assert served.client_address is True
        reader, writer = await asyncio.open_connection(
            HOST, served.public_port, local_addr=(PUBLIC_CLIENT, 0)
        )
        source_port = writer.get_extra_info("sockname")[1]
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line == f"{PUBLIC_CLIENT} {source_port}\n".encode()
        await close_writer(writer)


async def test_without_client_address_streams_carry_only_client_bytes() -> None:
    async with (
        RelayServer(0, bind=HOST, protocol="v2") as server,
        await relay.start_server(echo_handler, HOST, server.port, client_address=False) as served,
    ):
        assert served.client_address is False
        assert await roundtrip(served.public_port) == b"hello through v2\n"


def test_challenge_is_never_a_port_line_and_is_versioned() -> None:
    from relay.wire.greeting import parse_greeting
    from relay.wire.v2 import Challenge

    line = Challenge.fresh(auth_required=True).line()
    assert line.endswith(b"\n")
    assert len(line) < 1024
    with pytest.raises(RelayRefusedError, match="v2 needed"):
        parse_greeting(line.rstrip(b"\n"))  # what a seed client of ours shows
    assert line[:16] == b"error: v2 needed"  # all the Go seed forwarder prints
    future = line.replace(b"relay/2", b"relay/3").replace(b" auth=", b" accept=3 auth=")
    with pytest.raises(HandshakeError, match="requires registration version 3"):
        parse_challenge(future.rstrip(b"\n"))


def test_registration_error_hierarchy() -> None:
    assert issubclass(AuthenticationError, RelayRefusedError)
    assert issubclass(RelayRefusedError, RegistrationError)


def test_the_worked_example_in_the_protocol_document() -> None:
    """docs/protocol.md's example is what the code computes (an implementer checks against it)."""
    import re
    from pathlib import Path

    from relay.wire.v2 import Challenge

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    nonce = re.search(r"nonce=([0-9a-f]{64}) auth=required", doc)
    assert nonce is not None
    challenge = Challenge(nonce=nonce.group(1).encode(), auth_required=True)
    assert challenge.line().decode() in doc
    secret = b"correct horse battery staple"
    full = response_line(challenge, secret=secret, name="alice", port=5000, client_addr=True)
    bare = response_line(challenge, secret=secret)
    assert f"\n{full.decode()}" in doc
    assert f"`{bare.decode().strip()}`" in doc


@pytest.mark.parametrize(
    ("host", "secret", "warned"),
    [
        (None, None, True),
        ("0.0.0.0", None, True),
        (HOST, None, False),
        (None, SECRET, False),
    ],
)
async def test_warning_when_open_beyond_loopback_without_auth(
    host: str | None, secret: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with RelayServer(0, bind=host, secret=secret):
        pass
    assert ("without authentication: anyone who can reach port" in caplog.text) is warned


def test_auth_clients_as_a_list_of_named_tables() -> None:
    clients = parse_auth_clients(
        [
            {"name": "alice", "secret": "alice's secret, strong enough", "ports": 5000},
            {"name": "bob", "secret": "bob's secret, strong enough"},
        ]
    )
    assert sorted(clients) == ["alice", "bob"]
    assert 5000 in clients["alice"].ports  # type: ignore[operator]
    assert "alice's secret, strong enough" not in repr(clients["alice"])
    with pytest.raises(AuthConfigError, match="listed twice"):
        parse_auth_clients([{"name": "a", "secret": "12345678"}, {"name": "a", "secret": "x"}])


async def test_closing_the_relay_drops_pending_challenges() -> None:
    server = RelayServer(0, bind=HOST, secret=SECRET)
    await server.start()
    reader, writer, line = await raw_greeting(server.port)
    assert is_challenge(line.rstrip(b"\n"))
    server.close()
    await server.wait_closed()
    answer = await asyncio.wait_for(reader.read(), 5)
    await close_writer(writer)
    assert answer == b"error: relay is shutting down; refusal=retry\n"


NAMES = st.from_regex(r"[A-Za-z0-9._@-]{1,64}", fullmatch=True)


@given(
    name=st.none() | NAMES,
    service=st.none() | NAMES,
    port=st.none() | st.integers(1, 65535),
    client_addr=st.booleans(),
    secret=st.binary(min_size=8, max_size=64),
)
def test_response_roundtrip(
    name: str | None, service: str | None, port: int | None, client_addr: bool, secret: bytes
) -> None:
    from relay.wire.v2 import Challenge, parse_response, proof_matches

    challenge = Challenge.fresh(auth_required=True)
    service = service if name is not None else None
    line = response_line(
        challenge, secret=secret, name=name, service=service, port=port, client_addr=client_addr
    )
    response = parse_response(line.rstrip(b"\n"), challenge)
    assert (response.name, response.service, response.port, response.client_addr) == (
        name,
        service,
        port,
        client_addr,
    )
    assert proof_matches(secret, challenge.nonce, response)
    assert not proof_matches(secret + b"x", challenge.nonce, response)
    assert not proof_matches(secret, Challenge.fresh(True).nonce, response)


@given(st.binary(max_size=300))
def test_any_response_bytes_are_refused_with_a_reason_or_parsed(line: bytes) -> None:
    from relay.wire.v2 import Challenge, parse_response

    """Hostile bytes end in HandshakeError with a reason (sent back), never another error."""
    reasons = []
    try:
        parse_response(line, Challenge.fresh(auth_required=True))
    except HandshakeError as exc:
        reasons.append(str(exc))
    assert all(reasons)


async def test_refusals_cannot_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """30 wrong proofs (the source never blocked here) write a bounded number of lines."""
    limiter = FailureLimiter(limit=1000, window=60)
    async with RelayServer(0, bind=HOST, secret=SECRET, auth_failures=limiter) as server:
        for _ in range(30):
            reader, writer, line = await raw_greeting(server.port)
            challenge = parse_challenge(line.rstrip(b"\n"))
            writer.write(response_line(challenge, secret=b"wrong secret!"))
            assert (
                await reader.readline() == b"error: auth failed: wrong secret; refusal=permanent\n"
            )
            await close_writer(writer)
    refusals = [r for r in caplog.records if r.getMessage().startswith("refusing registration")]
    assert 5 <= len(refusals) <= 7
    summary = [m for m in caplog.messages if "suppressed log messages" in m]
    assert summary
    assert "x auth" in summary[0]


async def test_unanswered_challenges_are_limited_per_source() -> None:
    """At the source's share, a newcomer takes the place of the source's oldest challenge:
    holding places does not keep a neighbour behind the same address out."""
    async with RelayServer(
        0, bind=HOST, secret=SECRET, max_pending_registrations_per_source=2
    ) as server:
        held = [await raw_greeting(server.port) for _ in range(2)]
        assert all(is_challenge(line.rstrip(b"\n")) for _, _, line in held)
        _reader, writer, line = await raw_greeting(server.port)
        assert is_challenge(line.rstrip(b"\n"))
        oldest = await asyncio.wait_for(held[0][0].readline(), 5)
        assert oldest.startswith(b"error: 127.0.0.1 started more registrations than ")
        assert oldest.endswith(b"this, its oldest, gave way; refusal=retry\n")
        assert server.admission.places.held(HOST) == 2
        # Another source is not affected; a client of the first gets in the same way.
        other_reader, other = await asyncio.open_connection(
            HOST, server.port, local_addr=("127.0.0.2", 0)
        )
        assert is_challenge((await other_reader.readline()).rstrip(b"\n"))
        await close_writer(other)
        async with await relay.start_server(
            echo_handler, HOST, server.port, secret=SECRET
        ) as served:
            assert await roundtrip(served.public_port) == b"hello through v2\n"
        assert await asyncio.wait_for(held[1][0].readline(), 5) != b""
        for _, held_writer, _ in held:
            await close_writer(held_writer)
        await close_writer(writer)
        assert server.stats.refused["evicted"] == 2


async def test_a_registration_refused_while_draining_gives_its_slot_back() -> None:
    """A proof checked after the drain began is refused, and the slot its source took on
    arrival is free again: the relay holds nothing for it."""
    async with RelayServer(0, bind=HOST, secret=SECRET) as server:
        reader, writer, line = await raw_greeting(server.port)
        assert server.admission.places.held(HOST) == 1
        server.drain()
        writer.write(response_line(parse_challenge(line.rstrip(b"\n")), secret=SECRET.encode()))
        assert await reader.readline() == b"error: relay is shutting down; refusal=retry\n"
        assert server.admission.places.held(HOST) == 0
        assert server.stats.refused["draining"] == 1
        await close_writer(writer)


async def test_one_place_from_arrival_until_the_ping_is_answered() -> None:
    """The place is held across both phases (challenge, then yamux ping) and freed after;
    once the proof is checked, no newcomer takes it."""
    async with RelayServer(
        0, bind=HOST, secret=SECRET, max_pending_registrations_per_source=1
    ) as server:
        async with await relay.start_server(
            echo_handler, HOST, server.port, secret=SECRET
        ) as first:
            await asyncio.sleep(0.2)  # the relay's ping is answered: the place is free again
            assert server.admission.places.held(HOST) == 0
            async with await relay.start_server(
                echo_handler, HOST, server.port, secret=SECRET
            ) as second:
                assert first.public_port != second.public_port
        reader, writer, line = await raw_greeting(server.port)
        assert server.admission.places.held(HOST) == 1
        writer.write(response_line(parse_challenge(line.rstrip(b"\n")), secret=SECRET.encode()))
        port_line = await asyncio.wait_for(reader.readline(), 5)
        assert port_line.rstrip(b"\n").isdigit()  # checked; the handshake ping is never answered
        with pytest.raises(RelayRefusedError, match="still in their handshake"):
            await relay.start_server(echo_handler, HOST, server.port, secret=SECRET)
        await close_writer(writer)


def test_every_v2_error_is_a_relay_error() -> None:
    from relay.client.register import TLSError
    from relay.errors import RelayError
    from relay.server.auth import AuthRefused
    from relay.wire.proxy_header import ProxyHeaderError
    from relay.wire.tls import TLSConfigError

    for error in (
        AuthenticationError,
        HandshakeError,
        AuthRefused,
        TLSError,
        AuthConfigError,
        TLSConfigError,
        ProxyHeaderError,
    ):
        assert issubclass(error, RelayError), error
    assert issubclass(AuthConfigError, ValueError)  # a bad secret or auth file, not a refusal
    assert not issubclass(AuthConfigError, RegistrationError)


def test_service_is_refused_when_the_relay_did_not_offer_it() -> None:
    from relay.wire.v2 import Challenge, parse_response

    older = Challenge(
        Challenge.fresh(auth_required=False).nonce,
        auth_required=False,
        features=frozenset({"client-addr"}),
    )
    with pytest.raises(HandshakeError, match="service was not offered"):
        parse_response(b"relay/2 name=alice service=redis", older)


async def test_client_leaves_service_out_when_the_relay_does_not_offer_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A relay whose challenge lists no ``service`` feature (an older v2 relay) gets no
    ``service=``: the client registers, sharing its client's identity, and says so."""
    responses: list[bytes] = []

    async def older_relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"error: v2 needed: upgrade; relay/2 nonce="
            + b"ab" * 32
            + b" auth=none features=client-addr\n"
        )
        responses.append(await reader.readline())
        writer.write(b"error: enough\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(older_relay, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RelayRefusedError, match="enough"):
            await relay.register(HOST, port, client_name="alice", name="redis")
    finally:
        server.close()
        await server.wait_closed()
    assert responses == [b"relay/2 name=alice\n"]
    assert "does not offer per-service identities" in caplog.text
