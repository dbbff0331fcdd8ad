"""``python -m bench --routing``: what reaching a service by name costs next to its own port.

One relay (``--domain bench.test --http-port 0 --tls-port 0``) and one
forwarder registering interop's echo-server three times: ``plain`` on a port
of its own, ``web`` by name on the shared HTTP port (``--service
web=http:ECHO``), ``sec`` by name on the shared TLS port. The load generator
(``loadgen connrate``) sends every connection the same first bytes on each
path, reads them back from the echo service, exchanges 64 bytes and closes: an
HTTP request head naming ``web.bench.test`` (compared on the dedicated port and
the HTTP port), and a real ClientHello naming ``sec.bench.test`` (made by
Python's ssl module; dedicated port and TLS port). So the only difference
between two paths is the relay reading the name and finding the session.

A busy machine must slow both paths alike, so each run of the load generator
alternates the two paths connection by connection (``connrate -addr-b``) and
reports each path's cycles (connect, head, exchange, close) apart. Rows: the
median cycle with one connection at a time, and the rate with 16 in flight,
16 / the path's mean cycle (Little's law: what 16 clients on that path alone
would get). "added p50" is routed minus dedicated in the same run, "rate" is
routed / dedicated in the same run; each is the median over every pair of
runs (one at a time, 16 in flight).

The last line is the relay's routing code alone, in process and without sockets
(``code_cost``): a connection on each shared port from its first bytes to the
hand-over, over a transport that does nothing; what the loop, the kernel and
the order of events add is in the rows above.

``--workers 2``: the relay runs two workers, and the kernel gives a connection
on a shared port to either, so about half of them are handed to the worker
that holds the name; the table then compares that mix with the dedicated port
(which only the holder listens on). A second table splits the two: one
connection at a time from this process (connect, the first bytes echoed, 64
bytes, close), each counted as handed or not by the relay's
``relay_routed_connections_handed`` before and after it (``handoff_split``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from prometheus_client.parser import text_string_to_metric_families

from bench.processes import BUILD_DIR, HOST, build_go, log, run_to_end, start, stop_all, wait_for
from relay.options import RelayOptions
from relay.server.accept import accept_log
from relay.server.session import RegisteredSession
from relay.server.shared_ports import Peek, SharedPorts
from relay.stats import RelayStats
from relay.wire.route import Route, RouteKind
from testkit.ports import free_port

DOMAIN = "bench.test"
HTTP_HEAD = f"GET / HTTP/1.1\r\nHost: web.{DOMAIN}\r\nUser-Agent: loadgen\r\n\r\n".encode()


def client_hello(server_name: str) -> bytes:
    """The first flight of a real TLS client (OpenSSL) for ``server_name``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise RuntimeError("a TLS handshake finished without a server")


