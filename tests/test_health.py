"""/livez and /readyz on the --metrics port, as Kubernetes probes use them.

Real relay and forwarder processes; a connection held open keeps the drain going while the
probes are asked.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request

from relay_support import (
    ECHO_SCRIPT,
    HOST,
    SERVING,
    connection_refused,
    free_port,
    relay_command,
    wait_until,
)

METRICS = r"metrics on http://([\d.]+:\d+)/metrics"


def probe(endpoint: str, path: str) -> tuple[int, str]:
    """Status code and body of GET ``path``, as a kubelet's httpGet probe sees them."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_relay_probes_and_the_drain(procs) -> None:
    """Ready while listening; on SIGTERM /readyz answers 503 no later than the control port
    closes, while /livez, /metrics and the connection in flight go on."""
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay("--metrics", f"{HOST}:0", "--drain-timeout", "20")
    endpoint = relay.wait_line(METRICS)[1].group(1)
    assert probe(endpoint, "/livez") == (200, "alive\n")
    assert probe(endpoint, "/readyz") == (200, f"ready: serving on port {relay_port}\n")
    _, public_port = procs.forwarder(relay_port, echo_port)
    in_flight = socket.create_connection((HOST, public_port), timeout=10)
    in_flight.sendall(b"before\n")
    assert in_flight.recv(100) == b"before\n"

    relay.send_signal(signal.SIGTERM)
    relay.wait_line(r"SIGTERM received: draining")
    # Control port first, then the probe: once the port is closed, readiness must be gone.
    wait_until(lambda: connection_refused(relay_port), timeout=10)
    assert probe(endpoint, "/readyz") == (503, "not ready: draining\n")
    assert probe(endpoint, "/livez") == (200, "alive\n")
    assert probe(endpoint, "/metrics")[0] == 200
    assert relay.popen.poll() is None  # still draining: a connection is in flight
    in_flight.sendall(b"during the drain\n")
    assert in_flight.recv(100) == b"during the drain\n"
    in_flight.close()
    assert relay.wait(15) == 0


def test_relay_probes_order_on_sigterm(procs) -> None:
    """Probed in a tight loop around SIGTERM: never a closed control port with /readyz 200."""
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay("--metrics", f"{HOST}:0", "--drain-timeout", "20")
    endpoint = relay.wait_line(METRICS)[1].group(1)
    _, public_port = procs.forwarder(relay_port, echo_port)
    held = socket.create_connection((HOST, public_port), timeout=10)  # keeps the drain going
    seen = []
    relay.send_signal(signal.SIGTERM)
    for _ in range(200):
        closed = connection_refused(relay_port)
        code, _ = probe(endpoint, "/readyz")
        seen.append((closed, code))
        if closed and code == 503 and len(seen) > 3:
            break
    assert (True, 200) not in seen, seen
    assert seen[-1] == (True, 503), seen
    held.close()
    assert relay.wait(15) == 0


def test_forwarder_is_ready_once_registered_and_not_while_draining(procs) -> None:
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay_port = free_port()
    forwarder = procs.start(
        [
            *relay_command(),
            *("forward", "--metrics", f"{HOST}:0", "--reconnect-max-delay", "0.5"),
            *("--service", f"redis={echo_port}", "--service", f"web={echo_port}"),
            f"{HOST}:{relay_port}",
        ],
        "forwarder",
    )
    endpoint = forwarder.wait_line(METRICS)[1].group(1)
    code, body = probe(endpoint, "/readyz")
    assert code == 503
    assert body == f"not ready: not registered with the relay at {HOST}:{relay_port}: redis, web\n"
    assert probe(endpoint, "/livez") == (200, "alive\n")
    forwarder.wait_line(rf"cannot register (\S+ )?with the relay at {HOST}:{relay_port}: .*refused")

    relay = procs.start([*relay_command(), "server", "--bind", HOST, str(relay_port)], "relay")
    relay.wait_line(SERVING)
    web = int(forwarder.wait_line(r"^web [\d.]+:(\d+)$", stream="stdout")[1].group(1))
    forwarder.wait_line(r"^redis ", stream="stdout")
    assert probe(endpoint, "/readyz") == (
        200,
        f"ready: registered with the relay at {HOST}:{relay_port}\n",
    )
    held = socket.create_connection((HOST, web), timeout=10)  # a stream in flight
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    forwarder.send_signal(signal.SIGTERM)
    forwarder.wait_line(r"SIGTERM received")
    assert probe(endpoint, "/readyz") == (503, "not ready: draining\n")
    held.close()
    assert forwarder.wait(15) == 0
