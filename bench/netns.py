"""Three hosts on one machine: client --LAN-- relay --WAN-- service, as network namespaces.

Each namespace is a separate network stack joined by veth pairs; ``tc tbf``
makes every veth a 1 Gbit/s interface. There is no route from the client to
the service: the only way across is through programs in the relay namespace
(the relay itself, or a link emulator for the direct path), as on the
internet. Names carry the bench's pid (``rwan<pid>c``, ``...r``, ``...s``) so
parallel runs never meet, and ``destroy()`` kills every process left inside
and deletes the namespaces (which deletes their veths), also after a failure;
``remove_stale()`` clears namespaces of earlier runs whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from bench.processes import BenchError, log
from bench.services import Host

PREFIX: Final = "rwan"
LAN: Final = ("10.201.1.2", "10.201.1.1")
"""Client and relay addresses on the LAN (/24)."""
WAN: Final = ("10.201.2.1", "10.201.2.2")
"""Relay and service addresses on the WAN (/24)."""
RATE: Final = "1gbit"


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_exec(ns: str, *args: str) -> None:
    argv = ["ip", "netns", "exec", ns, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


@dataclass
class Topology:
    """The three namespaces and their links; ``create()`` builds, ``destroy()`` removes all."""

    tag: str = f"{PREFIX}{os.getpid()}"
    rate: str = RATE
    created: bool = False

    @property
    def names(self) -> dict[str, str]:
        return {role: f"{self.tag}{role[0]}" for role in ("client", "relay", "service")}

    @property
    def client(self) -> Host:
        return self._host("client", LAN[0])

    @property
    def relay_lan(self) -> Host:
        return self._host("relay", LAN[1])

    @property
    def relay_wan(self) -> Host:
        return self._host("relay", WAN[0])

    @property
    def service(self) -> Host:
        return self._host("service", WAN[1])

    def _host(self, role: str, addr: str) -> Host:
        ns = self.names[role]
        return Host(ns, ("ip", "netns", "exec", ns), addr)

    def create(self) -> None:
        names = self.names
        self.created = True  # from here on destroy() has something to do
        for ns in names.values():
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", ns=ns)
        self._wire(names["client"], LAN[0], names["relay"], LAN[1], "l")
        self._wire(names["relay"], WAN[0], names["service"], WAN[1], "w")
        log(
            f"namespaces {', '.join(names.values())}: client {LAN[0]} --LAN-- {LAN[1]} relay "
            f"{WAN[0]} --WAN-- {WAN[1]} service, every veth {self.rate} (tc tbf)"
        )

    def _wire(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str, kind: str) -> None:
        """A veth pair between two namespaces, addressed, up, rate-limited both ways."""
        dev_a, dev_b = f"{self.tag}{kind}a", f"{self.tag}{kind}b"
        ip(
            "link",
            "add",
            dev_a,
            "netns",
            ns_a,
            "type",
            "veth",
            "peer",
            "name",
            dev_b,
            "netns",
            ns_b,
        )
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            ip("addr", "add", f"{addr}/24", "dev", dev, ns=ns)
            ip("link", "set", dev, "up", ns=ns)
            # burst >= rate / HZ and >= a 64 KiB GSO packet; latency bounds the queue.
            netns_exec(
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                self.rate,
                "burst",
                "512kb",
                "latency",
                "20ms",
            )

    def destroy(self) -> None:
        """Kill what still runs in the namespaces, then delete them (and with them the veths)."""
        if not self.created:
            return
        for ns in self.names.values():
            kill_inside(ns)
            ip("netns", "delete", ns, check=False)
        self.created = False


def kill_inside(ns: str) -> None:
    """SIGKILL every process still in namespace ``ns`` (the bench's own; nobody else's is)."""
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def remove_stale() -> None:
    """Delete namespaces of earlier bench runs whose process no longer exists."""
    listing = ip("netns", "list", check=False).stdout
    pattern = re.compile(rf"^({PREFIX}(\d+)[crs])\b", re.MULTILINE)
    for match in pattern.finditer(listing):
        ns, pid = match.group(1), int(match.group(2))
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        log(f"removing namespace {ns} left by bench process {pid}")
        kill_inside(ns)
        ip("netns", "delete", ns, check=False)


@contextlib.contextmanager
def topology(rate: str = RATE) -> Iterator[Topology]:
    topo = Topology(rate=rate)
    try:
        topo.create()
        yield topo
    finally:
        topo.destroy()
