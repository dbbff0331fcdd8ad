"""Names on shared ports through a real RelayServer: who gets which name, the answers to
what names no service, and the limits of a connection until it is routed
(relay/server/routes.py, shared_ports.py).

Each service is ``relay.start_server`` with an echo handler; public clients are plain
sockets. Other sources are other loopback addresses (127.0.0.2, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from routing_support import client_hello

import relay
from relay import RelayServer
from relay.client.relayed_server import RelayedServer
from relay.errors import RelayRefusedError
from relay.server.auth import parse_auth_clients
from relay.wire.client_hello import alert_record

HOST = "127.0.0.1"
DOMAIN = "tunnel.test"
SECRETS = {"alice": "alice's secret, long enough", "bob": "bob's secret, long enough too"}


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def serving(port: int, **options: object) -> AsyncIterator[RelayedServer]:
    server = await relay.start_server(echo, HOST, port, reconnect=False, **options)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def names_relay(**options: object) -> RelayServer:
    return RelayServer(0, bind=HOST, domain=DOMAIN, http_port=0, tls_port=0, **options)


async def ask(port: int, data: bytes, source: str = HOST, eof: bool = True) -> bytes:
    """Send ``data`` (then EOF), read until the relay or the service closes."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def get(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def test_names_follow_who_registers_and_strangers_cannot_take_them() -> None:
    clients = parse_auth_clients(
        {
            "alice": {"secret": SECRETS["alice"], "hosts": ["blog.example.org", "Www.Example.org"]},
            "bob": {"secret": SECRETS["bob"]},
        }
    )
    async with names_relay(auth_clients=clients) as server:
        http = server.shared.routes.ports["http"]
        alice = {"client_name": "alice", "secret": SECRETS["alice"], "route": "http"}
        async with (
            serving(server.port, name="blog", **alice) as blog,
            serving(server.port, name="blog.example.org", **alice) as own,
            serving(server.port, **alice) as bare,
        ):
            assert blog.public_endpoint == f"http://blog.alice.{DOMAIN}:{http}/"
            assert own.public_endpoint == f"http://blog.example.org:{http}/"
            assert bare.public_endpoint == f"http://alice.{DOMAIN}:{http}/"
            assert own.public_address == ("blog.example.org", http)
            for host in (f"blog.alice.{DOMAIN}", "BLOG.example.org", f"alice.{DOMAIN}."):
                assert await ask(http, get(host)) == get(host)  # echoed: the service got it all
            bob = {"client_name": "bob", "secret": SECRETS["bob"], "route": "http"}
            for name, says in [
                ("blog.example.org", "host name blog.example.org is not allowed for client bob"),
                ("www.example.org", r"not allowed for client bob \(an auth file's hosts"),
                ("bad_name", "name 'bad_name' cannot be part of a host name"),
            ]:
                with pytest.raises(RelayRefusedError, match=says) as info:
                    await relay.register(HOST, server.port, name=name, **bob)
                assert info.value.permanent
            # bob's names are under bob: the same service name is another host.
            async with serving(server.port, name="blog", **bob) as bobs:
                assert bobs.public_endpoint == f"http://blog.bob.{DOMAIN}:{http}/"
            info = {i.host: i for i in server.sessions}
            assert f"blog.alice.{DOMAIN}" in info
            assert info[f"blog.alice.{DOMAIN}"].public_port == http


async def test_without_authentication_a_name_is_first_come_first_served() -> None:
    async with names_relay() as server:
        http = server.shared.routes.ports["http"]
        async with serving(server.port, name="blog", route="http") as first:
            assert first.public_endpoint == f"http://blog.{DOMAIN}:{http}/"
            with pytest.raises(RelayRefusedError, match=r"already registered .* alive"):
                await relay.register(HOST, server.port, name="blog", route="http")
            # The same name on the TLS port is the same identity: refused too.
            with pytest.raises(RelayRefusedError, match="already registered"):
                await relay.register(HOST, server.port, name="blog", route="tls")
            assert await ask(http, get(f"blog.{DOMAIN}")) == get(f"blog.{DOMAIN}")
        # Gone: the name answers 404 at once, and the next one to register gets it.
        assert (await ask(http, get(f"blog.{DOMAIN}"))).startswith(b"HTTP/1.1 404 Not Found\r\n")
        async with serving(server.port, name="blog", route="tls") as second:
            assert (
                second.public_endpoint
                == f"https://blog.{DOMAIN}:{server.shared.routes.ports['tls']}/"
            )


async def test_a_relay_without_names_gives_a_port_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        RelayServer(0, bind=HOST, protocol="v2") as server,
        serving(server.port, name="blog", route="http") as service,
    ):
        assert service.url is None
        assert await ask(service.public_port, b"plain") == b"plain"
    assert "the relay does not serve names on a shared http port" in caplog.text
    async with (
        RelayServer(0, bind=HOST) as seed,  # the seed protocol: a port too
        serving(seed.port, name="blog", route="tls") as seeded,
    ):
        assert seeded.url is None
    assert "a name on the relay's domain (route tls) not used" in caplog.text


