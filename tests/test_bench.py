"""The benchmark tooling itself: a short real run, routing by name, the load generator's
burst, the hot-path rig, the WAN namespaces, the fixed-window launcher.

Speed is never asserted here (that is the bench's job); these check that the
bench measures what it says and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_program

from bench.netns import topology
from interop import harness
from relay_support import REPO
from testkit.ports import free_port
from testkit.procs import Proc

pytestmark = pytest.mark.e2e


def namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout


def require_root() -> None:
    require_program("ip")
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_quick_bench_measures_both_paths(tmp_path: Path) -> None:
    """``python -m bench`` on one small workload: every run ok, table and JSON agree."""
    require_program("go")
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "latency",
            "--paths",
            "direct,py",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert [(r["path"], r["ok"]) for r in doc["runs"]] == [("direct", True), ("py", True)]
    py = next(r["result"] for r in doc["runs"] if r["path"] == "py")
    assert py["round_trips"] > 0
    assert py["p50_us"] > 0
    assert py["relay_cpu_s"] >= 0
    assert py["forwarder_cpu_s"] >= 0
    row = next(line for line in done.stdout.splitlines() if "64 B round trip p50" in line)
    assert f"{py['p50_us']:.1f}" in row


def test_routing_bench_compares_each_shared_port_with_a_dedicated_one() -> None:
    """``python -m bench --routing``, one short pair: every path carried its connections
    (the loadgen fails on any error) and the table has the routed rows with their deltas."""
    require_program("go")
    harness.build_binaries()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--routing", "--no-build"),
            *("--repeat", "1", "--pairs", "1", "--seconds", "0.3"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if "port" in line]
    assert [(row[0].lstrip("| "), row[1]) for row in rows] == [
        ("HTTP request head", "dedicated port"),
        ("HTTP request head", "shared HTTP port, by name"),
        ("TLS ClientHello", "dedicated port"),
        ("TLS ClientHello", "shared TLS port, by name"),
    ]
    for row in rows:
        assert float(row[2]) > 0  # p50 cycle (us)
        assert float(row[3]) > 0  # conn/s
    for row in rows[1::2]:
        assert re.fullmatch(r"[+-]\d+", row[4])  # added p50 (us)
        assert re.fullmatch(r"\d+\.\d\dx \|", row[5])  # rate vs dedicated
    assert re.search(
        r"routing code alone, in process: HTTP \d+\.\d us, TLS \d+\.\d us", done.stdout
    )


def burst(loadgen: Path, addr: str, conns: int) -> dict[str, object]:
    done = subprocess.run(
        [str(loadgen), "burst", "-addr", addr, "-conns", str(conns), "-size", "100"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_loadgen_burst_reports_failed_connections_by_kind() -> None:
    """A burst's failed connections are its result (counted by kind), not a failed run."""
    require_program("go")
    build = harness.build_binaries()
    with Proc([str(build / "echo-server"), "-addr", "127.0.0.1:0"], "echo") as echo:
        addr = echo.wait_line(r"^\S+:\d+$", stream="stdout")[1].group(0)
        served = burst(build / "loadgen", addr, 200)
    assert (served["ok"], served["completed"], served["errors"]) == (True, 200, 0)
    nobody = burst(build / "loadgen", f"127.0.0.1:{free_port()}", 50)
    assert (nobody["ok"], nobody["completed"]) == (True, 0)
    assert nobody["errors"] == nobody["refused_errors"] == 50
    assert "refused" in nobody["first_errors"]["refused"]  # type: ignore[index]


def test_hotpath_rig_frames_and_delivers_every_message() -> None:
    """``python -m bench.hotpath`` checks the bytes each hop wrote (it fails otherwise)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--n", "2000", "--repeat", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: cells
        for line in done.stdout.splitlines()
        if line.startswith("| socket") or line.startswith("| frame")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"socket-to-frame", "frame-to-socket"}
    for cells in rows.values():
        python_calls, bytecodes = float(cells[3]), float(cells[5])
        assert python_calls > 0
        assert bytecodes > python_calls


def test_workers_bench_measures_every_worker_process(tmp_path: Path) -> None:
    """``python -m bench --workers 1,2`` on the connection rate: both counts run, the relay's
    CPU is that of all its processes, and the table has both columns and their ratio."""
    require_program("go")
    out = tmp_path / "workers.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--workers",
            "1,2",
            "--quick",
            "--only",
            "connrate",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [(r["n"], r["ok"]) for r in runs] == [(1, True), (2, True)]
    one, two = (r["result"] for r in runs)
    assert len(one["worker_cpu_s"]) == 1
    assert len(two["worker_cpu_s"]) == 2  # the supervisor's two children
    assert one["connections"] > 0
    assert two["connections"] > 0
    assert "| connections per second | " in done.stdout
    assert "ratio 2 workers/1 worker" in done.stdout


def test_wan_topology_routes_only_through_the_relay_host_and_is_removed() -> None:
    require_root()
    with pytest.raises(RuntimeError, match="boom"), topology() as topo:  # noqa: PT012
        topo_names = list(topo.names.values())
        assert all(name in namespaces() for name in topo_names)
        # The client reaches the relay host's LAN address, but not the service.
        service = Proc(
            topo.service.argv(
                sys.executable, "-m", "http.server", "--bind", topo.service.addr, "8080"
            ),
            "http",
        )
        try:
            service.wait_line(r"Serving HTTP", stream="both")
            probe = (
                "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 8080), "
                "timeout=1).close(); print('connected')\nexcept OSError as e: print(e)"
            )
            direct = subprocess.run(
                topo.client.argv(sys.executable, "-c", probe, topo.service.addr),
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            assert "connected" not in direct.stdout
            via_relay = subprocess.run(
                topo.relay_wan.argv(sys.executable, "-c", probe, topo.service.addr),
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            assert via_relay.stdout.strip() == "connected"
        finally:
            service.stop()
        raise RuntimeError("boom")
    left = namespaces()
    assert not [name for name in topo_names if name in left]


def test_fixed_window_launcher_changes_the_default_window() -> None:
    code = (
        "import sys; sys.path.insert(0, 'bench'); import fixed_window; "
        "fixed_window.set_default_window(16 << 20); import yamux; "
        "print(yamux.Config().max_stream_window_size, "
        "yamux.Config(keepalive_interval=5.0).max_stream_window_size)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split() == [str(16 << 20)] * 2