class _Transport(asyncio.Transport):
    """Takes nothing, says who the peer is."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (HOST, 40000) if name == "peername" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass


class _Session:
    ending = False


def code_cost(batch: int = 5000, repeat: int = 7) -> dict[RouteKind, float]:
    """Microseconds of the relay's code per routed connection: ``Peek`` from
    ``connection_made`` to the hand-over, by kind (the best of ``repeat`` batches)."""

    async def measure() -> dict[RouteKind, float]:
        options = RelayOptions.build(None, domain=DOMAIN, http_port=0, tls_port=0)
        ports = SharedPorts(options, lambda session, end, first: None, RelayStats(), accept_log())
        heads: dict[RouteKind, bytes] = {"http": HTTP_HEAD, "tls": client_hello(f"sec.{DOMAIN}")}
        names: dict[RouteKind, str] = {"http": "web", "tls": "sec"}
        for kind, name in names.items():
            ports.routes.add(
                Route(kind, f"{name}.{DOMAIN}", 1), cast(RegisteredSession, _Session())
            )
        best: dict[RouteKind, float] = {}
        for kind, head in heads.items():
            times = []
            for _ in range(repeat):
                transports = [_Transport() for _ in range(batch)]
                started = time.perf_counter()
                for transport in transports:
                    peek = Peek(ports, kind)
                    peek.connection_made(transport)
                    peek.data_received(head)
                times.append((time.perf_counter() - started) / batch * 1e6)
            best[kind] = min(times)
        ports.close()
        return best

    return asyncio.run(measure())


def start_paths(python: str, event_loop: str, logdir: Path, workers: int) -> dict[str, str]:
    """Relay, echo server and forwarder; the address of each path (and of the relay's
    metrics with several workers)."""
    echo = start("echo-server", [str(BUILD_DIR / "echo-server"), "-addr", f"{HOST}:0"], logdir)
    echo_port = wait_for(echo, r"^\S+:(\d+)$", 10).group(1)
    control = free_port()
    relay = start(
        "relay",
        [
            python,
            "-m",
            "relay",
            "server",
            "--bind",
            HOST,
            "--event-loop",
            event_loop,
            "--domain",
            DOMAIN,
            "--http-port",
            "0",
            "--tls-port",
            "0",
            "--max-connections",
            "100000",
            "--no-connection-log",
            "--workers",
            str(workers),
            *(["--metrics", f"{HOST}:0"] if workers > 1 else []),
            str(control),
        ],
        logdir,
    )
    names = wait_for(relay, r"HTTP on port (\d+) \(by Host\); TLS on port (\d+)", 10, "stderr")
    metrics = (
        wait_for(relay, r"metrics on http://(\S+)/metrics", 10, "stderr").group(1)
        if workers > 1
        else ""
    )
    forwarder = start(
        "forwarder",
        [
            python,
            "-m",
            "relay",
            "forward",
            "--event-loop",
            event_loop,
            "--no-connection-log",
            "--service",
            f"plain={echo_port}",
            "--service",
            f"web=http:{echo_port}",
            "--service",
            f"sec=tls:{echo_port}",
            f"{HOST}:{control}",
        ],
        logdir,
    )
    plain = wait_for(forwarder, r"^plain \S+:(\d+)$", 10).group(1)
    wait_for(forwarder, r"^web http://web", 10)
    wait_for(forwarder, r"^sec https://sec", 10)
    return {
        "dedicated": f"{HOST}:{plain}",
        "http": f"{HOST}:{names.group(1)}",
        "tls": f"{HOST}:{names.group(2)}",
        "metrics": metrics,
    }


def handed_so_far(metrics: str) -> float:
    """``relay_routed_connections_handed``, all workers."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "relay_routed_connections_handed"
        for sample in family.samples
    )


