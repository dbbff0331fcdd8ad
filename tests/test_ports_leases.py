"""The port policy (relay.server.ports) and the embedded lease store (relay.store), on real
sockets and files."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from relay.net import BindAddress
from relay.options import RelayOptions
from relay.options.service import check_name
from relay.server.auth import PortSet
from relay.server.leases import Identity
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
from relay.store import Ask, Held
from relay.store.sqlite_store import SqliteLeaseStore
from relay.store.state_dir import STORE_NAME, StateDirError, open_state_dir
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


@pytest.fixture
async def allocators() -> AsyncIterator[list[PortAllocator]]:
    """Allocators a test makes (``allocator()``), closed with their stores afterwards."""
    made: list[PortAllocator] = []
    yield made
    for allocator in made:
        await allocator.close()


@pytest.fixture
def allocator(allocators):
    async def make(
        port_range, max_name_leases=1000, bind=LOOPBACK, **store_options
    ) -> PortAllocator:
        store = await open_state_dir(None, store_options.pop("ttl", TTL), **store_options)
        made = PortAllocator(bind, port_range, store, max_name_leases)
        allocators.append(made)
        return made

    return make


async def grant(allocator: PortAllocator, sockets: list[socket.socket], **kwargs) -> int:
    sock = await allocator.allocate(RegistrationRequest(**kwargs))
    sockets.append(sock)
    return int(sock.getsockname()[1])


async def close_port(allocator: PortAllocator, sockets: list[socket.socket], port: int) -> None:
    for sock in sockets:
        if sock.fileno() >= 0 and sock.getsockname()[1] == port:
            sock.close()
    allocator.release(port)
    await allocator.settled()


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
async def test_requested_port_granted_then_refused_for_another_identity(sockets, allocator):
    low, high = free_port_block(4)
    ports = await allocator((low, high))
    assert await grant(ports, sockets, client="alice", remote_port=low + 2) == low + 2
    with pytest.raises(PortTakenError, match=rf"port {low + 2} is in use by another client"):
        await ports.allocate(RegistrationRequest(client="bob", remote_port=low + 2))
    await close_port(ports, sockets, low + 2)  # alice goes away: her lease stays
    with pytest.raises(
        PortTakenError,
        match=rf"port {low + 2} is reserved for another client, "
        r"which is away \(a lease ends after 24 h unused\)",
    ):
        await ports.allocate(RegistrationRequest(client="bob", remote_port=low + 2))
    with pytest.raises(PortTakenError, match="reserved"):  # anonymous neither
        await ports.allocate(RegistrationRequest(remote_port=low + 2))
    # Nor by choice: bob and anonymous registrations get every other port of the range.
    got = {
        await grant(ports, sockets, client="bob"),
        await grant(ports, sockets),
        await grant(ports, sockets),
    }
    assert got == {low, low + 1, high}
    with pytest.raises(
        NoFreePortError,
        match=rf"no free port in range {low}-{high} \(1 reserved for clients "
        r"that are away\)",
    ):
        await ports.allocate(RegistrationRequest())
    # Alice comes back without asking: her port.
    assert await grant(ports, sockets, client="alice") == low + 2


async def test_requested_port_outside_range_or_not_allowed(sockets, allocator):
    low, high = free_port_block(3)
    ports = await allocator((low, high))
    with pytest.raises(
        PortOutsideRangeError,
        match=rf"port {high + 1} is outside the relay's port range {low}-{high}",
    ):
        await ports.allocate(RegistrationRequest(client="alice", remote_port=high + 1))
    alice = Identity(client="alice")
    only = PortSet(((high, high),))
    with pytest.raises(
        PortNotAllowedError,
        match=rf"port {low} is not allowed for client alice \(allowed: {high}\)",
    ):
        await ports.allocate(
            RegistrationRequest(
                client="alice",
                authenticated=True,
                remote_port=low,
                allowed_ports=only,
            )
        )
    granted = await grant(ports, sockets, client="alice", authenticated=True, allowed_ports=only)
    assert granted == high
    assert (await ports.store.lease_of(alice.key)).port == high


async def test_requested_port_used_by_another_program(sockets, allocator):
    holder = socket.socket()
    sockets.append(holder)
    holder.bind((HOST, 0))
    holder.listen()
    port = holder.getsockname()[1]
    ports = await allocator(None)
    with pytest.raises(
        PortTakenError, match=rf"port {port} is in use on the relay host by another program"
    ):
        await ports.allocate(RegistrationRequest(client="alice", remote_port=port))
    assert await ports.store.lease_of(ALICE.key) is None
    assert ports.in_use == {}
    assert await ports.store.sync([]) == []  # and no claim was left behind


async def test_lease_follows_a_new_request_and_moves_when_its_port_is_lost(
    sockets, caplog, allocator
):
    low, high = free_port_block(3)
    ports = await allocator((low, high))
    assert await grant(ports, sockets, client="alice", remote_port=low) == low
    await close_port(ports, sockets, low)
    assert await grant(ports, sockets, client="alice", remote_port=low + 1) == low + 1
    await close_port(ports, sockets, low + 1)
    assert await ports.store.lease_on(low) is None  # one lease per identity
    holder = socket.socket()
    sockets.append(holder)
    holder.bind((HOST, low + 1))
    holder.listen()  # another program took the leased port meanwhile
    with caplog.at_level(logging.WARNING, "relay.ports"):
        port = await grant(ports, sockets, client="alice")
    assert port in (low, high)
    assert (await ports.store.lease_of(ALICE.key)).port == port
    assert f"leased port {low + 1} cannot be opened" in caplog.text


async def test_range_round_robin_does_not_hand_a_freed_port_to_the_next_client(sockets, allocator):
    low, high = free_port_block(3)
    ports = await allocator((low, high))
    first = await grant(ports, sockets)
    await close_port(ports, sockets, first)
    assert await grant(ports, sockets) == first + 1


async def test_os_choice_skips_reserved_ports(sockets, allocator):
    class Scripted(BindAddress):
        """The OS's choices, scripted: port 0 binds the next port of ``script``."""

        script: ClassVar[list[int]] = []

        def listen(
            self, port: int, backlog: int = 100, *, reuse_port: bool = False
        ) -> socket.socket:
            return super().listen(port or self.script.pop(0), backlog, reuse_port=reuse_port)

    low, high = free_port_block(2)
    ports = await allocator(None, bind=Scripted(socket.AF_INET, HOST))
    assert await grant(ports, sockets, client="alice", remote_port=low) == low
    await close_port(ports, sockets, low)
    Scripted.script[:] = [low, high]
    assert await grant(ports, sockets) == high  # the OS offered alice's port first
    assert Scripted.script == []
    LOOPBACK.listen(low).close()  # the refused offer was closed again


