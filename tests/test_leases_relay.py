"""Leases through an in-process relay speaking registration v2: names, takeover, restarts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import relay
from relay.errors import RelayRefusedError
from relay.server.auth import parse_auth_clients
from relay.server.relay import RelayServer
from relay_support import echo_roundtrip, free_port_block

HOST = "127.0.0.1"
SECRET = "correct horse battery staple"


async def echo(reader, writer) -> None:
    writer.write(await reader.read())
    writer.close()


async def roundtrip(port: int, payload: bytes = b"hello\n") -> bytes:
    return await asyncio.to_thread(echo_roundtrip, port, payload)


async def test_a_name_alive_elsewhere_is_refused_a_silent_one_is_replaced(caplog):
    caplog.set_level(logging.INFO, logger="relay.server")
    async with RelayServer(0, bind=HOST, protocol="v2") as server:
        # A registering side that answers the challenge by hand, then goes silent: it
        # never answers a ping (a peer behind a dead network path).
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            assert (await reader.readline()).startswith(b"error: v2 needed")
            writer.write(b"relay/2 name=svc\n")
            silent_port = int(await reader.readline())
            first = await relay.register(HOST, server.port, name="other")
            # The owner of "other" answers pings: a second "other" is another process.
            with pytest.raises(
                RelayRefusedError,
                match=rf"name 'other' is already registered \(public port "
                rf"{first.public_port}\) and that session is alive",
            ):
                await relay.register(HOST, server.port, name="other")
            first.session.close()
            await first.session.wait_closed()
            # "svc" again while its silent session looks alive: the newcomer gets its port.
            async with await relay.start_server(echo, HOST, server.port, name="svc") as again:
                assert again.public_port == silent_port
                assert "registers again from" in caplog.text
                assert await roundtrip(again.public_port) == b"hello\n"
        finally:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_leases_survive_a_relay_restart_in_process(tmp_path: Path):
    state = str(tmp_path)
    first_relay = RelayServer(0, bind=HOST, protocol="v2", state_dir=state)
    await first_relay.start()
    control = first_relay.port
    endpoints: list[str] = []
    server = await relay.start_server(
        echo,
        HOST,
        control,
        name="stable",
        on_endpoint=endpoints.append,
        reconnect_delay=0.05,
        reconnect_max_delay=0.2,
    )
    second_relay = None
    try:
        port = server.public_port
        first_relay.close()
        await first_relay.wait_closed()
        second_relay = RelayServer(control, bind=HOST, protocol="v2", state_dir=state)
        await second_relay.start()
        await asyncio.wait_for(server.wait_endpoint(), 10)
        assert endpoints == [f"{HOST}:{port}"] * 2
        assert await roundtrip(port) == b"hello\n"
    finally:
        server.close()
        await server.wait_closed()
        for relay_server in (first_relay, second_relay):
            if relay_server is not None:
                relay_server.close()
                await relay_server.wait_closed()


async def test_an_authenticated_client_runs_several_services_each_with_its_port(tmp_path: Path):
    low, high = free_port_block(2)
    clients = parse_auth_clients({"alice": {"secret": SECRET, "ports": f"{low}-{high}"}})
    async with RelayServer(0, bind=HOST, auth_clients=clients, state_dir=str(tmp_path)) as srv:
        # Each service asks for its own port: both run at once, each its own lease.
        one = await relay.start_server(
            echo, HOST, srv.port, name="alice", secret=SECRET, remote_port=high
        )
        two = await relay.start_server(
            echo, HOST, srv.port, name="alice", secret=SECRET, remote_port=low
        )
        async with one, two:
            assert (one.public_port, two.public_port) == (high, low)
            assert await roundtrip(one.public_port) == b"hello\n"
            assert await roundtrip(two.public_port) == b"hello\n"
            # Without a port of its own, a third one is the same identity as neither: it
            # gets no port (both are taken) rather than one of theirs.
            with pytest.raises(RelayRefusedError, match="no free port"):
                await relay.start_server(echo, HOST, srv.port, name="alice", secret=SECRET)


async def test_an_authenticated_client_without_ports_runs_several_sessions(tmp_path: Path):
    clients = parse_auth_clients({"alice": {"secret": SECRET}})
    async with RelayServer(0, bind=HOST, auth_clients=clients, state_dir=str(tmp_path)) as srv:
        first = await relay.start_server(echo, HOST, srv.port, name="alice", secret=SECRET)
        async with first:
            second = await relay.start_server(echo, HOST, srv.port, name="alice", secret=SECRET)
            async with second:
                assert first.public_port != second.public_port
                assert await roundtrip(second.public_port) == b"hello\n"
            port = first.public_port
        # The lease stayed with the first one's port.
        async with await relay.start_server(
            echo, HOST, srv.port, name="alice", secret=SECRET
        ) as again:
            assert again.public_port == port


async def test_an_authenticated_clients_services_keep_their_own_ports(tmp_path: Path):
    """``service=``: one auth-file client, two services asking for no port: each has its
    own lease, kept across the client's reconnects and a relay restart."""
    clients = parse_auth_clients({"alice": {"secret": SECRET}})
    state = str(tmp_path)

    async def register(control: int, service: str) -> relay.RelayedServer:
        return await relay.start_server(
            echo, HOST, control, client_name="alice", name=service, secret=SECRET, reconnect=False
        )

    async with RelayServer(0, bind=HOST, auth_clients=clients, state_dir=state) as first:
        control = first.port
        redis, web = await register(control, "redis"), await register(control, "web")
        async with redis, web:
            ports = {"redis": redis.public_port, "web": web.public_port}
            assert ports["redis"] != ports["web"]
            assert await roundtrip(ports["web"]) == b"hello\n"
        # Back in the other order: the round robin would hand out other ports.
        web, redis = await register(control, "web"), await register(control, "redis")
        async with redis, web:
            assert {"redis": redis.public_port, "web": web.public_port} == ports
    async with RelayServer(control, bind=HOST, auth_clients=clients, state_dir=state):
        web, redis = await register(control, "web"), await register(control, "redis")
        async with redis, web:
            assert {"redis": redis.public_port, "web": web.public_port} == ports
            assert await roundtrip(ports["redis"]) == b"hello\n"
