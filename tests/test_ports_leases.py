"""The port policy (relay.ports) and the lease store (relay.leases), on real sockets and files."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from relay.net import BindAddress
from relay.options import RelayOptions
from relay.options.service import check_name
from relay.server.auth import PortSet
from relay.server.leases import STORE_NAME, Identity, LeaseStore, StateDirError
from relay.server.ports import (
    NoFreePortError,
    PortAllocator,
    PortNotAllowedError,
    PortOutsideRangeError,
    PortTakenError,
    TooManyLeasesError,
    intersection,
)
from relay.server.request import RegistrationRequest
from relay_support import free_port_block

HOST = "127.0.0.1"
LOOPBACK = BindAddress(socket.AF_INET, HOST)
TTL = RelayOptions().lease_ttl
"""The relay's default lease TTL (a day), for the tests that do not look at expiry."""
ALICE = Identity(name="alice")
BOB = Identity(name="bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def grant(allocator: PortAllocator, sockets: list[socket.socket], **kwargs) -> int:
    sock = allocator.allocate(RegistrationRequest(**kwargs))
    sockets.append(sock)
    return int(sock.getsockname()[1])


def close_port(allocator: PortAllocator, sockets: list[socket.socket], port: int) -> None:
    for sock in sockets:
        if sock.fileno() >= 0 and sock.getsockname()[1] == port:
            sock.close()
    allocator.release(port)


# ------------------------------------------------------------------ names, port sets
def test_port_sets_intersect():
    ports = intersection(PortSet.parse(["1-100"]), PortSet.parse(["50-60", "90-200"]))
    assert str(ports) == "50-60,90-100"
    assert str(intersection(PortSet.parse("1-10"), PortSet.parse("20-30"))) == ""


def test_names_are_checked():
    assert check_name("redis-1.prod_a") == "redis-1.prod_a"
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "é"):
        with pytest.raises(ValueError, match=r"^(must|is longer|may only)"):
            check_name(bad)


def test_identity_keys_keep_clients_and_names_apart():
    assert Identity(name="alice").key != Identity(client="alice").key
    assert Identity(client="alice", name="db").key == "client:alice/db"
    assert str(Identity(client="alice", name="db")) == "client 'alice' name 'db'"
    with pytest.raises(ValueError, match="needs a client or a name"):
        Identity()


# ---------------------------------------------------------------------- the policy
def test_requested_port_granted_then_refused_for_another_identity(sockets):
    low, high = free_port_block(4)
    allocator = PortAllocator(LOOPBACK, (low, high), LeaseStore(None, TTL), 1000)
    assert grant(allocator, sockets, client="alice", remote_port=low + 2) == low + 2
    with pytest.raises(PortTakenError, match=rf"port {low + 2} is in use by another client"):
        allocator.allocate(RegistrationRequest(client="bob", remote_port=low + 2))
    close_port(allocator, sockets, low + 2)  # alice goes away: her lease stays
    with pytest.raises(
        PortTakenError,
        match=rf"port {low + 2} is reserved for another client, "
        r"which is away \(a lease ends after 24 h unused\)",
    ):
        allocator.allocate(RegistrationRequest(client="bob", remote_port=low + 2))
    with pytest.raises(PortTakenError, match="reserved"):  # anonymous neither
        allocator.allocate(RegistrationRequest(remote_port=low + 2))
    # Nor by choice: bob and anonymous registrations get every other port of the range.
    got = {
        grant(allocator, sockets, client="bob"),
        grant(allocator, sockets),
        grant(allocator, sockets),
    }
    assert got == {low, low + 1, high}
    with pytest.raises(
        NoFreePortError,
        match=rf"no free port in range {low}-{high} \(1 reserved for clients "
        r"that are away\)",
    ):
        allocator.allocate(RegistrationRequest())
    # Alice comes back without asking: her port.
    assert grant(allocator, sockets, client="alice") == low + 2


