"""One timer for a session's per-stream deadlines (the ACK of our opens, the peer's FIN):
each stream's deadline fires once, in order, unless cleared; on both loops."""

from __future__ import annotations

import asyncio

from yamux.timers import StreamDeadlines
from yamux_peers import until

DELAY = 0.05


BOTH_LOOPS = True
"""Every test runs on asyncio's own loop and on uvloop (``conftest``)."""


async def test_deadlines_fire_in_order_once_unless_cleared() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    deadlines = StreamDeadlines(loop, DELAY, fired.append)
    started = loop.time()
    for stream_id in (1, 3, 5, 7):
        deadlines.arm(stream_id)
    deadlines.cancel(3)
    deadlines.arm(1)  # armed again: its deadline moves behind the others
    await until(lambda: len(fired) == 3)
    assert fired == [5, 7, 1]
    assert loop.time() - started >= DELAY - 0.002  # not before its time (loop clock)
    await asyncio.sleep(3 * DELAY)
    assert fired == [5, 7, 1]  # the cleared one never fires, none fires twice
    deadlines.arm(9)
    deadlines.cancel_all()
    deadlines.arm(11)
    await until(lambda: len(fired) == 4)
    await asyncio.sleep(2 * DELAY)
    assert fired == [5, 7, 1, 11]


async def test_a_deadline_armed_from_a_firing_one_fires_too() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []

    def fire(stream_id: int) -> None:
        fired.append(stream_id)
        if stream_id < 5:
            deadlines.arm(stream_id + 2)

    deadlines = StreamDeadlines(loop, DELAY, fire)
    deadlines.arm(1)
    await until(lambda: len(fired) == 3)
    assert fired == [1, 3, 5]


async def test_a_delay_of_zero_disables_them() -> None:
    fired: list[int] = []
    deadlines = StreamDeadlines(asyncio.get_running_loop(), 0, fired.append)
    deadlines.arm(1)
    await asyncio.sleep(2 * DELAY)
    assert fired == []
