"""The status page at ``/`` of --metrics, in a real headless browser (Debian's chromium).

A relay with named clients, a redis-server and echo services behind two forwarders,
redis-benchmark traffic and a connection held open; the page must show them after its
own JavaScript fetched /status, and keep refreshing. ``RELAY_SCREENSHOT_DIR=docs`` also
writes the screenshot that docs/operations.md shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from browser_support import SCREENSHOT, dump_dom, screenshot, tables, texts
from conftest import require_program

from relay_support import ECHO_SCRIPT, HOST, REPO, Processes, relay_command

METRICS = r"metrics on http://([\d.]+:\d+)/metrics"
PAGE = REPO / "relay" / "ops" / "status.html"


def endpoint_of(proc, name: str) -> int:  # type: ignore[no-untyped-def]
    return int(proc.wait_line(rf"^{name}[\d.]+:(\d+)$", stream="stdout")[1].group(1))


@pytest.mark.e2e
def test_the_status_pages_of_a_relay_and_a_forwarder(procs: Processes, tmp_path: Path) -> None:
    redis_port = procs.redis(require_program("redis-server"))[1]
    echo_port = procs.script(ECHO_SCRIPT, "0", name="echo")[1]
    auth = tmp_path / "clients.toml"
    auth.write_text(
        '[clients.alice]\nsecret = "alice: 5d1f0c8e7b2a9e4c3f6d8a1b0e7c2f94"\n'
        '[clients.bob]\nsecret = "bob: a83c0e5f1d7b294e6c0f8b3a2d9e1c75"\n'
    )
    relay, relay_port = procs.relay("--auth-file", str(auth), "--metrics", f"{HOST}:0")
    relay_page = relay.wait_line(METRICS)[1].group(1)
    alice = procs.start(
        [
            *relay_command(),
            *(
                "forward",
                "--client-name",
                "alice",
                "--secret",
                "alice: 5d1f0c8e7b2a9e4c3f6d8a1b0e7c2f94",
            ),
            *("--metrics", f"{HOST}:0", "--service", f"cache={redis_port}"),
            *("--service", f"web={echo_port}", f"{HOST}:{relay_port}"),
        ],
        "alice",
    )
    forwarder_page = alice.wait_line(METRICS)[1].group(1)
    bob = procs.start(
        [
            *relay_command(),
            *(
                "forward",
                "--client-name",
                "bob",
                "--secret",
                "bob: a83c0e5f1d7b294e6c0f8b3a2d9e1c75",
            ),
            *("--service", f"api={echo_port}", f"{HOST}:{relay_port}"),
        ],
        "bob",
    )
    cache, web = endpoint_of(alice, "cache "), endpoint_of(alice, "web ")
    api = endpoint_of(bob, "")  # one service: the endpoint alone
    subprocess.run(
        [
            *(require_program("redis-benchmark"), "-h", HOST, "-p", str(cache), "-q"),
            *("-n", "2000", "-c", "10", "-t", "set,get"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with socket.create_connection((HOST, api), timeout=10) as held:
        held.sendall(b"held open\n")
        assert held.recv(100) == b"held open\n"

        dom = dump_dom(f"http://{relay_page}/")
        shown = texts(dom)
        assert shown["title"] == f"relay on port {relay_port}"
        assert shown["ready"] == f"ready: serving on port {relay_port}"
        assert int(re.search(r'data-refreshes="(\d+)"', dom).group(1)) >= 2  # it refreshes
        rows = {int(row["public port"]): row for row in tables(dom)["registrations"]}
        assert set(rows) == {cache, web, api}
        assert [rows[p]["client"] for p in (cache, web, api)] == ["alice", "alice", "bob"]
        assert rows[api]["connections"] == "1"
        assert rows[cache]["connections"] == "0"
        assert rows[cache]["bytes in"].endswith("KiB")  # the benchmark's requests
        assert all(row["RTT"].endswith(" ms") for row in rows.values())
        assert all(row["peer"].startswith("127.0.0.1:") for row in rows.values())
        assert "sessions 3" in shown["cards"]
        assert "clients 2" in shown["cards"]
        assert "open connections 1" in shown["cards"]

        dom = dump_dom(f"http://{forwarder_page}/")
        shown = texts(dom)
        assert shown["title"] == "forwarder"
        assert shown["ready"] == f"ready: registered with the relay at {HOST}:{relay_port}"
        services = {row["name"]: row for row in tables(dom)["services"]}
        assert set(services) == {"cache", "web"}
        assert services["cache"]["public endpoint"] == f"{HOST}:{cache}"
        assert services["web"]["local"] == f"{HOST}:{echo_port}"
        assert services["cache"]["relay"] == f"{HOST}:{relay_port}"
        assert f"relay {HOST}:{relay_port}" in shown["cards"]
        assert "services registered 2 of 2" in shown["cards"]

        picture = tmp_path / "status-page.png"
        assert screenshot(f"http://{relay_page}/", picture) == SCREENSHOT
        if os.environ.get("RELAY_SCREENSHOT_DIR"):
            shutil.copy(picture, Path(os.environ["RELAY_SCREENSHOT_DIR"]) / picture.name)


def test_the_page_shows_whatever_status_lists(procs: Processes, tmp_path: Path) -> None:
    """Fields and tables the page does not know, such as several workers', show too."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PAGE, site / "index.html")
    status = {
        "role": "relay",
        "control_port": 7000,
        "draining": False,
        "workers": [{"worker": 1, "pid": 4242}, {"worker": 2, "pid": 4243}],
        "registrations": [
            {"worker": 1, "session": 1, "client": "alice", "public_port": 7201, "bytes_in": 10},
            {"worker": 2, "session": 1, "client": "bob", "public_port": 7202, "zone": "eu"},
        ],
    }
    (site / "status").write_text(json.dumps(status))
    (site / "readyz").write_text("ready: serving on port 7000\n")
    server = procs.start(
        ["python3", "-m", "http.server", "--bind", HOST, "0", "--directory", str(site)],
        "http",
    )
    port = int(server.wait_line(r"port (\d+)", stream="stdout")[1].group(1))
    dom = dump_dom(f"http://{HOST}:{port}/")
    shown = tables(dom)
    assert [row["pid"] for row in shown["workers"]] == ["4242", "4243"]
    assert [(r["worker"], r["client"], r["zone"]) for r in shown["registrations"]] == [
        ("1", "alice", "\N{EN DASH}"),  # none
        ("2", "bob", "eu"),
    ]
    assert shown["registrations"][0]["bytes in"] == "10 B"
