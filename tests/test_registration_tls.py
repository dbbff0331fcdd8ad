"""TLS on the control connection, with real certificates made by openssl at test time.

Every test runs on asyncio's own loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import PUBLIC_CLIENT, Certificates, listening_ports, make_certificates

import relay
from relay.client.register import TLSError
from relay.errors import RegistrationError, RelayRefusedError
from relay.server.relay import RelayServer
from relay.server.tls_listener import PLAINTEXT_HINT
from relay.wire.tls import TLSConfigError, client_context, server_context

HOST = "127.0.0.1"
OTHER = "127.0.0.2"
SECRET = "tls and a secret together"


BOTH_LOOPS = True
"""Every test runs on asyncio's own loop and on uvloop (``conftest``)."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    require_program("openssl")
    return make_certificates(tmp_path_factory.mktemp("certs"))


async def echo_handler(reader, writer) -> None:  # type: ignore[no-untyped-def]
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def roundtrip(port: int, payload: bytes = b"over TLS\n") -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(PUBLIC_CLIENT, 0))
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_verified_tls_with_a_secret_carries_traffic(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with (
        RelayServer(0, bind=HOST, secret=SECRET, ssl=tls) as server,
        await relay.start_server(
            echo_handler, HOST, server.port, secret=SECRET, ssl=client_context(certs.ca)
        ) as served,
    ):
        ssl_object = served.session.get_extra_info("ssl_object")
        assert ssl_object is not None
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert ssl_object.getpeercert()["subject"] == ((("commonName", "server"),),)
        # The public port stays plain TCP.
        assert await roundtrip(served.public_port) == b"over TLS\n"


async def test_wrong_ca_fails_clearly(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(0, bind=HOST, ssl=tls) as server:
        before = listening_ports(os.getpid())
        with pytest.raises(
            TLSError,
            match=r"certificate was not accepted: .*unable to get local "
            r"issuer certificate",
        ):
            await relay.start_server(
                echo_handler, HOST, server.port, ssl=client_context(certs.other_ca)
            )
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []


async def test_wrong_host_name_fails_clearly(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(0, bind=HOST, ssl=tls) as server:
        with pytest.raises(TLSError, match=r"not accepted: Hostname mismatch.*relay.example"):
            await relay.start_server(
                echo_handler,
                HOST,
                server.port,
                ssl=client_context(certs.ca),
                server_hostname="relay.example",
            )


async def test_plaintext_client_gets_nothing_useful(
    certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(
        0, bind=HOST, secret=SECRET, ssl=tls, tls_handshake_timeout=0.5
    ) as server:
        before = listening_ports(os.getpid())
        # A seed client waits for a port line; a confused one sends a v2 response; a TLS
        # client starts its ClientHello and stalls.
        for opening in (b"", b"relay/2 name=x\n", b"\x16\x03\x01"):
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(opening)
            data = await asyncio.wait_for(reader.read(), 5)
            assert b"nonce=" not in data
            assert not data[:1].isdigit()
            if not opening:  # told, in the refusal line a seed client reads, to use TLS
                assert data.startswith(b"error: this relay's control port speaks TLS")
            else:
                assert data == b""  # not TLS, or no complete handshake: nothing sent
            writer.close()
            await writer.wait_closed()
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []
        assert "sent nothing on the TLS control port" in caplog.text
        assert "failed: no complete TLS handshake within 0.5 s" in caplog.text
        assert "failed: not TLS" in caplog.text
        # Our own client without TLS: a clear failure that names the fix, not a hang.
        with pytest.raises(
            RelayRefusedError, match=r"speaks TLS: connect with TLS \(relay forward --tls"
        ):
            await relay.start_server(
                echo_handler, HOST, server.port, secret=SECRET, connect_timeout=5
            )


async def test_tls_client_against_a_plaintext_relay(certs: Certificates) -> None:
    async with RelayServer(0, bind=HOST) as server:
        with pytest.raises(TLSError, match="does the relay speak TLS"):
            await relay.start_server(echo_handler, HOST, server.port, ssl=client_context(certs.ca))


async def test_mutual_tls(certs: Certificates, caplog: pytest.LogCaptureFixture) -> None:
    tls = server_context(certs.server_cert, certs.server_key, client_ca=certs.ca)
    async with RelayServer(0, bind=HOST, ssl=tls) as server:
        with pytest.raises(RegistrationError, match=r"requires? a client certificate"):
            await relay.start_server(
                echo_handler, HOST, server.port, ssl=client_context(certs.ca), connect_timeout=5
            )
        assert server.sessions == []
        assert "no acceptable client certificate" in caplog.text
        with_cert = client_context(certs.ca, certs.client_cert, certs.client_key)
        async with await relay.start_server(
            echo_handler, HOST, server.port, ssl=with_cert
        ) as served:
            assert await roundtrip(served.public_port) == b"over TLS\n"


@pytest.mark.parametrize("secret", [None, SECRET], ids=["seed", "v2"])
async def test_unfinished_tls_handshakes_count_per_source(
    certs: Certificates, secret: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections that never send a ClientHello hold a place of their source from accept
    on: beyond the source's share a newer one takes the place of the oldest, another
    address still registers, and the places come back at the handshake timeout."""
    limit, timeout = 4, 1.5
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(
        0,
        bind=HOST,
        ssl=tls,
        secret=secret,
        tls_handshake_timeout=timeout,
        max_pending_registrations_per_source=limit,
    ) as server:
        silent = [await asyncio.open_connection(HOST, server.port) for _ in range(3 * limit)]
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            ends = await asyncio.gather(*(closed_within(reader, 0.5) for reader, _ in silent))
            assert ends == [True] * (2 * limit) + [False] * limit
            assert server.admission.places.held(HOST) == limit
            assert "dropping a registration in progress from 127.0.0.1" in caplog.text

            with_tls = client_context(certs.ca)
            async with await relay.start_server(
                echo_handler, HOST, server.port, secret=secret, ssl=with_tls, local_addr=(OTHER, 0)
            ) as served:
                assert await roundtrip(served.public_port) == b"over TLS\n"

            # The relay drops the silent ones at the handshake timeout, and their places
            # come back: the first source registers again.
            assert all(
                await asyncio.gather(
                    *(closed_within(reader, timeout + 2) for reader, _ in silent[-limit:])
                )
            )
            assert loop.time() - started >= timeout - 0.1
            assert server.admission.places.held(HOST) == 0
            assert "sent nothing on the TLS control port" in caplog.text
            async with await relay.start_server(
                echo_handler, HOST, server.port, secret=secret, ssl=with_tls
            ) as served:
                assert await roundtrip(served.public_port) == b"over TLS\n"
        finally:
            for _, writer in silent:
                writer.close()


@pytest.mark.parametrize("limit", ["max_pending", "max_tls_handshakes"])
async def test_unfinished_tls_handshakes_count_in_the_relay_total(
    certs: Certificates, limit: str
) -> None:
    """The relay-wide limits count TLS handshakes: when they are full, a source that holds
    as many as the one holding the most is closed at once, while one that holds fewer
    (another address, even of the same /24) takes the oldest place."""
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(
        0, bind=HOST, ssl=tls, max_pending_registrations_per_source=0, **{limit: 3}
    ) as server:
        silent = []  # not quite: each has begun its ClientHello
        for _ in range(5):
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(CLIENT_HELLO_START)
            silent.append((reader, writer))
            await asyncio.sleep(0.05)
        try:
            ends = await asyncio.gather(*(closed_within(reader, 0.5) for reader, _ in silent))
            assert ends == [False] * 3 + [True] * 2
            with pytest.raises(TLSError, match="closed the connection during the TLS handshake"):
                await relay.start_server(
                    echo_handler, HOST, server.port, connect_timeout=5, ssl=client_context(certs.ca)
                )
            async with await relay.start_server(
                echo_handler, HOST, server.port, ssl=client_context(certs.ca), local_addr=(OTHER, 0)
            ) as served:
                assert await roundtrip(served.public_port) == b"over TLS\n"
                assert await closed_within(silent[0][0], 1)  # the oldest gave way
                assert not await closed_within(silent[1][0], 0.1)
        finally:
            for _, writer in silent:
                writer.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Did the relay close this connection (EOF or reset) within ``seconds``, sending nothing
    but, to a client that stayed silent, the line that tells it to use TLS?"""
    try:
        data = await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    assert data in (b"", PLAINTEXT_HINT)
    return True


def test_unusable_files_are_named(tmp_path: Path, certs: Certificates) -> None:
    with pytest.raises(TLSConfigError, match="no such file"):
        server_context(tmp_path / "missing.pem", certs.server_key)
    with pytest.raises(TLSConfigError, match="cannot load the CA"):
        client_context(certs.server_key)  # a key is not a CA certificate
    with pytest.raises(TLSConfigError, match="needs its certificate"):
        client_context(certs.ca, key=certs.client_key)


def test_system_ca_context_verifies() -> None:
    context = client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
"""A TLS record that announces a 512-byte ClientHello, and only its first bytes."""


async def test_silent_connections_hold_no_tls_handshake_place(certs: Certificates) -> None:
    """Before its ClientHello begins a connection costs no TLS state, so it does not count
    among --max-tls-handshakes (only among all registrations in progress)."""
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(0, bind=HOST, ssl=tls, max_tls_handshakes=1) as server:
        silent = [await asyncio.open_connection(HOST, server.port) for _ in range(3)]
        try:
            ends = await asyncio.gather(*(closed_within(reader, 0.3) for reader, _ in silent))
            assert ends == [False] * 3
            assert server.admission.places.held(HOST) == 3
            assert len(server.admission.handshakes) == 0
            async with await relay.start_server(
                echo_handler, HOST, server.port, ssl=client_context(certs.ca)
            ) as served:
                assert await roundtrip(served.public_port) == b"over TLS\n"
        finally:
            for _, writer in silent:
                writer.close()