async def test_lease_expires_after_ttl_unused(sockets, allocator):
    clock = Clock()
    low, high = free_port_block(1)
    ports = await allocator((low, high), ttl=60, clock=clock)
    await grant(ports, sockets, client="alice")
    clock.now += 3600  # in use all along: a session keeps its lease however long
    await ports.store.sync(ports.held())
    await close_port(ports, sockets, low)
    clock.now += 59
    with pytest.raises(NoFreePortError):
        await ports.allocate(RegistrationRequest(client="bob"))
    clock.now += 2
    assert await grant(ports, sockets, client="bob") == low
    assert await ports.store.lease_of(ALICE.key) is None


# ------------------------------------------------------------------- the store
async def lease_ports(store: SqliteLeaseStore) -> set[tuple[str, int]]:
    return {(lease.key, lease.port) for lease in await store.leases()}


async def test_leases_survive_reopening(tmp_path: Path):
    clock = Clock()
    store = await open_state_dir(tmp_path / "state", TTL, clock=clock)
    assert store.persistent
    for key, port in ((ALICE.key, 7201), (BOB.key, 7202), (BOB.key, 7203)):
        await store.allocate(Ask(key, f"{key}{port}", port=port))
        await store.release(port, f"{key}{port}")
    clock.now += 10
    await store.sync([Held(7201, ALICE.key, "again")])
    await store.close()
    again = await open_state_dir(tmp_path / "state", TTL, clock=clock)
    try:
        assert await lease_ports(again) == {(ALICE.key, 7201), (BOB.key, 7203)}
        assert (await again.lease_of(ALICE.key)).last_used == clock.now
    finally:
        await again.close()


