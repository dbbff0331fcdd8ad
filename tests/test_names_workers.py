"""Names on shared ports with ``relay server --workers 2``, with real programs end to end.

Every worker listens on the shared ports and the kernel gives a connection to
either; a worker that does not hold the name hands the connection to the one
that does. Which worker holds a name is chance: the tests register until both
hold some, and repeat requests until some went through a handoff (the
``relay_routed_connections_handed`` counter of /metrics says so).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from conftest import require_program
from prometheus_client.parser import text_string_to_metric_families
from registration_support import PUBLIC_CLIENT, start_proxy_receiver
from test_names import DOMAIN, NAMES, NGINX_TLS_CONF, curl, nginx_tls, s_client

from relay_support import HOST, Proc, Processes, free_port, recv_all, relay_command, wait_until

pytestmark = pytest.mark.e2e

METRICS = r"metrics on http://([\d.]+:\d+)/metrics"
NGINX_HTTP_SERVER = """\
    server {{
        listen {host}:{port};
        location / {{ return 200 "service {label}\\n"; }}
    }}
"""


def start_relay(procs: Processes, *args: str) -> tuple[Proc, int, int, int, str]:
    """``relay server --workers 2 --domain DOMAIN`` with both shared ports (port 0, so the
    supervisor picks them) and metrics: (process, control, HTTP, TLS, metrics endpoint)."""
    proc, control = procs.relay(
        "--workers", "2", "--domain", DOMAIN, "--http-port", "0", "--tls-port", "0",
        "--metrics", f"{HOST}:0", *args,
    )  # fmt: skip
    _, match = proc.wait_line(NAMES)
    http_port, tls_port = int(match.group(1)), int(match.group(2))
    # Both workers listen on the same ports, the ones the supervisor holds.
    second = proc.wait_line(NAMES, after=_ + 1)[1]
    assert (int(second.group(1)), int(second.group(2))) == (http_port, tls_port)
    return proc, control, http_port, tls_port, proc.wait_line(METRICS)[1].group(1)


def get(endpoint: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=10) as answer:
        return str(answer.read().decode())


def handed_by(metrics: str) -> dict[str, float]:
    """Connections each worker handed to another so far, by worker."""
    for family in text_string_to_metric_families(get(metrics, "/metrics")):
        if family.name == "relay_routed_connections_handed":
            return {sample.labels["worker"]: sample.value for sample in family.samples}
    raise AssertionError("no relay_routed_connections_handed in /metrics")


def handed(metrics: str) -> float:
    """Connections handed from one worker to another so far, all workers."""
    return sum(handed_by(metrics).values())


def holders(metrics: str) -> dict[str, int]:
    """Each registered host name and the worker that holds it (/status)."""
    status = json.loads(get(metrics, "/status"))
    return {entry["host"]: entry["worker"] for entry in status["registrations"]}


def nginx_http(procs: Processes, directory: Path, labels: list[str]) -> dict[str, int]:
    """One nginx with an HTTP server per label answering ``service LABEL``; their ports."""
    directory.mkdir()
    ports = {label: free_port() for label in labels}
    servers = "".join(
        NGINX_HTTP_SERVER.format(host=HOST, port=port, label=label) for label, port in ports.items()
    )
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_TLS_CONF.format(dir=directory, servers=servers))
    proc = procs.start(
        [require_program("nginx"), "-p", str(directory), "-e", "stderr", "-c", str(conf)], "nginx"
    )

    def listening() -> bool:
        assert proc.popen.poll() is None, proc.describe()
        try:
            for port in ports.values():
                socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(listening, 15, interval=0.05, message="nginx listening")
    return ports


def register_across_workers(
    procs: Processes, control: int, metrics: str, ports: dict[str, int], per_forwarder: int
) -> tuple[dict[str, int], list[Proc]]:
    """One forwarder per ``per_forwarder`` services (``--service NAME=http:PORT``), until
    both workers hold some names; the worker of each name, and the forwarders."""
    labels = list(ports)
    forwarders = []
    for start in range(0, len(labels), per_forwarder):
        batch = labels[start : start + per_forwarder]
        services = [arg for label in batch for arg in ("--service", f"{label}=http:{ports[label]}")]
        forwarder = procs.start(
            [*relay_command(), "forward", "--reconnect-delay", "0.2", *services,
             f"{HOST}:{control}"],
            "forwarder",
        )  # fmt: skip
        forwarders.append(forwarder)
        for label in batch:
            forwarder.wait_line(rf"http://{label}\.{DOMAIN}:\d+/$", stream="stdout")
        held = holders(metrics)
        if set(held.values()) == {1, 2}:
            return held, forwarders
    raise AssertionError(f"every name went to one worker: {held}")


def test_names_on_shared_ports_reach_their_service_from_either_worker(
    procs: Processes, tmp_path: Path
) -> None:
    require_program("curl")
    require_program("haproxy")
    relay, control, http_port, tls_port, metrics = start_relay(procs)
    labels = [f"web{i}" for i in range(12)]
    held, _ = register_across_workers(
        procs, control, metrics, nginx_http(procs, tmp_path / "http", labels), 3
    )

    # Every name answers with its own service, whichever worker the kernel gives the
    # connection: some of them were handed on.
    names = [host.split(".")[0] for host in held]
    for attempt in range(40):
        label = names[attempt % len(names)]
        got = curl(f"{label}.{DOMAIN}", http_port)
        assert (got.returncode, got.stdout) == (0, f"service {label}\n"), got.stderr
    assert handed(metrics) > 0

    # Unknown names: the relay answers, after asking the supervisor, whichever worker.
    for _ in range(4):
        unknown = curl(f"nope.{DOMAIN}", http_port, "-i")
        assert unknown.stdout.startswith("HTTP/1.1 404 Not Found\n"), unknown
        assert f"no service is registered as nope.{DOMAIN}" in unknown.stdout

    # TLS passthrough by SNI through a handoff: the service's own certificate, verified.
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    tls = nginx_tls(procs, tls_dir, ["sec"])
    secure = procs.start(
        [*relay_command(), "forward", "--name", "sec", "--https", str(tls["sec"]),
         f"{HOST}:{control}"],
        "forwarder",
    )  # fmt: skip
    secure.wait_line(rf"^https://sec\.{DOMAIN}:{tls_port}/$", stream="stdout")
    before = handed(metrics)
    for _ in range(30):
        got = curl(f"sec.{DOMAIN}", tls_port, "--cacert", str(tls_dir / "ca.pem"), scheme="https")
        assert (got.returncode, got.stdout) == (0, "service sec over TLS\n"), got.stderr
        if handed(metrics) > before:
            break
    else:
        raise AssertionError("30 TLS connections, none handed on")
    unknown_tls = s_client(tls_port, f"nope.{DOMAIN}", tls_dir / "ca.pem")
    assert "alert number 112" in unknown_tls.stderr, unknown_tls.stderr

    # The service hears the real client's address (PROXY v2) after a handoff too.
    _, receiver = start_proxy_receiver(procs, "haproxy", require_program("haproxy"), tmp_path)
    who = procs.start(
        [*relay_command(), "forward", "--name", "who", "--route", "http",
         "--proxy-protocol", "v2", str(receiver), f"{HOST}:{control}"],
        "forwarder",
    )  # fmt: skip
    who.wait_line(rf"^http://who\.{DOMAIN}:{http_port}/$", stream="stdout")
    before = handed(metrics)
    for _ in range(30):
        with socket.create_connection(
            (HOST, http_port), timeout=10, source_address=(PUBLIC_CLIENT, 0)
        ) as sock:
            source = "{} {}".format(*sock.getsockname()[:2])
            sock.sendall(
                f"GET / HTTP/1.1\r\nHost: who.{DOMAIN}\r\nConnection: close\r\n\r\n".encode()
            )
            said = recv_all(sock).decode().rsplit("\r\n\r\n", 1)[-1].strip()
        assert said == source
        if handed(metrics) > before:
            break
    else:
        raise AssertionError("30 connections to who, none handed on")
    assert relay.alive()


def test_a_killed_worker_loses_only_its_names_until_they_register_again(
    procs: Processes, tmp_path: Path
) -> None:
    require_program("curl")
    relay, control, http_port, _, metrics = start_relay(procs)
    ports = nginx_http(procs, tmp_path / "http", [f"site{i}" for i in range(18)])
    spare = {label: ports.pop(label) for label in list(ports)[8:]}
    held, forwarders = register_across_workers(procs, control, metrics, ports, 2)
    status = json.loads(get(metrics, "/status"))
    victim = next(w for w in status["workers"] if w["worker"] == 1)
    survivors = [host.split(".")[0] for host, worker in held.items() if worker == 2]
    lost = [host.split(".")[0] for host, worker in held.items() if worker == 1]

    os.kill(victim["pid"], signal.SIGKILL)
    relay.wait_line(r"worker 1 \(pid \d+\) was killed by SIGKILL")
    for label in survivors * 3:  # the other worker's names answer all along
        got = curl(f"{label}.{DOMAIN}", http_port)
        assert (got.returncode, got.stdout) == (0, f"service {label}\n"), got.stderr

    # The killed worker's names come back once their forwarders registered again (on
    # either worker): no entry of the dead worker is left to keep them away.
    def back() -> bool:
        return all(
            curl(f"{label}.{DOMAIN}", http_port).stdout == f"service {label}\n" for label in lost
        )

    wait_until(back, 30, interval=0.2, message="the killed worker's names answer again")
    assert set(holders(metrics)) == set(held)
    for forwarder in forwarders:
        assert "(in worker 1 of this relay)" not in forwarder.stderr_text, forwarder.describe()
    for label in (survivors + lost) * 2:
        got = curl(f"{label}.{DOMAIN}", http_port)
        assert (got.returncode, got.stdout) == (0, f"service {label}\n"), got.stderr

    # The new worker 1 and worker 2 hand each other connections, both ways, on the fresh
    # line the supervisor made between them at the restart.
    held, _ = register_across_workers(procs, control, metrics, spare, 1)
    before = handed_by(metrics)
    names = [host.split(".")[0] for host in held]
    for attempt in range(80):
        label = names[attempt % len(names)]
        got = curl(f"{label}.{DOMAIN}", http_port)
        assert (got.returncode, got.stdout) == (0, f"service {label}\n"), got.stderr
        now = handed_by(metrics)
        if all(now[worker] > before.get(worker, 0) for worker in ("1", "2")):
            break
    else:
        raise AssertionError(f"80 connections, not handed both ways: {before} -> {now}")
    refused = [
        sample
        for family in text_string_to_metric_families(get(metrics, "/metrics"))
        if family.name == "relay_public_connections_refused"
        for sample in family.samples
        if sample.labels["reason"] == "route_handoff_failed"
    ]
    assert sum(sample.value for sample in refused) == 0, refused
