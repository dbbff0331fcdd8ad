"""A real Session against a hostile raw peer over loopback TCP: everything it can fill is bounded.

Unit-level checks for issue #8's core items (the relay-level abuse suite with
RSS measurements lives elsewhere); each attack is real frames on a real socket.
"""

from __future__ import annotations

import asyncio

import yamux
from yamux.const import Flag, FrameType
from yamux_peers import raw_peer

WU = FrameType.WINDOW_UPDATE
SYN, RST = Flag.SYN, Flag.RST


async def test_reset_streams_leave_the_accept_queue_and_it_never_exceeds_the_backlog() -> None:
    config = yamux.Config(accept_backlog=4, enable_keepalive=False)
    async with raw_peer(client=False, config=config) as (session, peer):
        for n in range(20_000):  # SYN|RST: opened and reset in one frame
            peer.send(WU, SYN | RST, 2 * n + 1, 0)
        peer.send(WU, SYN, 40_001, 0)
        peer.send(WU, SYN, 40_003, 0)
        peer.send(WU, RST, 40_003, 0)  # reset before we accepted it
        for n in range(4):
            peer.send(WU, SYN, 40_005 + 2 * n, 0)
        await peer.writer.drain()
        refused = await peer.expect(WU)  # 40_001 and three more fill the backlog of 4
        assert (refused.stream_id, refused.flags) == (40_011, RST)
        assert len(session._accept_queue) == config.accept_backlog
        accepted = [await asyncio.wait_for(session.accept_stream(), 5) for _ in range(4)]
        assert [s.id for s in accepted] == [40_001, 40_005, 40_007, 40_009]
        assert len(session._accept_queue) == 0
        assert session.num_streams == 4
