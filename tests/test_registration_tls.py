"""TLS on the control connection, with real certificates made by openssl at test time."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from conftest import require_program
from registration_support import PUBLIC_CLIENT, Certificates, listening_ports, make_certificates

import relay
from relay.api import TLSError
from relay.protocol import RegistrationError
from relay.server import RelayServer
from relay.tls import TLSConfigError, client_context, server_context

HOST = "127.0.0.1"
SECRET = "tls and a secret together"


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
    async with RelayServer(0, host=HOST, secret=SECRET, ssl=tls) as server, \
            await relay.start_server(echo_handler, HOST, server.port, secret=SECRET,
                                     ssl=client_context(certs.ca)) as served:
        ssl_object = served.session.get_extra_info("ssl_object")
        assert ssl_object is not None
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert ssl_object.getpeercert()["subject"] == ((("commonName", "server"),),)
        # The public port stays plain TCP.
        assert await roundtrip(served.public_port) == b"over TLS\n"


async def test_wrong_ca_fails_clearly(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(0, host=HOST, ssl=tls) as server:
        before = listening_ports(os.getpid())
        with pytest.raises(TLSError, match=r"certificate was not accepted: .*unable to get local "
                                           r"issuer certificate"):
            await relay.start_server(echo_handler, HOST, server.port,
                                     ssl=client_context(certs.other_ca))
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []


async def test_wrong_host_name_fails_clearly(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(0, host=HOST, ssl=tls) as server:
        with pytest.raises(TLSError, match=r"not accepted: Hostname mismatch.*relay.example"):
            await relay.start_server(echo_handler, HOST, server.port,
                                     ssl=client_context(certs.ca),
                                     server_hostname="relay.example")


async def test_plaintext_client_gets_nothing_useful(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key)
    async with RelayServer(0, host=HOST, secret=SECRET, ssl=tls,
                           handshake_timeout=0.5) as server:
        before = listening_ports(os.getpid())
        # A seed client waits for a port line; a confused one sends a v2 response.
        for opening in (b"", b"relay/2 name=x\n"):
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(opening)
            data = await asyncio.wait_for(reader.read(), 5)
            assert b"nonce=" not in data
            assert not data[:1].isdigit()
            if not opening:
                assert data == b""  # dropped at the TLS handshake timeout, nothing sent
            writer.close()
            await writer.wait_closed()
        assert listening_ports(os.getpid()) == before
        assert server.sessions == []
        # Our own client without TLS: a clear failure, not a hang.
        with pytest.raises(RegistrationError, match="closed the connection before sending"):
            await relay.start_server(echo_handler, HOST, server.port, secret=SECRET,
                                     connect_timeout=5)


async def test_tls_client_against_a_plaintext_relay(certs: Certificates) -> None:
    async with RelayServer(0, host=HOST) as server:
        with pytest.raises(TLSError, match="does the relay speak TLS"):
            await relay.start_server(echo_handler, HOST, server.port,
                                     ssl=client_context(certs.ca))


async def test_mutual_tls(certs: Certificates) -> None:
    tls = server_context(certs.server_cert, certs.server_key, client_ca=certs.ca)
    async with RelayServer(0, host=HOST, ssl=tls) as server:
        with pytest.raises(RegistrationError, match=r"requires? a client certificate"):
            await relay.start_server(echo_handler, HOST, server.port,
                                     ssl=client_context(certs.ca), connect_timeout=5)
        assert server.sessions == []
        with_cert = client_context(certs.ca, certs.client_cert, certs.client_key)
        async with await relay.start_server(echo_handler, HOST, server.port,
                                            ssl=with_cert) as served:
            assert await roundtrip(served.public_port) == b"over TLS\n"


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
