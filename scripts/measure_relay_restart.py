"""How long services are gone when the relay is SIGKILLed and restarted with its state dir.

    python3 scripts/measure_relay_restart.py [--downtime 0 2 10] [--rounds 3] [--settle 6]

One forwarder exposes a real redis-server and a real HTTP server
(``python -m http.server``) through a relay running registration v2 with
``--state-dir``; both services have names, so leases give them their ports
back. Each round SIGKILLs the relay, waits DOWNTIME seconds, starts it again
on the same control port and state dir, and measures until both services
answer on their old public ports again (redis PING through the relay, an HTTP
GET through the relay). The forwarder runs with the default backoff (0.5 s
doubling to 5 s, +-20 % jitter). Prints one line per round and a summary.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.ports import free_port
from testkit.procs import Proc, proc_group

HOST = "127.0.0.1"
NAMED = re.compile(r"^(\w+) 127\.0\.0\.1:(\d+)$")
RELAY = [sys.executable, "-m", "relay"]


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64) == b"+PONG\r\n"
    except OSError:
        return False


def http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_relay(group, port: int, state: Path) -> Proc:
    relay = group.start(
        [*RELAY, "--bind", HOST, "--protocol", "v2", "--state-dir", str(state), str(port)], "relay"
    )
    relay.wait_line(r"Serving relay requests on port")
    return relay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--downtime",
        type=float,
        nargs="+",
        default=[0.0, 2.0, 10.0],
        help="seconds the relay stays down (default: 0 2 10)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="restarts per downtime")
    parser.add_argument(
        "--settle",
        type=float,
        default=6.0,
        help="seconds the services serve before each kill (a session that "
        "lived at least the 5 s backoff cap resets the backoff)",
    )
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server is not installed (scripts/install-test-deps.sh)")
    with tempfile.TemporaryDirectory() as tmp, proc_group() as group:
        state = Path(tmp) / "state"
        redis_port, http_port, relay_port = free_port(), free_port(), free_port()
        redis = group.start(
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            "redis",
        )
        redis.wait_line("Ready to accept connections", stream="stdout")
        group.start(
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                HOST,
                "--directory",
                tmp,
                str(http_port),
            ],
            "http",
        )
        relay = start_relay(group, relay_port, state)
        forwarder = group.start(
            [
                *RELAY,
                "forward",
                "--service",
                f"redis={redis_port}",
                "--service",
                f"web={http_port}",
                HOST,
                str(relay_port),
            ],
            "forwarder",
        )
        ports: dict[str, int] = {}
        after = 0
        while len(ports) < 2:
            index, match = forwarder.wait_line(NAMED, stream="stdout", after=after)
            ports[match.group(1)] = int(match.group(2))
            after = index + 1
        print(f"redis on public port {ports['redis']}, web on {ports['web']}")
        results: dict[float, list[float]] = {}
        for downtime in args.downtime:
            for _ in range(args.rounds):
                while not (redis_ping(ports["redis"]) and http_ok(ports["web"])):
                    time.sleep(0.05)
                time.sleep(args.settle)
                relay.kill()
                time.sleep(downtime)
                relay = start_relay(group, relay_port, state)
                listening = time.monotonic()
                while not (redis_ping(ports["redis"]) and http_ok(ports["web"])):
                    if time.monotonic() - listening > 60:
                        sys.exit("services not back within 60 s\n" + group.describe())
                    time.sleep(0.02)
                back = time.monotonic() - listening
                results.setdefault(downtime, []).append(back)
                print(
                    f"relay down {downtime:4.1f} s: both services serving on their ports "
                    f"{back:.2f} s after the new relay listened",
                    flush=True,
                )
        print("\ndowntime  rounds  back after restart: median  max")
        for downtime, times in results.items():
            print(
                f"{downtime:7.1f} s  {len(times):6d}  {statistics.median(times):19.2f} s"
                f"  {max(times):.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
