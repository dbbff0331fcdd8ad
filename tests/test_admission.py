"""The admission tables in memory: places and who gives way (relay/server/places.py), and
the failures that block a source or a source and client (relay/server/failures.py)."""

from __future__ import annotations

import random

import pytest

from relay.server.failures import FailureLimiter
from relay.server.places import Place, Places, Why, group_of


class Table:
    """A ``Places`` and what happened to the places it took: who was evicted, and why."""

    def __init__(self, limit: int, per_address: int = 0) -> None:
        self.evicted: list[tuple[str, Why]] = []
        self.ended: list[str] = []
        self.places = Places(limit, per_address, self._evicted)

    def _evicted(self, victim: Place, why: Why) -> str:
        self.evicted.append((victim.address, why))
        return f"{why}: {victim.address}"

    def take(self, address: str, name: str = "") -> Place | None:
        return self.places.take(address, lambda reason: self.ended.append(name or address))


def test_groups() -> None:
    assert group_of("192.0.2.7") == "192.0.2.0/24"
    assert group_of("2001:db8:1:2::/64") == "2001:db8:1::/48"
    assert group_of("unknown") == "unknown"


def test_a_newcomer_takes_the_oldest_place_of_the_address_holding_the_most() -> None:
    """13 addresses of one /24 fill the table; a 14th address of the same /24, and one of
    another /24, each get in, and the place taken is the oldest of the biggest holder."""
    table = Table(limit=13 * 80)
    for n in range(80):
        for host in range(2, 15):
            assert table.take(f"127.0.0.{host}", f"127.0.0.{host}#{n}") is not None
    assert len(table.places) == 13 * 80
    # An attacker address that holds as much as the biggest holder is refused.
    assert table.take("127.0.0.2") is None
    good = table.take("127.0.0.1")
    assert good is not None
    assert table.ended == ["127.0.0.2#0"]  # the oldest place of (one of) the biggest
    assert table.evicted == [("127.0.0.2", "full")]
    assert table.places.held("127.0.0.2") == 79
    # Another /24 with nothing: the next biggest holder gives way.
    assert table.take("10.0.0.1") is not None
    assert table.ended[-1] == "127.0.0.3#0"
    # The good client again: it holds 1, the biggest 80: still in.
    assert table.take("127.0.0.1") is not None
    assert len(table.places) == 13 * 80


def test_the_wider_group_counts_first() -> None:
    """An address of a crowded /24 that holds nothing itself does not take a place from an
    address of an emptier /24 that holds more (lexicographic: group, then address)."""
    table = Table(limit=6)
    for host in range(1, 5):
        table.take(f"192.0.2.{host}")  # 4 in one /24, one each
    table.take("198.51.100.1")
    table.take("198.51.100.1")  # 2 in another /24, on one address
    assert table.take("192.0.2.99") is not None
    assert table.evicted == [("192.0.2.1", "full")]  # the crowded group gives way, not 198.51
    assert table.take("203.0.113.1") is not None
    assert table.evicted[-1][0].startswith("192.0.2.")


def test_at_its_share_an_address_gives_way_to_itself() -> None:
    table = Table(limit=100, per_address=3)
    for n in range(5):
        assert table.take("192.0.2.1", f"#{n}") is not None
    assert table.ended == ["#0", "#1"]
    assert table.evicted == [("192.0.2.1", "per address")] * 2
    assert table.places.held("192.0.2.1") == 3


def test_settled_places_are_never_taken() -> None:
    table = Table(limit=2, per_address=2)
    first = table.take("192.0.2.1", "first")
    second = table.take("192.0.2.1", "second")
    assert first is not None
    assert second is not None
    first.settle()
    second.settle()
    assert table.take("192.0.2.1") is None  # its share, all checked already
    assert table.take("198.51.100.1") is None  # full, and the biggest has nothing to give
    assert table.ended == []
    first.release()
    assert table.take("198.51.100.1") is not None


def test_a_handed_over_place_keeps_its_age_and_releases_once() -> None:
    table = Table(limit=2)
    old = table.take("192.0.2.1", "old")
    assert old is not None
    table.take("192.0.2.1", "young")
    moved = old.hand_over()
    moved.hold(lambda reason: table.ended.append("moved"))
    old.release()  # the old token releases nothing
    assert len(table.places) == 2
    assert table.take("198.51.100.1") is not None
    assert table.ended == ["moved"]  # still the oldest
    with pytest.raises(ValueError, match="released already"):
        old.hand_over()
    with moved:
        pass
    assert len(table.places) == 2


def test_counts_stay_exact_under_random_churn() -> None:
    """Whatever the order of takes, settles, releases and evictions, the counts match the
    places held and no address holds more than its share."""
    rng = random.Random(7)
    table = Table(limit=50, per_address=7)
    held: list[Place] = []
    for _ in range(5000):
        if held and rng.random() < 0.4:
            held.pop(rng.randrange(len(held))).release()
        else:
            address = f"10.{rng.randrange(3)}.{rng.randrange(2)}.{rng.randrange(4)}"
            place = table.take(address)
            if place is not None:
                held.append(place)
                if rng.random() < 0.2:
                    place.settle()
        held = [place for place in held if place.held]
        assert len(table.places) == len(held) <= 50
        for place in held:
            assert table.places.held(place.address) == sum(
                1 for other in held if other.address == place.address
            )
            assert table.places.held(place.address) <= 7


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_block_a_key_for_the_rest_of_the_window() -> None:
    clock = Clock()
    failures = FailureLimiter(limit=5, window=60, clock=clock)
    bob = ("192.0.2.1", "bob")
    for n in range(1, 6):
        assert failures.blocked_for(bob) == 0
        assert failures.failed(bob) == n
        clock.now += 1
    assert failures.blocked_for(bob) == pytest.approx(55)
    # Another client, and the address alone, are other keys.
    assert failures.blocked_for(("192.0.2.1", "alice")) == 0
    assert failures.blocked_for(("192.0.2.1", None)) == 0
    clock.now += 55
    assert failures.blocked_for(bob) == 0


def test_ten_thousand_single_failures_do_not_flush_a_blocked_source() -> None:
    clock = Clock()
    failures = FailureLimiter(limit=5, window=60, max_keys=10_000, clock=clock)
    blocked = ("192.0.2.1", None)
    for _ in range(5):
        failures.failed(blocked)
    for n in range(10_000):
        failures.failed((f"10.{n // 250}.{n % 250}.1", None))
        clock.now += 0.001
    assert len(failures) == 10_000
    assert failures.blocked_for(blocked) > 40
    # Twice as many from others, some failing twice: still the least suspicious go first.
    for n in range(20_000):
        failures.failed((f"10.{n // 250}.{n % 250}.2", None))
        if n % 3 == 0:
            failures.failed((f"10.{n // 250}.{n % 250}.2", None))
    assert len(failures) == 10_000
    assert failures.blocked_for(blocked) > 40


def test_expired_keys_are_forgotten_first() -> None:
    clock = Clock()
    failures = FailureLimiter(limit=2, window=10, max_keys=3, clock=clock)
    failures.failed(("a", None))
    failures.failed(("a", None))  # blocked, but its window passes
    clock.now += 11
    for key in ("b", "c", "d"):
        failures.failed((key, None))
    assert len(failures) == 3
    assert failures.blocked_for(("a", None)) == 0
    failures.failed(("d", None))
    assert failures.blocked_for(("d", None)) > 0
    failures.failed(("e", None))  # full: one of the single failures goes, never d
    assert failures.blocked_for(("d", None)) > 0
    assert len(failures) == 3