async def test_what_names_no_service_gets_an_answer_from_the_relay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "relay.routing")
    async with names_relay(route_timeout=0.3) as server:
        http, tls = server.shared.routes.ports["http"], server.shared.routes.ports["tls"]
        answers = [
            (b"GET / HTTP/1.1\r\n\r\n", b"400 Bad Request"),
            (get(f"nope.{DOMAIN}"), b"404 Not Found"),
            (b"GET / HTTP/1.1\r\nCookie: " + b"x" * 20000, b"431 Request Header Fields Too Large"),
            (b"GET / HTTP/1.1\r\nHost: a", b"400 Bad Request"),  # EOF inside the head
        ]
        for data, status in answers:
            answer = await ask(http, data)
            assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n"), answer[:80]
            assert f"relay at {DOMAIN}".encode() in answer
        assert (await ask(http, b"GET / HTTP/1.1\r\n", eof=False)).startswith(b"HTTP/1.1 408 ")
        assert await ask(tls, client_hello(f"nope.{DOMAIN}")) == alert_record(112)
        assert await ask(tls, client_hello(None)) == alert_record(112)
        assert await ask(tls, b"GET / HTTP/1.1\r\n\r\n") == alert_record(50)
        assert await ask(tls, client_hello("x")[:20], eof=False) == b""  # too slow: closed
        assert server.shared.held == 0  # every place given back
        assert server.stats.connections_refused["route_http_404"] == 1
        assert server.stats.connections_refused["route_tls_unrecognized_name"] == 2
    assert "HTTP port: refusing a connection from 127.0.0.1" in caplog.text


async def test_a_stranger_cannot_hold_every_unrouted_place_nor_write_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "relay.routing")
    async with names_relay(max_connections_per_source=2) as server:
        http = server.shared.routes.ports["http"]
        held = [await asyncio.open_connection(HOST, http) for _ in range(2)]
        try:
            reader, writer = await asyncio.open_connection(HOST, http)
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # reset at once
            writer.close()
            # Another source has its own share.
            assert (await ask(http, get("x.test"), source="127.0.0.2")).startswith(b"HTTP/1.1 404")
        finally:
            for _, writer in held:
                writer.close()
        await asyncio.sleep(0.1)
        assert server.shared.held == 0
        assert (await ask(http, get("x.test"))).startswith(b"HTTP/1.1 404")  # slots are back
        for _ in range(40):
            await ask(http, b"garbage\r\n\r\n")
        assert server.stats.connections_refused["routing_per_source"] == 1
    refusals = [r for r in caplog.records if "refusing a connection" in r.getMessage()]
    assert len(refusals) <= 8  # 41 refusals of one kind: a few lines, then one now and then


async def test_routed_connections_keep_the_limits_of_a_public_connection() -> None:
    async with names_relay(idle_timeout=0.3, max_connections=1) as server:
        http = server.shared.routes.ports["http"]
        async with serving(server.port, name="blog", route="http"):
            reader, writer = await asyncio.open_connection(HOST, http)
            writer.write(get(f"blog.{DOMAIN}"))
            assert await reader.readexactly(len(get(f"blog.{DOMAIN}"))) == get(f"blog.{DOMAIN}")
            # max_connections: a second connection to this service is reset.
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await ask(http, get(f"blog.{DOMAIN}"), eof=False)
            # idle timeout: the first one is reset once idle.
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()


