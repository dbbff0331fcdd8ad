"""The examples, run as real programs behind the real relay; and examples/README.md followed."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import require_program

from relay_support import (
    ENDPOINT,
    EXAMPLES,
    HOST,
    SERVING,
    connection_refused,
    echo_roundtrip,
    free_port,
    relay_command,
    wait_until,
)

pytestmark = pytest.mark.e2e


def start_example(procs, name: str, *args: str):
    proc = procs.start([sys.executable, str(EXAMPLES / name), *args], name)
    _, match = proc.wait_line(ENDPOINT, stream="stdout")
    return proc, int(match.group(1))


def test_echo_example(procs):
    _, relay_port = procs.relay()
    echo, public_port = start_example(procs, "echo_server.py", HOST, str(relay_port))
    payloads = [os.urandom(n) for n in (1, 1000, 300_000, 2_000_000)] * 5
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        assert list(pool.map(lambda p: echo_roundtrip(public_port, p), payloads)) == payloads
    echo.send_signal(signal.SIGINT)
    assert echo.wait(10) == 130
    assert "Traceback" not in echo.stderr_text
    wait_until(lambda: connection_refused(public_port), timeout=2)


def test_echo_example_survives_a_relay_restart_on_the_same_port(procs, tmp_path):
    relay_args = ("--protocol", "v2", "--state-dir", str(tmp_path / "state"))
    relay, relay_port = procs.relay(*relay_args)
    echo, public_port = start_example(procs, "echo_server.py", HOST, str(relay_port), "echo")
    assert echo_roundtrip(public_port, b"before\n") == b"before\n"
    relay.kill()  # SIGKILL: no goodbye
    echo.wait_line(r"^lost the relay at 127\.0\.0\.1:\d+: .*; public endpoint .* is gone")
    procs.relay(*relay_args, port=relay_port)
    _, match = echo.wait_line(ENDPOINT, stream="stdout", after=1)  # a second endpoint line
    assert int(match.group(1)) == public_port  # the name's lease survived the relay
    assert echo_roundtrip(public_port, b"after\n") == b"after\n"
    assert echo.popen.poll() is None
    assert "Traceback" not in echo.stderr_text


def test_echo_example_reports_a_missing_relay(procs):
    proc = procs.start(
        [sys.executable, str(EXAMPLES / "echo_server.py"), HOST, str(free_port())], "echo_server.py"
    )
    assert proc.wait(15) == 1
    assert proc.stderr_text.startswith("echo_server: ")
    assert "Traceback" not in proc.stderr_text


def get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def test_web_example_over_http(procs):
    _, relay_port = procs.relay()
    web, public_port = start_example(procs, "web_server.py", HOST, str(relay_port))
    base = f"http://{HOST}:{public_port}"

    status, headers, body = get(f"{base}/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<h1>Hello through the relay</h1>" in body
    assert get(f"{base}/hello?name=relay")[2] == b"hello, relay\n"
    big = os.urandom(1024 * 1024)
    status, headers, body = get(
        f"{base}/echo", data=big, headers={"Content-Type": "application/octet-stream"}
    )
    assert (status, body) == (200, big)
    document = json.dumps({"through": "relay"}).encode()
    status, headers, body = get(
        f"{base}/echo", data=document, headers={"Content-Type": "application/json"}
    )
    assert (headers["Content-Type"], body) == ("application/json", document)
    with pytest.raises(urllib.error.HTTPError) as not_found:
        get(f"{base}/nope")
    not_found.value.close()  # an HTTPError holds its response's socket
    assert not_found.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as not_allowed:
        get(f"{base}/", data=b"x")
    not_allowed.value.close()
    assert not_allowed.value.code == 405
    assert not_allowed.value.headers["Allow"] == "GET, HEAD"

    # HTTP/1.1 keep-alive: several requests on one relayed connection.
    connection = http.client.HTTPConnection(HOST, public_port, timeout=10)
    try:
        for i in range(5):
            connection.request("GET", f"/hello?name=n{i}")
            response = connection.getresponse()
            assert response.read() == f"hello, n{i}\n".encode()
            if i == 0:
                sock = connection.sock
            assert connection.sock is sock  # the same connection every time
        connection.request("HEAD", "/")
        response = connection.getresponse()
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""
    finally:
        connection.close()

    # 50 parallel clients.
    with ThreadPoolExecutor(max_workers=50) as pool:
        bodies = list(pool.map(lambda i: get(f"{base}/hello?name={i}")[2], range(50)))
    assert bodies == [f"hello, {i}\n".encode() for i in range(50)]

    curl = require_program("curl")
    done = subprocess.run(
        [curl, "-sS", "--max-time", "10", f"{base}/health"], capture_output=True, timeout=20
    )
    assert done.stdout == b"ok\n", done.stderr
    web.send_signal(signal.SIGINT)
    assert web.wait(10) == 130
    assert "Traceback" not in web.stderr_text


def test_web_example_direct_mode_is_the_same_handler(procs):
    _, port = start_example(procs, "web_server.py", "--direct", "0")
    assert get(f"http://{HOST}:{port}/hello?name=direct")[2] == b"hello, direct\n"


# ------------------------------------------------------------- examples/README.md

README = (EXAMPLES / "README.md").read_text()


def console_blocks(section: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` from the README's console blocks of a section."""
    start = README.index(section)
    end = README.index("\n## ", start + 1)
    commands: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", README[start:end], re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
    return commands


