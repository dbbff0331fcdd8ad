"""relay server --protocol notify, driven by a real program that reads [NEW] lines."""

from __future__ import annotations

import re
import signal
import socket
import sys
import threading
import time

import pytest

from relay_support import (
    ENDPOINT,
    EXAMPLES,
    HOST,
    SERVING,
    closed_without_data,
    connection_refused,
    echo_roundtrip,
    free_port,
    relay_command,
    wait_until,
)


def notify_relay(procs, *args: str):
    port = free_port()
    relay = procs.start(
        [*relay_command(), "server", "--protocol", "notify", "--bind", HOST, *args, str(port)],
        "relay",
    )
    relay.wait_line(SERVING)
    return relay, port


@pytest.mark.parametrize("tokens", [False, True], ids=["original", "tokens"])
def test_example_echo_server_behind_a_notify_relay(procs, tokens):
    relay, port = notify_relay(procs, *(["--notify-token"] if tokens else []))
    server = procs.start(
        [sys.executable, str(EXAMPLES / "notify_echo_server.py"), HOST, str(port)], "notify-echo"
    )
    _, match = server.wait_line(ENDPOINT, stream="stdout")
    public_port = int(match.group(1))
    assert echo_roundtrip(public_port) == b"ping through the relay\n"
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        payload = f"client {i} ".encode() * 5000
        results[i] = echo_roundtrip(public_port, payload) == payload

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == dict.fromkeys(range(20), True)  # one dial-back each, none mixed up
    relay.wait_line(r"relay\.connections: session 1: connection from .* closed: 50000 bytes in")
    server.send_signal(signal.SIGTERM)  # the server goes away: its public port closes
    relay.wait_line(rf"ended: closed by the server; public port {public_port} closed")
    wait_until(lambda: connection_refused(public_port), timeout=10)


def test_wire_protocol_port_line_then_new_lines(procs):
    relay, port = notify_relay(procs, "--handshake-timeout", "1")
    with socket.create_connection((HOST, port), timeout=10) as control:
        reader = control.makefile("rb")
        public_port = int(reader.readline())
        with socket.create_connection((HOST, public_port), timeout=10) as client:
            new = reader.readline()
            assert new.startswith(b"[NEW]")
            assert new.endswith(b"\n")
            dialback = int(new[5:])
            with socket.create_connection((HOST, dialback), timeout=10) as back:
                client.sendall(b"hello")
                assert back.recv(5) == b"hello"
                back.sendall(b"world")
                assert client.recv(5) == b"world"
        # a client whose [NEW] gets no dial-back is closed after the handshake timeout
        with socket.create_connection((HOST, public_port), timeout=10) as client:
            assert reader.readline().startswith(b"[NEW]")
            assert client.recv(10) == b""
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(10) == 0


def test_dial_back_from_another_address_is_refused(procs):
    relay, port = notify_relay(procs)
    with socket.create_connection((HOST, port), timeout=10) as control:
        reader = control.makefile("rb")
        public_port = int(reader.readline())
        with socket.create_connection((HOST, public_port), timeout=10):
            dialback = int(reader.readline()[5:])
            # not the registered server's address
            assert closed_without_data(dialback, source="127.0.0.2", timeout=10)
    relay.wait_line(r"dial-back from 127\.0\.0\.2:\d+ refused: not from the registered server's")


def ended(sock: socket.socket) -> bool:
    """The relay closed or reset ``sock`` without sending a byte."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


NEW_WITH_TOKEN = re.compile(rb"^\[NEW\](\d+) ([0-9a-f]{32})\n$")


def test_with_tokens_only_the_registered_server_takes_a_client(procs):
    """Another process on the server's address races to the dial-back port: without the
    token it gets nothing, and the client waits for the real server."""
    relay, port = notify_relay(procs, "--notify-token")
    with socket.create_connection((HOST, port), timeout=10) as control:
        reader = control.makefile("rb")
        public_port = int(reader.readline())
        with socket.create_connection((HOST, public_port), timeout=10) as client:
            match = NEW_WITH_TOKEN.match(reader.readline())
            assert match is not None
            dialback, token = int(match.group(1)), match.group(2)
            silent = socket.create_connection((HOST, dialback), timeout=10)  # holds no place
            for guess in (b"0" * 32 + b"\n", b"", b"GET / HTTP/1.1\r\nHost: relay.example\r\n\r\n"):
                with socket.create_connection((HOST, dialback), timeout=10) as thief:
                    thief.sendall(guess)
                    if not guess:
                        thief.shutdown(socket.SHUT_WR)
                    assert ended(thief)  # closed, and the client was not given
            with socket.create_connection((HOST, dialback), timeout=10) as back:
                back.sendall(token + b"\nfirst bytes")
                assert client.recv(11) == b"first bytes"  # the token line is not passed on
                client.sendall(b"hello")
                assert back.recv(5) == b"hello"
            silent.close()
    relay.wait_line(r"dial-back from 127\.0\.0\.1:\d+ refused: not a token of a waiting client")


def test_refused_dial_backs_do_not_write_the_log(procs):
    """300 dial-backs, half from another address, half with a wrong token: a few lines."""
    relay, port = notify_relay(procs, "--notify-token")
    with socket.create_connection((HOST, port), timeout=10) as control:
        reader = control.makefile("rb")
        public_port = int(reader.readline())
        with socket.create_connection((HOST, public_port), timeout=10):
            dialback = int(NEW_WITH_TOKEN.match(reader.readline()).group(1))
            before = len(relay.stderr)
            for _ in range(150):
                assert closed_without_data(dialback, source="127.0.0.2")
                with socket.create_connection((HOST, dialback), timeout=10) as thief:
                    thief.sendall(b"f" * 32 + b"\n")
                    assert ended(thief)
        reader.close()  # the socket's file descriptor closes with its last user
    relay.wait_line(r"suppressed log messages: .*dial-back refused: address")
    assert len(relay.stderr) - before < 20, relay.stderr[before:]


def test_idle_timeout_applies_to_paired_connections(procs):
    _, port = notify_relay(procs, "--idle-timeout", "1")
    with socket.create_connection((HOST, port), timeout=10) as control:
        reader = control.makefile("rb")
        public_port = int(reader.readline())
        with socket.create_connection((HOST, public_port), timeout=10) as client:
            dialback = int(reader.readline()[5:])
            with socket.create_connection((HOST, dialback), timeout=10) as back:
                client.sendall(b"ping")
                assert back.recv(4) == b"ping"
                started = time.monotonic()
                assert ended(client)
                assert 0.9 <= time.monotonic() - started < 5


def test_per_source_limits_apply(procs):
    relay, port = notify_relay(
        procs,
        "--max-connections-per-source",
        "2",
        "--max-pending-registrations-per-source",
        "1",
    )
    with socket.create_connection((HOST, port), timeout=10) as control:
        reader = control.makefile("rb")
        public_port = int(reader.readline())
        with socket.create_connection((HOST, port), timeout=10) as second:
            assert second.makefile("rb").readline().startswith(b"error: 1 registrations from")
        held = [socket.create_connection((HOST, public_port), timeout=10) for _ in range(2)]
        try:
            assert closed_without_data(public_port)  # the third from 127.0.0.1
            with socket.create_connection(
                (HOST, public_port), timeout=10, source_address=("127.0.0.2", 0)
            ) as other:
                dialbacks = [int(reader.readline()[5:]) for _ in range(3)]
                assert len(set(dialbacks)) == 1
                other.sendall(b"x")
        finally:
            for sock in held:
                sock.close()
    relay.wait_line(r"refusing a public connection from 127\.0\.0\.1:\d+: 2 open from")
