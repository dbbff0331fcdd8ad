"""--metrics: /metrics scraped with prometheus_client's own parser and with curl; /status."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import relay
from relay.ops.metrics import RelayCollector
from relay.server.auth import parse_auth_clients
from relay_support import (
    ECHO_SCRIPT,
    HOST,
    echo_roundtrip,
    free_port,
    relay_command,
    wait_until,
)

METRICS = r"metrics on http://([\d.]+:\d+)/metrics"


def scrape(endpoint: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def status(endpoint: str) -> dict:
    with urllib.request.urlopen(f"http://{endpoint}/status", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.load(response)


def test_relay_and_forwarder_metrics_move_with_traffic(procs):
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay("--metrics", f"{HOST}:0")  # the seed form takes it too
    _, match = relay.wait_line(METRICS)
    relay_metrics = match.group(1)
    forwarder, public_port = procs.forwarder(relay_port, echo_port, "--metrics", f"{HOST}:0")
    _, match = forwarder.wait_line(METRICS)
    forwarder_metrics = match.group(1)

    before = scrape(relay_metrics)
    service = (("client", "anonymous"), ("direction", "in"), ("service", str(public_port)))
    assert before[("relay_sessions_open", ())] == 1
    assert before[("relay_sessions_total", ())] == 1
    assert before[("relay_service_bytes_total", service)] == 0
    assert before[("relay_public_connections_total", ())] == 0
    for family in (
        "relay_streams_open",
        "relay_public_connections_open",
        "relay_bytes_total",
        "relay_auth_failures_total",
        "relay_window_stalls_total",
    ):
        assert any(name == family for name, _ in before), family

    payload = b"x" * 300_000
    assert echo_roundtrip(public_port, payload) == payload
    after = scrape(relay_metrics)
    assert after[("relay_public_connections_total", ())] == 1
    assert after[("relay_service_bytes_total", service)] == len(payload)
    out = (service[0], ("direction", "out"), service[2])
    assert after[("relay_service_bytes_total", out)] == len(payload)
    assert after[("relay_bytes_total", (("direction", "in"),))] == len(payload)
    assert ("relay_keepalive_rtt_seconds", (service[0], service[2])) in after  # handshake ping
    assert after[("relay_service_sessions", (service[0], service[2]))] == 1

    (registration,) = status(relay_metrics)["registrations"]
    assert registration["public_port"] == public_port
    assert registration["peer"].startswith("127.0.0.1:")
    assert registration["bytes_in"] == registration["bytes_out"] == len(payload)
    assert registration["open_connections"] == 0
    assert registration["since"].endswith("Z")

    fwd = scrape(forwarder_metrics)
    label = ("service", f"{HOST}:{echo_port}")
    assert fwd[("relay_forwarder_registered", (label,))] == 1
    assert fwd[("relay_forwarder_streams_total", (label,))] == 1
    assert fwd[("relay_forwarder_bytes_total", (("direction", "in"), label))] == len(payload)
    (served,) = status(forwarder_metrics)["services"]
    assert served["public_endpoint"] == f"{HOST}:{public_port}"

    forwarder.send_signal(signal.SIGTERM)
    assert forwarder.wait(10) == 0
    relay.wait_line(rf"public port {public_port} closed")
    gone = scrape(relay_metrics)
    assert gone[("relay_sessions_open", ())] == 0
    assert gone[("relay_bytes_total", (("direction", "in"),))] == len(payload)  # kept
    assert status(relay_metrics)["registrations"] == []


def test_max_total_window_reaches_the_relay_and_the_forwarder(procs, tmp_path, monkeypatch):
    """--max-total-window by flag, RELAY_MAX_TOTAL_WINDOW and the config file: one budget
    per process, which every open stream draws on and gives back when it ends."""
    used, limit = "window_budget_used_bytes", "window_budget_limit_bytes"
    _, echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")
    relay, relay_port = procs.relay("--metrics", f"{HOST}:0", "--max-total-window", "3MiB")
    relay_metrics = relay.wait_line(METRICS)[1].group(1)
    monkeypatch.setenv("RELAY_MAX_TOTAL_WINDOW", "1MiB")
    forwarder, public_port = procs.forwarder(relay_port, echo_port, "--metrics", f"{HOST}:0")
    monkeypatch.delenv("RELAY_MAX_TOTAL_WINDOW")
    forwarder_metrics = forwarder.wait_line(METRICS)[1].group(1)

    def budgets() -> tuple[float, float, float, float]:
        at_relay, at_forwarder = scrape(relay_metrics), scrape(forwarder_metrics)
        return (
            at_relay[(f"relay_{used}", ())],
            at_relay[(f"relay_{limit}", ())],
            at_forwarder[(f"relay_forwarder_{used}", ())],
            at_forwarder[(f"relay_forwarder_{limit}", ())],
        )

    assert budgets() == (0, 3 << 20, 0, 1 << 20)
    with socket.create_connection((HOST, public_port), timeout=10) as held:
        held.sendall(b"x")
        assert held.recv(1) == b"x"
        assert budgets() == (256 << 10, 3 << 20, 256 << 10, 1 << 20)  # one stream each side
    wait_until(lambda: budgets() == (0, 3 << 20, 0, 1 << 20), timeout=10)

    config = tmp_path / "relay.toml"
    config.write_text('max-total-window = "5MiB"\n')
    relay, _ = procs.relay("--config", str(config), "--metrics", f"{HOST}:0")
    from_file = scrape(relay.wait_line(METRICS)[1].group(1))
    assert from_file[(f"relay_{limit}", ())] == 5 << 20


def test_curl_scrapes_metrics_and_status(procs):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (scripts/install-test-deps.sh installs it)")
    port = free_port()
    relay, _ = procs.relay("--metrics", f"{HOST}:{port}")
    relay.wait_line(METRICS)
    done = subprocess.run(
        [curl, "-fsS", f"http://{HOST}:{port}/metrics"], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    assert "# TYPE relay_sessions_open gauge" in done.stdout
    assert "relay_sessions_total 0.0" in done.stdout
    done = subprocess.run(
        [curl, "-fsS", f"http://{HOST}:{port}/status"], capture_output=True, text=True, timeout=10
    )
    assert json.loads(done.stdout)["registrations"] == []
    missing = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{HOST}:{port}/nothing"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert missing.stdout == "404"


async def test_config_file_auth_clients_and_refusal_metrics(procs, tmp_path):
    """[[server.clients]] in the config file authenticate; failures and refusals are counted."""
    import relay
    from relay.wire.v2 import AuthenticationError

    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nbind = "{HOST}"\nmax-sessions = 1\n'
        f'max-pending-registrations-per-source = 0\nmetrics = "{HOST}:0"\n'
        '[[server.clients]]\nname = "alice"\nsecret = "alice-secret-1-strong-enough"\n'
    )
    port = free_port()
    proc = procs.start([*relay_command(), "server", "--config", str(config), str(port)], "relay")
    _, match = await proc.await_line(METRICS)
    endpoint = match.group(1)
    with pytest.raises(AuthenticationError):
        await relay.start_server(
            lambda r, w: None, HOST, port, secret="wrong-secret-1-strong-enough", name="alice"
        )
    server = await relay.start_server(
        lambda r, w: None, HOST, port, secret="alice-secret-1-strong-enough", name="alice"
    )
    try:
        with pytest.raises(relay.RelayRefusedError, match="relay is full"):
            await relay.start_server(
                lambda r, w: None, HOST, port, secret="alice-secret-1-strong-enough", name="alice"
            )
        samples = await asyncio.to_thread(scrape, endpoint)
        assert samples[("relay_auth_failures_total", ())] == 1
        assert samples[("relay_registrations_refused_total", (("reason", "relay_full"),))] == 1
        (registration,) = (await asyncio.to_thread(status, endpoint))["registrations"]
        assert registration["client"] == "alice"
        alice = (("client", "alice"), ("direction", "in"), ("service", "alice"))
        assert ("relay_service_bytes_total", alice) in samples
    finally:
        server.close()
        await server.wait_closed()


def exposition(server: object) -> str:
    """/metrics of ``server`` as the relay serves it (Prometheus text format)."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(server))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def series(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every sample's (name, sorted labels), in order; duplicates kept."""
    return [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def strictly_parsed(server: object) -> None:
    """The same families in OpenMetrics, through prometheus_client's strict parser (it
    rejects a series that comes back after another one)."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(server))  # type: ignore[arg-type]
    list(openmetrics_families(openmetrics_latest(registry).decode()))


async def test_one_series_per_client_and_service(tmp_path):
    """Two live sessions of one authenticated client and service are one series (the
    second session gets a port of its own); prometheus_client parses /metrics."""
    clients = parse_auth_clients({"alice": {"secret": "alice's secret, long enough"}})
    async with relay.RelayServer(0, bind=HOST, auth_clients=clients) as server:
        registered = [
            await relay.start_server(
                lambda r, w: None,
                HOST,
                server.port,
                name="alice",
                secret="alice's secret, long enough",
            )
            for _ in range(2)
        ]
        try:
            assert len(server.sessions) == 2
            text = exposition(server)
            strictly_parsed(server)
            samples = series(text)
            assert len(samples) == len(set(samples)), text
            alice = (("client", "alice"), ("service", "alice"))
            assert ("relay_service_sessions", alice) in samples
            assert 'relay_service_sessions{client="alice",service="alice"} 2.0' in text
        finally:
            for registration in registered:
                registration.close()
                await registration.wait_closed()


async def test_no_label_value_a_stranger_picks():
    """On a relay without authentication, registrations name themselves: no such name
    becomes a label value (else every stranger's name would be a series)."""
    async with relay.RelayServer(0, bind=HOST, protocol="v2") as server:
        registered = [
            await relay.start_server(lambda r, w: None, HOST, server.port, name=name)
            for name in ("mallory", "mallory-2", "eve")
        ]
        try:
            samples = series(exposition(server))
            strictly_parsed(server)
            values = {value for _, labels in samples for _, value in labels}
            assert not values & {"mallory", "mallory-2", "eve"}
            ports = {str(registration.public_port) for registration in registered}
            service_series = {
                labels for name, labels in samples if name == "relay_service_sessions"
            }
            assert service_series == {(("client", "anonymous"), ("service", p)) for p in ports}
        finally:
            for registration in registered:
                registration.close()
                await registration.wait_closed()