def test_requested_port_outside_range_or_not_allowed(sockets):
    low, high = free_port_block(3)
    allocator = PortAllocator(LOOPBACK, (low, high), LeaseStore(None, TTL), 1000)
    with pytest.raises(
        PortOutsideRangeError,
        match=rf"port {high + 1} is outside the relay's port range {low}-{high}",
    ):
        allocator.allocate(RegistrationRequest(client="alice", remote_port=high + 1))
    alice = Identity(client="alice")
    only = PortSet(((high, high),))
    with pytest.raises(
        PortNotAllowedError,
        match=rf"port {low} is not allowed for client alice \(allowed: {high}\)",
    ):
        allocator.allocate(
            RegistrationRequest(
                client="alice",
                authenticated=True,
                remote_port=low,
                allowed_ports=only,
            )
        )
    assert (
        grant(
            allocator,
            sockets,
            client="alice",
            authenticated=True,
            allowed_ports=only,
        )
        == high
    )
    assert allocator.leases.of(alice.key).port == high


def test_requested_port_used_by_another_program(sockets):
    holder = socket.socket()
    sockets.append(holder)
    holder.bind((HOST, 0))
    holder.listen()
    port = holder.getsockname()[1]
    allocator = PortAllocator(LOOPBACK, None, LeaseStore(None, TTL), 1000)
    with pytest.raises(
        PortTakenError, match=rf"port {port} is in use on the relay host by another program"
    ):
        allocator.allocate(RegistrationRequest(client="alice", remote_port=port))
    assert allocator.leases.of(ALICE.key) is None
    assert allocator.in_use == {}


def test_lease_follows_a_new_request_and_moves_when_its_port_is_lost(sockets, caplog):
    low, high = free_port_block(3)
    allocator = PortAllocator(LOOPBACK, (low, high), LeaseStore(None, TTL), 1000)
    assert grant(allocator, sockets, client="alice", remote_port=low) == low
    close_port(allocator, sockets, low)
    assert grant(allocator, sockets, client="alice", remote_port=low + 1) == low + 1
    close_port(allocator, sockets, low + 1)
    assert allocator.leases.on_port(low) is None  # one lease per identity
    holder = socket.socket()
    sockets.append(holder)
    holder.bind((HOST, low + 1))
    holder.listen()  # another program took the leased port meanwhile
    with caplog.at_level(logging.WARNING, "relay.ports"):
        port = grant(allocator, sockets, client="alice")
    assert port in (low, high)
    assert allocator.leases.of(ALICE.key).port == port
    assert f"leased port {low + 1} cannot be opened" in caplog.text


def test_range_round_robin_does_not_hand_a_freed_port_to_the_next_client(sockets):
    low, high = free_port_block(3)
    allocator = PortAllocator(LOOPBACK, (low, high), LeaseStore(None, TTL), 1000)
    first = grant(allocator, sockets)
    close_port(allocator, sockets, first)
    assert grant(allocator, sockets) == first + 1


def test_os_choice_skips_reserved_ports(sockets):
    class Scripted(BindAddress):
        """The OS's choices, scripted: port 0 binds the next port of ``script``."""

        script: ClassVar[list[int]] = []

        def listen(self, port: int, backlog: int = 100) -> socket.socket:
            return super().listen(port or self.script.pop(0), backlog)

    low, high = free_port_block(2)
    allocator = PortAllocator(Scripted(socket.AF_INET, HOST), None, LeaseStore(None, TTL), 1000)
    assert grant(allocator, sockets, client="alice", remote_port=low) == low
    close_port(allocator, sockets, low)
    Scripted.script[:] = [low, high]
    assert grant(allocator, sockets) == high  # the OS offered alice's port first
    assert Scripted.script == []
    LOOPBACK.listen(low).close()  # the refused offer was closed again


