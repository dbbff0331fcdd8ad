"""Wire-level regressions from other yamux families, replayed by a raw frame peer.

libp2p go-yamux ``ResetWithError(code)`` sends Window Update|RST with the error code in the
length field. That length is no window delta: with 0xFFFFFFFF it must reset that one stream,
not overflow the send window and end the whole session (issue #13 item 2). Frames are built
with the project's encoder (yamux.frame), the construct definition's tested twin.
"""

from __future__ import annotations

import asyncio

import pytest

import yamux
from yamux.const import Flag, FrameType
from yamux_peers import raw_peer


@pytest.mark.parametrize("code", [0xFFFFFFFF, 0x1, 0x80000000])
async def test_rst_with_error_code_resets_only_that_stream(code: int) -> None:
    async with raw_peer(client=True) as (session, peer):
        doomed = await session.open_stream()
        doomed.write(b"a")
        other = await session.open_stream()
        other.write(b"b")
        opened: list[int] = []
        body = b""  # what arrives on the other stream (its SYN may carry the "b")
        while len(opened) < 2:
            frame = await peer.next_frame()
            if frame.flags & Flag.SYN:
                opened.append(frame.stream_id)
            if frame.type is FrameType.DATA and frame.stream_id == other.id:
                body += frame.body
        assert opened == [doomed.id, other.id]
        for sid in opened:
            peer.send(FrameType.WINDOW_UPDATE, Flag.ACK, sid, 0)
        # go-yamux ResetWithError(code): Window Update, flags RST, length = the error code.
        peer.send(FrameType.WINDOW_UPDATE, Flag.RST, doomed.id, code)
        with pytest.raises(yamux.StreamResetError):
            await asyncio.wait_for(doomed.read(10), 5)
        # The other stream and the session go on, both ways.
        peer.send(FrameType.DATA, 0, other.id, 5, b"hello")
        assert await asyncio.wait_for(other.readexactly(5), 5) == b"hello"
        other.write(b"world")
        await other.drain()
        while body != b"bworld":
            frame = await peer.next_frame()
            assert frame.type is not FrameType.GO_AWAY, f"session ended: {frame}"
            if frame.type is FrameType.DATA and frame.stream_id == other.id:
                body += frame.body
        assert not session.closed
        third = await session.open_stream()  # new streams still open
        third.write(b"c")
        frame = await peer.next_frame()
        while not (frame.stream_id == third.id and frame.flags & Flag.SYN):
            frame = await peer.next_frame()