def test_readme_redis_walkthrough_as_written(procs):
    """Run the walkthrough's commands exactly as written; only the ports are replaced."""
    redis_server = require_program("redis-server")
    redis_cli = require_program("redis-cli")
    ports = {"7000": free_port(), "6379": free_port()}

    def substitute(command: str) -> list[str]:
        text = re.sub(r"\b(7000|6379|40123)\b", lambda m: str(ports[m.group(1)]), command)
        return shlex.split(text)

    steps = console_blocks("## Walkthrough")
    assert [c.split()[0] for c, _ in steps] == ["relay", "redis-server", "relay"] + [
        "redis-cli"
    ] * 4
    for command, expected in steps:
        argv = substitute(command)
        if argv[0] == "relay" and not any(a.startswith("--localForwardPort") for a in argv):
            relay = procs.start([*relay_command(), *argv[1:]], "relay")
            relay.wait_line(SERVING)
            shown = re.sub(r"\b7000\b", str(ports["7000"]), expected[0])
            assert shown.split(" relay.server: ")[1] in relay.stderr_text
        elif argv[0] == "redis-server":
            redis = procs.start([redis_server, *argv[1:]], "redis-server")
            redis.wait_line(r"Ready to accept connections", stream="stdout")
        elif argv[0] == "relay":
            forwarder = procs.start([*relay_command(), *argv[1:]], "forwarder")
            _, match = forwarder.wait_line(ENDPOINT, stream="stdout")
            ports["40123"] = int(match.group(1))
            assert ENDPOINT.match(expected[0])
        else:  # redis-cli, formatted as on a terminal (--no-raw) like the README shows
            done = subprocess.run(
                [redis_cli, "--no-raw", *argv[1:]], capture_output=True, text=True, timeout=20
            )
            assert done.stdout.splitlines() == expected, (command, done.stderr)


def test_readme_api_snippet_runs(procs, tmp_path):
    _, relay_port = procs.relay()
    snippet = re.search(r"## Your own server\n\n```python\n(.*?)```", README, re.S).group(1)
    script = tmp_path / "own_server.py"
    script.write_text(snippet.replace("7000", str(relay_port)))
    proc = procs.start([sys.executable, str(script)], "own_server")
    _, match = proc.wait_line(r"public endpoint: 127\.0\.0\.1:(\d+)", stream="stdout")
    assert echo_roundtrip(int(match.group(1)), b"one line\n") == b"one line\n"