async def test_second_relay_on_the_same_state_dir_is_refused(tmp_path: Path):
    store = await open_state_dir(tmp_path, TTL)
    try:
        with pytest.raises(StateDirError, match=r"is in use by another relay \(pid \d+\)"):
            await open_state_dir(tmp_path, TTL)
    finally:
        await store.close()
    await (await open_state_dir(tmp_path, TTL)).close()  # free again once the first one closed


@pytest.mark.parametrize("damage", ["garbage", "directory", "newer schema", "wrong table"])
async def test_unreadable_store_is_moved_aside_and_the_relay_starts_empty(
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
        store = await open_state_dir(tmp_path, TTL)
    try:
        assert store.persistent
        assert await store.leases() == []
        await store.allocate(Ask(ALICE.key, "1", port=7201))
    finally:
        await store.close()
    aside = [p for p in os.listdir(tmp_path) if ".corrupt-" in p]
    assert len(aside) == 1
    assert f"lease store {path} is unreadable" in caplog.text
    assert f"moved it to {tmp_path / aside[0]}" in caplog.text
    reopened = await open_state_dir(tmp_path, TTL)
    assert (await reopened.lease_of(ALICE.key)).port == 7201
    await reopened.close()


async def test_a_version_1_store_is_upgraded_with_its_leases(tmp_path: Path):
    db = sqlite3.connect(tmp_path / STORE_NAME)
    db.execute(
        "CREATE TABLE leases (identity TEXT PRIMARY KEY, port INTEGER NOT NULL UNIQUE, "
        "granted REAL NOT NULL, last_used REAL NOT NULL)"
    )
    db.execute("INSERT INTO leases VALUES ('name:alice', 7201, 1.0, 2.0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = await open_state_dir(tmp_path, TTL)
    try:
        assert await lease_ports(store) == {(ALICE.key, 7201)}
    finally:
        await store.close()
    assert not [p for p in os.listdir(tmp_path) if ".corrupt-" in p]


async def test_unusable_state_dir_keeps_leases_in_memory(tmp_path: Path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.ERROR, "relay.leases"):
        store = await open_state_dir(blocker / "state", TTL)
    assert not store.persistent
    await store.allocate(Ask(ALICE.key, "1", port=7201))
    assert (await store.lease_of(ALICE.key)).port == 7201
    await store.close()
    assert "cannot use the state directory" in caplog.text
    assert "kept in memory only" in caplog.text


async def test_leases_of_unauthenticated_names_are_bounded(sockets, allocator):
    ports = await allocator(None, max_name_leases=1)
    alice_port = await grant(ports, sockets, client="alice")
    await close_port(ports, sockets, alice_port)
    with pytest.raises(
        TooManyLeasesError,
        match=r"the relay holds 1 leases of unauthenticated names, the maximum "
        r"\(--max-name-leases 1\)",
    ):
        await ports.allocate(RegistrationRequest(client="bob"))
    assert await ports.store.lease_of(BOB.key) is None
    await grant(ports, sockets)  # without a name: no lease, no limit
    await grant(ports, sockets, client="carol", authenticated=True)  # authenticated: not counted
    assert await grant(ports, sockets, client="alice") == alice_port  # her own lease: fine