def test_lease_expires_after_ttl_unused(sockets):
    clock = Clock()
    low, high = free_port_block(1)
    allocator = PortAllocator(LOOPBACK, (low, high), LeaseStore(None, ttl=60, clock=clock), 1000)
    grant(allocator, sockets, client="alice")
    clock.now += 3600  # in use all along: a session keeps its lease however long
    allocator.leases.touch(allocator.active_keys())
    close_port(allocator, sockets, low)
    clock.now += 59
    with pytest.raises(NoFreePortError):
        allocator.allocate(RegistrationRequest(client="bob"))
    clock.now += 2
    assert grant(allocator, sockets, client="bob") == low
    assert allocator.leases.of(ALICE.key) is None


# ------------------------------------------------------------------- the store
def test_leases_survive_reopening(tmp_path: Path):
    clock = Clock()
    store = LeaseStore.open(tmp_path / "state", TTL, clock=clock)
    assert store.persistent
    store.grant(ALICE.key, 7201)
    store.grant(BOB.key, 7202)
    store.grant(BOB.key, 7203)
    clock.now += 10
    store.touch([ALICE.key])
    store.close()
    again = LeaseStore.open(tmp_path / "state", TTL, clock=clock)
    try:
        assert {(lease.key, lease.port) for lease in again} == {(ALICE.key, 7201), (BOB.key, 7203)}
        assert again.of(ALICE.key).last_used == clock.now
        assert again.reserved_ports() == {7201, 7203}
    finally:
        again.close()


def test_second_relay_on_the_same_state_dir_is_refused(tmp_path: Path):
    store = LeaseStore.open(tmp_path, TTL)
    try:
        with pytest.raises(StateDirError, match=r"is in use by another relay \(pid \d+\)"):
            LeaseStore.open(tmp_path, TTL)
    finally:
        store.close()
    LeaseStore.open(tmp_path, TTL).close()  # free again once the first one closed


@pytest.mark.parametrize("damage", ["garbage", "directory", "newer schema", "wrong table"])
def test_unreadable_store_is_moved_aside_and_the_relay_starts_empty(
    tmp_path: Path, caplog, damage: str
):
    path = tmp_path / STORE_NAME
    if damage == "garbage":
        path.write_bytes(b"this is not a database\n" * 100)
    elif damage == "directory":
        path.mkdir()
    else:
        db = sqlite3.connect(path)
        if damage == "newer schema":
            db.execute("PRAGMA user_version = 99")
        else:
            db.execute("CREATE TABLE leases (who TEXT)")
            db.execute("PRAGMA user_version = 1")
        db.commit()
        db.close()
    with caplog.at_level(logging.ERROR, "relay.leases"):
        store = LeaseStore.open(tmp_path, TTL)
    try:
        assert store.persistent
        assert len(store) == 0
        store.grant(ALICE.key, 7201)
    finally:
        store.close()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert f"lease store {path} is unreadable" in caplog.text
    assert f"moved it to {aside[0]}" in caplog.text
    reopened = LeaseStore.open(tmp_path, TTL)
    assert reopened.of(ALICE.key).port == 7201
    reopened.close()


def test_unusable_state_dir_keeps_leases_in_memory(tmp_path: Path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.ERROR, "relay.leases"):
        store = LeaseStore.open(blocker / "state", TTL)
    assert not store.persistent
    store.grant(ALICE.key, 7201)
    assert store.of(ALICE.key).port == 7201
    store.close()
    assert "cannot use the state directory" in caplog.text
    assert "kept in memory only" in caplog.text


def test_leases_of_unauthenticated_names_are_bounded(sockets):
    allocator = PortAllocator(LOOPBACK, None, LeaseStore(None, TTL), max_name_leases=1)
    alice_port = grant(allocator, sockets, client="alice")
    close_port(allocator, sockets, alice_port)
    with pytest.raises(
        TooManyLeasesError,
        match=r"the relay holds 1 leases of unauthenticated names, the maximum "
        r"\(--max-name-leases 1\)",
    ):
        allocator.allocate(RegistrationRequest(client="bob"))
    assert allocator.leases.of(BOB.key) is None
    grant(allocator, sockets)  # without a name: no lease, no limit
    grant(allocator, sockets, client="carol", authenticated=True)  # authenticated: not counted
    assert grant(allocator, sockets, client="alice") == alice_port  # her own lease: fine