async def test_each_slow_connection_gets_its_own_route_timeout() -> None:
    """One timer serves every deadline: a connection that came later is answered its
    timeout after it came, not with the first one nor a whole timeout late."""
    async with names_relay(route_timeout=0.4) as server:
        http = server.shared.routes.ports["http"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.ensure_future(ask(http, b"GET / HTTP/1.1\r\n", eof=False))
        await asyncio.sleep(0.25)
        second = asyncio.ensure_future(ask(http, b"GET / HTTP/1.1\r\n", eof=False))
        answered = {}
        for name, task in (("first", first), ("second", second)):
            assert (await task).startswith(b"HTTP/1.1 408 ")
            answered[name] = loop.time() - started
        assert 0.35 <= answered["first"] < 0.75
        assert 0.6 <= answered["second"] < 1.0  # not with the first, nor a timeout late
        assert server.shared.held == 0


async def test_a_routed_handler_sees_the_public_client_address() -> None:
    """``start_server``'s peername on a routed connection is the public client's (the PROXY
    v2 header the relay put first on the stream), and the head still comes first."""

    async def who(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(repr(writer.get_extra_info("peername")).encode() + b" " + head)
        writer.close()

    async with names_relay() as server:
        http = server.shared.routes.ports["http"]
        routed = await relay.start_server(who, HOST, server.port, name="who", route="http")
        try:
            answer = await ask(http, get(f"who.{DOMAIN}"), source="127.0.0.2")
        finally:
            routed.close()
            await routed.wait_closed()
    assert answer.startswith(b"('127.0.0.2', ")
    assert answer.endswith(b" " + get(f"who.{DOMAIN}"))


class OtherWorkers:
    """The other workers as one worker reaches them (``relay.server.elsewhere.Elsewhere``): here the
    supervisor's answers come from ``holders``, and the line keeps a copy of each socket
    it is given (as the supervisor's does, until the other worker has its own), or fails
    with ``fail``."""

    def __init__(self, holders: dict[str, int], fail: str | None = None) -> None:
        self.holders = holders
        self.fail = fail
        self.asked: list[str] = []
        self.sent: list[tuple[int, str, str, bytes, socket.socket]] = []

    async def where(self, kind: str, host: str) -> int | None:
        self.asked.append(host)
        return self.holders.get(host)

    def send(self, to: int, kind: str, host: str, early: bytes, sock: socket.socket) -> None:
        if self.fail is not None:
            raise OSError(self.fail)
        self.sent.append((to, kind, host, early, socket.socket(fileno=os.dup(sock.fileno()))))


async def test_a_name_another_worker_holds_is_handed_on_with_its_head() -> None:
    """A worker hands a connection for a name another worker holds (known, or asked of the
    supervisor) with the bytes it read, unchanged, and lets go of it; a name nobody holds
    is asked once, then 404; a line that cannot take the connection: 503 (TLS: the alert
    internal_error), counted as route_handoff_failed."""
    async with names_relay() as server:
        shared = server.shared
        http, tls = shared.routes.ports["http"], shared.routes.ports["tls"]
        workers = OtherWorkers({f"late.{DOMAIN}": 2})
        shared.elsewhere = workers
        shared.routes.elsewhere[("http", f"far.{DOMAIN}")] = 2
        with pytest.raises(RelayRefusedError, match=r"far\.tunnel\.test is in use .* worker 2"):
            await relay.register(HOST, server.port, name="far", route="http")

        for host in (f"far.{DOMAIN}", f"late.{DOMAIN}"):
            reader, writer = await asyncio.open_connection(HOST, http)
            writer.write(get(host) + b"body")
            await until(lambda: len(workers.sent) == 1)
            to, kind, named, early, sock = workers.sent.pop()
            assert (to, kind, named) == (2, "http", host)
            assert early.startswith(get(host))  # the head (and what came with it), unchanged
            with sock:  # the connection outlives this worker's copy: "worker 2" answers
                sock.sendall(b"from worker 2")
            assert await asyncio.wait_for(reader.read(), 10) == b"from worker 2"
            writer.close()
        assert workers.asked == [f"late.{DOMAIN}"]  # far was known without asking
        assert server.stats.connections_handed == 2

        answer = await ask(http, get(f"nope.{DOMAIN}"))
        assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert workers.asked[-1] == f"nope.{DOMAIN}"

        workers.fail = "[Errno 105] No buffer space available"
        answer = await ask(http, get(f"far.{DOMAIN}"))
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"worker 2, which holds far.tunnel.test, cannot take it now" in answer
        shared.routes.elsewhere[("tls", f"far.{DOMAIN}")] = 2
        assert await ask(tls, client_hello(f"far.{DOMAIN}")) == alert_record(80)
        assert server.stats.connections_refused["route_handoff_failed"] == 2
        assert server.stats.connections_handed == 2
        assert not shared.unrouted


async def test_a_connection_handed_here_goes_on_from_the_bytes_read_elsewhere() -> None:
    """The worker that holds the name takes a handed connection as its own (the service
    gets the other worker's bytes first); for a name it does not hold (any more) it
    answers 404 without asking anyone."""
    async with names_relay() as server, serving(server.port, name="near", route="http"):
        shared = server.shared
        workers = OtherWorkers({})
        shared.elsewhere = workers

        async def handed(host: str, early: bytes) -> bytes:
            with socket.create_server((HOST, 0)) as server_sock:
                client = socket.create_connection(server_sock.getsockname()[:2])
                sock, _ = server_sock.accept()
            shared.take("http", host, early, sock)
            reader, writer = await asyncio.open_connection(sock=client)
            writer.write(b" and more")
            writer.write_eof()
            try:
                return await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()

        head = get(f"near.{DOMAIN}")
        assert await handed(f"near.{DOMAIN}", head) == head + b" and more"  # echoed
        gone = await handed(f"gone.{DOMAIN}", get(f"gone.{DOMAIN}"))
        assert gone.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert workers.asked == []


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not true within 2 s")
