"""relay server --protocol notify, driven by a real program that reads [NEW] lines."""

from __future__ import annotations

import signal
import socket
import sys
import threading

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


def test_example_echo_server_behind_a_notify_relay(procs):
    relay, port = notify_relay(procs)
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
    relay.wait_line(r"dial-back from 127\.0\.0\.2:\d+, not from the registered server's")