def _read(sock: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise ConnectionError("the relay closed the connection early")
        got += len(chunk)


def handoff_split(address: str, metrics: str, head: bytes, count: int) -> dict[str, list[float]]:
    """Microseconds of each of ``count`` connections, one at a time, by whether the relay
    handed it to the other worker ("handed") or the worker that accepted it held the name
    ("within")."""
    host, port = address.rsplit(":", 1)
    cycles: dict[str, list[float]] = {"handed": [], "within": []}
    before = handed_so_far(metrics)
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(head)
            _read(sock, len(head))
            sock.sendall(bytes(64))
            _read(sock, 64)
        elapsed = (time.perf_counter() - started) * 1e6
        after = handed_so_far(metrics)
        cycles["handed" if after > before else "within"].append(elapsed)
        before = after
    return cycles


def render_split(addresses: dict[str, str], count: int) -> str:
    lines = [
        "| first bytes | within the worker that holds the name: p50 (us) | handed to it: "
        "p50 (us) | added by the handoff (us) | handed / all |",
        "|---|---|---|---|---|",
    ]
    heads = (("http", "HTTP request head", HTTP_HEAD), ("tls", "TLS ClientHello", None))
    for kind, what, head in heads:
        first = head if head is not None else client_hello(f"sec.{DOMAIN}")
        cycles = handoff_split(addresses[kind], addresses["metrics"], first, count)
        within, handed = (statistics.median(cycles[k]) for k in ("within", "handed"))
        lines.append(
            f"| {what} | {within:.0f} | {handed:.0f} | {handed - within:+.0f} | "
            f"{len(cycles['handed'])} / {count} |"
        )
    lines.append("")
    lines.append(f"{count} connections per kind, one at a time, from Python (both alike)")
    return "\n".join(lines)


def connrate(
    address: str,
    head: bytes,
    concurrency: int,
    seconds: float,
    logdir: Path,
    also: str | None = None,
) -> dict[str, float]:
    """``loadgen connrate``; with ``also`` its connections alternate between the two."""
    proc = start(
        "loadgen",
        [
            str(BUILD_DIR / "loadgen"),
            "connrate",
            "-addr",
            address,
            *(["-addr-b", also] if also else []),
            "-concurrency",
            str(concurrency),
            "-duration",
            f"{seconds}s",
            "-head-hex",
            head.hex(),
        ],
        logdir,
    )
    if run_to_end(proc, seconds + 60) != 0:
        raise RuntimeError(f"loadgen failed: {proc.tail()}")
    result: dict[str, float] = json.loads(proc.stdout_text.strip().splitlines()[-1])
    return result


def measure(
    addresses: dict[str, str], repeat: int, pairs: int, seconds: float, logdir: Path
) -> dict[str, list[float]]:
    """Per (head, path, measure) and per (head, added|ratio): one number per pair of runs."""
    hello = client_hello(f"sec.{DOMAIN}")
    heads = [("http", HTTP_HEAD), ("tls", hello)]
    runs: dict[str, list[float]] = {}
    for round_ in range(repeat):
        for kind, head in heads:
            for pair in range(pairs):
                # Which path a connection takes alternates; which one goes first, too.
                first, second = ("dedicated", kind) if pair % 2 == 0 else (kind, "dedicated")
                one = connrate(addresses[first], head, 1, seconds, logdir, addresses[second])
                many = connrate(addresses[first], head, 16, seconds, logdir, addresses[second])
                p50 = {first: one["cycle_p50_us"], second: one["b_cycle_p50_us"]}
                rate = {first: 16e6 / many["cycle_mean_us"], second: 16e6 / many["b_cycle_mean_us"]}
                for path in ("dedicated", kind):
                    runs.setdefault(f"{kind} {path} p50", []).append(p50[path])
                    runs.setdefault(f"{kind} {path} rate", []).append(rate[path])
                runs.setdefault(f"{kind} added", []).append(p50[kind] - p50["dedicated"])
                runs.setdefault(f"{kind} ratio", []).append(rate[kind] / rate["dedicated"])
                log(
                    f"round {round_ + 1}.{pair + 1} {kind}: dedicated p50 {p50['dedicated']:.0f} "
                    f"us {rate['dedicated']:.0f} conn/s; by name p50 {p50[kind]:.0f} us "
                    f"{rate[kind]:.0f} conn/s"
                )
    return runs


def render(runs: dict[str, list[float]], repeat: int, pairs: int) -> str:
    median = {key: statistics.median(values) for key, values in runs.items()}
    lines = [
        "| first bytes | path | p50 cycle, 1 at a time (us) | conn/s, 16 in flight | "
        "added p50 (us) | rate vs dedicated |",
        "|---|---|---|---|---|---|",
    ]
    for kind, what in (("http", "HTTP request head"), ("tls", "TLS ClientHello")):
        base = [median[f"{kind} dedicated {m}"] for m in ("p50", "rate")]
        p50, rate = (median[f"{kind} {kind} {m}"] for m in ("p50", "rate"))
        lines.append(f"| {what} | dedicated port | {base[0]:.0f} | {base[1]:.0f} | | |")
        lines.append(
            f"| {what} | shared {kind.upper()} port, by name | {p50:.0f} | {rate:.0f} | "
            f"{median[f'{kind} added']:+.0f} | {median[f'{kind} ratio']:.2f}x |"
        )
    lines.append("")
    lines.append(
        f"medians of {repeat} repetitions x {pairs} pairs of alternating runs; added p50 and "
        f"rate: the median of the pairs' differences and ratios"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench --routing", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--pairs", type=int, default=3, help="pairs of runs per repetition (3)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each run (default 1)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of relay and forwarder")
    ap.add_argument(
        "--event-loop", default="auto", choices=("auto", "asyncio", "uvloop"), help="of both"
    )
    ap.add_argument("--no-build", action="store_true", help="use interop/build/ as it is")
    ap.add_argument("--workers", type=int, default=1, help="relay processes (default 1)")
    ap.add_argument(
        "--split", type=int, default=400, help="connections per kind for the handoff split (400)"
    )
    args = ap.parse_args(argv)
    if not args.no_build:
        build_go()
    logdir = Path(tempfile.mkdtemp(prefix="relay-bench-routing-"))
    try:
        addresses = start_paths(args.python, args.event_loop, logdir, args.workers)
        runs = measure(addresses, args.repeat, args.pairs, args.seconds, logdir)
        print(render(runs, args.repeat, args.pairs), flush=True)
        if args.workers > 1:
            print(render_split(addresses, args.split), flush=True)
        cost = code_cost()
        print(
            f"routing code alone, in process: HTTP {cost['http']:.1f} us, "
            f"TLS {cost['tls']:.1f} us per connection",
            flush=True,
        )
    finally:
        stop_all()
        shutil.rmtree(logdir, ignore_errors=True)
    return 0
