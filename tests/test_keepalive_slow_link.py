"""Keepalive over a slow, saturated link: busy is not dead, dead is still found in time.

Issue #8 item 6: on a 10 Mbit/s, 100 ms link with 50 streams of bulk data both
ways, keepalive 1 s / 2 s used to declare a dozen healthy sessions dead in 40 s
(the pong waited behind megabytes of queued data). The link is
``testkit.link.SlowLink`` (a delaying, rate-limiting TCP proxy; this kernel has
no sch_netem), run in a thread of its own. The 5-minute soak at 5 s / 10 s is
``python3 -m bench.keepalive_soak``.
"""

from __future__ import annotations

import asyncio

import pytest

import yamux
from bench.keepalive_soak import loaded_link

pytestmark = pytest.mark.slow

RATE = 10_000_000 / 8  # 10 Mbit/s in bytes/s
DELAY = 0.05  # one way: 100 ms round trip
CONFIG = yamux.Config(keepalive_interval=1.0, keepalive_timeout=2.0)


async def test_busy_session_on_a_slow_link_is_never_declared_dead() -> None:
    async with loaded_link(CONFIG, 50, rate=RATE, delay=DELAY) as (client, server, link):
        await asyncio.sleep(30)
        assert client.close_reason is None, client.close_reason
        assert server.close_reason is None, server.close_reason
        assert link.bytes_moved > 0.5 * 2 * RATE * 25  # the link really was saturated both ways


async def test_blackholed_peer_is_detected_within_interval_plus_timeout() -> None:
    async with loaded_link(CONFIG, 50, rate=RATE, delay=DELAY) as (client, _server, link):
        await asyncio.sleep(3)
        link.blackhole()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(client.wait_closed(), 10)
        assert isinstance(client.close_reason, yamux.KeepaliveTimeoutError), client.close_reason
        bound = CONFIG.keepalive_interval + CONFIG.keepalive_timeout
        assert loop.time() - start <= bound + 0.5
