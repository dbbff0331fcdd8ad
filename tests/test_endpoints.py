"""Stable endpoints with real processes: requested ports, leases, restarts.

The relay runs registration v2 (``--protocol v2``, no secret: names are only
claimed) so that forwarders can send ``name=`` and ``port=``. Services are a
real redis-server and a real HTTP server (``python -m http.server``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import require_program

from relay_support import (
    ECHO_SCRIPT,
    HOST,
    RespReader,
    connection_refused,
    echo_roundtrip,
    free_port,
    free_port_block,
    relay_command,
    resp_command,
    wait_until,
)

pytestmark = pytest.mark.e2e

V2 = ("--protocol", "v2")
FAST = ("--reconnect-delay", "0.2", "--reconnect-max-delay", "1")
NAMED = re.compile(r"^(\w+) 127\.0\.0\.1:(\d+)$")


def redis_call(port: int, *command: str, timeout: float = 5.0):
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(resp_command(*command))
        return RespReader(sock).reply()


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as response:
        assert response.status == 200
        return response.read()


def serving(check) -> bool:
    try:
        check()
    except (OSError, ConnectionError, AssertionError):
        return False
    return True


def endpoints(forwarder, count: int, after: int = 0) -> dict[str, int]:
    """The next ``count`` ``NAME HOST:PORT`` lines of a several-services forwarder."""
    found: dict[str, int] = {}
    while len(found) < count:
        index, match = forwarder.wait_line(NAMED, stream="stdout", after=after)
        found[match.group(1)] = int(match.group(2))
        after = index + 1
    return found


def test_requested_port_granted_refused_when_taken_or_outside_the_range(procs, echo_port, tmp_path):
    low, high = free_port_block(3)
    relay, relay_port = procs.relay(
        *V2, "--port-range", f"{low}-{high}", "--state-dir", str(tmp_path)
    )
    alpha, port = procs.forwarder(
        relay_port, echo_port, "--name", "alpha", "--remote-port", str(low + 1)
    )
    assert port == low + 1
    assert echo_roundtrip(port) == b"ping through the relay\n"

    def refused(status: int, *args: str) -> str:
        """A taken port may free up (exit 1 without reconnecting); one outside the range
        never will (78, a permanent refusal)."""
        proc = procs.start_forwarder(relay_port, echo_port, "--no-reconnect", *args)
        assert proc.wait(15) == status
        assert proc.stdout_text == ""
        return proc.stderr_text

    assert f"relay refused the registration: port {low + 1} is in use by another client" in refused(
        1, "--name", "beta", "--remote-port", str(low + 1)
    )
    assert (
        f"relay refused the registration: port {high + 1} is outside the relay's port "
        f"range {low}-{high}" in refused(78, "--name", "beta", "--remote-port", str(high + 1))
    )
    relay.wait_line(rf"refusing registration from 127\.0\.0\.1:\d+: port {high + 1} is outside")
    # Its owner gone, the port stays reserved for it, for anyone else.
    alpha.kill()
    relay.wait_line(rf"ended: .*public port {port} closed")
    assert connection_refused(port)
    assert (
        f"port {low + 1} is reserved for another client, which is away (a lease ends after "
        f"24 h unused)" in refused(1, "--name", "beta", "--remote-port", str(low + 1))
    )
    _, again = procs.forwarder(relay_port, echo_port, "--name", "alpha")
    assert again == low + 1  # no --remote-port needed: the lease


def test_forwarder_killed_and_restarted_with_its_name_gets_its_port(procs, echo_port, tmp_path):
    low, high = free_port_block(2)
    relay, relay_port = procs.relay(*V2, "--port-range", f"{low}-{high}")
    named, port = procs.forwarder(relay_port, echo_port, "--name", "redis")
    assert echo_roundtrip(port) == b"ping through the relay\n"
    named.kill()  # SIGKILL
    relay.wait_line(rf"ended: .*public port {port} closed")
    # Meanwhile strangers get the other port, never this one ...
    _, other = procs.forwarder(relay_port, echo_port)
    assert other != port
    stranger = procs.start_forwarder(relay_port, echo_port, "--no-reconnect")
    assert stranger.wait(15) == 1
    assert "(1 reserved for clients that are away)" in stranger.stderr_text
    # ... and the same name, restarted, gets it back.
    _, again = procs.forwarder(relay_port, echo_port, "--name", "redis")
    assert again == port
    assert echo_roundtrip(again, b"back\n") == b"back\n"


def test_two_services_one_forwarder_stable_across_restarts_of_both_sides(procs, tmp_path):
    """redis and an HTTP server through one forwarder; SIGKILL the forwarder, then the relay."""
    redis_server = require_program("redis-server")
    _, redis_port = procs.redis(redis_server)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.txt").write_bytes(b"served over the relay\n" * 1000)
    http_port = free_port()
    procs.start(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            HOST,
            "--directory",
            str(site),
            str(http_port),
        ],
        "http.server",
    )
    wait_until(lambda: serving(lambda: http_get(http_port, "/index.txt")), timeout=15)
    state = tmp_path / "state"
    relay, relay_port = procs.relay(*V2, "--state-dir", str(state))
    services = ("--service", f"redis={redis_port}", "--service", f"web={http_port}", *FAST)
    forwarder = procs.start(
        [*relay_command(), "forward", *services, HOST, str(relay_port)], "forwarder"
    )
    ports = endpoints(forwarder, 2)
    assert ports["redis"] != ports["web"]

    def check_both(tag: str) -> None:
        assert redis_call(ports["redis"], "SET", "greeting", tag) == "OK"
        assert redis_call(ports["redis"], "GET", "greeting") == tag.encode()
        assert redis_call(redis_port, "GET", "greeting") == tag.encode()  # really that redis
        assert http_get(ports["web"], "/index.txt") == b"served over the relay\n" * 1000

    check_both("first")
    # The forwarder dies (SIGKILL) and comes back: the same two ports.
    forwarder.kill()
    forwarder = procs.start(
        [*relay_command(), "forward", *services, HOST, str(relay_port)], "forwarder"
    )
    assert endpoints(forwarder, 2) == ports
    check_both("after the forwarder's restart")
    # The relay dies (SIGKILL) and comes back with the same state dir: the same two ports.
    relay.kill()
    killed = time.monotonic()
    procs.relay(*V2, "--state-dir", str(state), port=relay_port)
    restarted = time.monotonic()
    wait_until(
        lambda: serving(lambda: check_both("after the relay's restart")), timeout=20, interval=0.05
    )
    back = time.monotonic()
    assert endpoints(forwarder, 2, after=2) == ports
    print(
        f"\nrelay SIGKILLed and restarted (state dir kept): both services serving on their "
        f"ports {back - restarted:.2f} s after the new relay listened "
        f"({back - killed:.2f} s after the kill)"
    )


def test_an_auth_file_clients_services_each_keep_their_port(procs, echo_port, tmp_path):
    """``--client-name`` with an auth file and two services that ask for no port: each is
    its own identity (``service=``), so each gets its own port back after a SIGKILL."""
    secret = "alice's secret, long enough"
    auth = tmp_path / "auth.toml"
    auth.write_text(f'[clients.alice]\nsecret = "{secret}"\n')
    _, relay_port = procs.relay("--auth-file", str(auth), "--state-dir", str(tmp_path / "s"))
    command = [
        *relay_command(),
        "forward",
        "--client-name",
        "alice",
        "--secret",
        secret,
        "--service",
        f"db={echo_port}",
        "--service",
        f"cache={echo_port}",
        *FAST,
        HOST,
        str(relay_port),
    ]
    forwarder = procs.start(command, "forwarder")
    ports = endpoints(forwarder, 2)
    assert ports["db"] != ports["cache"]
    assert echo_roundtrip(ports["cache"]) == b"ping through the relay\n"
    forwarder.kill()
    forwarder = procs.start(command, "forwarder")
    assert endpoints(forwarder, 2) == ports
    assert echo_roundtrip(ports["db"]) == b"ping through the relay\n"


def test_state_dir_in_use_by_another_relay_is_a_clear_error(procs, tmp_path):
    procs.relay("--state-dir", str(tmp_path))
    second = procs.start(
        [*relay_command(), "--bind", HOST, "--state-dir", str(tmp_path), str(free_port())], "relay2"
    )
    assert second.wait(15) == 1
    assert re.search(
        rf"state directory {re.escape(str(tmp_path))} is in use by another relay "
        r"\(pid \d+\)",
        second.stderr_text,
    ), second.stderr_text


def test_corrupt_lease_store_is_moved_aside_and_the_relay_serves(procs, echo_port, tmp_path: Path):
    (tmp_path / "leases.sqlite3").write_bytes(b"garbage, not SQLite\n" * 64)
    relay, relay_port = procs.relay(*V2, "--state-dir", str(tmp_path))
    assert re.search(
        r"ERROR relay.leases: lease store .* is unreadable \(.*\); moved it to "
        r".*leases\.sqlite3\.corrupt-\d+T\d+ and starting with no leases",
        relay.stderr_text,
    ), relay.stderr_text
    _, port = procs.forwarder(relay_port, echo_port, "--name", "svc")
    assert echo_roundtrip(port) == b"ping through the relay\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--service", "redis", "h:1"],
            "'redis' is not NAME=[LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]",
        ),
        (["--service", "a=1", "--service", "a=2", "h:1"], "service names must differ"),
        (
            ["--service", "a=1", "--name", "b", "h:1"],
            "--name, --remote-port and --route apply to a single",
        ),
        (["--name", "no spaces", "1", "h:1"], "'--name': 'no spaces': may only contain"),
        (["--remote-port", "0", "1", "h:1"], "'--remote-port'"),
    ],
)
def test_service_options_usage_errors(args, message):
    done = subprocess.run(
        [*relay_command(), "forward", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_local_port_and_more_services_in_one_command(procs, echo_port):
    _, other_port = procs.script(ECHO_SCRIPT, "0", name="echo2")
    _, relay_port = procs.relay(*V2)
    forwarder = procs.start(
        [
            *relay_command(),
            "forward",
            "--name",
            "first",
            str(echo_port),
            f"{HOST}:{relay_port}",
            "--service",
            f"second={other_port}",
        ],
        "forwarder",
    )
    ports = endpoints(forwarder, 2)
    for port in ports.values():
        assert echo_roundtrip(port) == b"ping through the relay\n"


def test_config_file_services_ask_for_their_ports(procs, echo_port, tmp_path):
    low, high = free_port_block(2)
    _, relay_port = procs.relay(*V2, "--port-range", f"{low}-{high}")
    config = tmp_path / "services.toml"
    config.write_text(
        f'[forward]\nrelay = "{HOST}:{relay_port}"\n'
        f'[[forward.services]]\nname = "one"\nlocal-port = {echo_port}\nremote-port = {high}\n'
        f'[[forward.services]]\nname = "two"\nlocal-port = {echo_port}\n'
    )
    forwarder = procs.start([*relay_command(), "forward", "--config", str(config)], "forwarder")
    assert endpoints(forwarder, 2) == {"one": high, "two": low}


def test_state_dir_alone_is_enough_for_names(procs, echo_port, tmp_path):
    """--state-dir implies registration v2: the name reaches the relay without --protocol."""
    relay, relay_port = procs.relay("--state-dir", str(tmp_path))
    named, port = procs.forwarder(relay_port, echo_port, "--name", "svc")
    named.kill()
    relay.wait_line(rf"ended: .*public port {port} closed")
    _, again = procs.forwarder(relay_port, echo_port, "--name", "svc")
    assert again == port
    assert "not used" not in named.stderr_text


def test_a_name_against_a_seed_relay_says_it_is_not_used(procs, echo_port):
    _, relay_port = procs.relay()
    forwarder, port = procs.forwarder(
        relay_port, echo_port, "--name", "svc", "--remote-port", str(free_port())
    )
    forwarder.wait_line(
        r"the relay speaks the seed protocol .*: a client name, port \d+ not "
        r"used \(they need a relay with --protocol v2 or --state-dir\)"
    )
    assert echo_roundtrip(port) == b"ping through the relay\n"


def test_docs_stable_endpoints_example_as_written(procs, echo_port, tmp_path):
    """docs/operations.md's console block, run with only hosts, ports and the state dir replaced."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = doc[doc.index("## Stable endpoints") :]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    low, _ = free_port_block(3)
    ports = {
        "7000": str(free_port()),
        "7200": str(low),
        "7201": str(low + 1),
        "7202": str(low + 2),
        "7299": str(low + 2),
        "6379": str(echo_port),
        "8080": str(echo_port),
        "11211": str(echo_port),
    }

    def substitute(text: str) -> str:
        text = text.replace("relay.example.com", HOST).replace("/var/lib/relay", str(tmp_path))
        return re.sub(
            r"\b(7000|7200|7201|7202|7299|6379|8080|11211)\b", lambda m: ports[m.group(1)], text
        )

    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("#")[0].strip(), []))
        else:
            steps[-1][1].append(substitute(line))
    assert [command.split()[:2] for command, _ in steps] == [
        ["relay", "server"],
        ["relay", "forward"],
        ["relay", "forward"],
    ]
    for command, expected in steps:
        argv = substitute(command).split()
        argv[:1] = relay_command()
        if "server" in argv:
            argv.insert(argv.index("server") + 1, "--bind=" + HOST)
            procs.start(argv, "relay").wait_line(r"Serving relay requests")
            continue
        proc = procs.start(argv, "forwarder")
        after = 0
        got = []
        for _ in expected:
            index, _match = proc.wait_line(r"127\.0\.0\.1:\d+$", stream="stdout", after=after)
            got.append(proc.stdout[index])
            after = index + 1
        assert sorted(got) == sorted(expected)
    for port in (low, low + 1, low + 2):
        assert echo_roundtrip(port) == b"ping through the relay\n"
