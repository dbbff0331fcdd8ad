"""A stream protocol that raises ends only its own stream; the session and its other streams go on.

Protocol mode (``Stream.set_protocol``) calls user code from inside the
session's ``data_received``; an exception there used to escape into the
transport ("Fatal error on transport") and end every stream of the session.
Real sessions over loopback TCP, on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import yamux
from yamux.const import Flag, FrameType
from yamux.frame import encode_header
from yamux_peers import raw_peer, session_pair

CALLBACKS = ["data_received", "eof_received", "connection_lost", "pause_writing", "resume_writing"]
BIG = 400 * 1024
"""More than the peer's window (256 KiB) and the stream's write buffer limit (64 KiB) together."""


BOTH_LOOPS = True
"""Every test runs on asyncio's own loop and on uvloop (``conftest``)."""


class Boom(Exception):
    """What the failing protocol raises."""


class Echo(asyncio.Protocol):
    """Protocol mode echo: what arrives goes back, EOF closes our side; raises in ``fail_in``."""

    def __init__(self, stream: yamux.Stream, fail_in: str | None = None) -> None:
        self.stream = stream
        self.fail_in = fail_in
        self.called: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def _call(self, name: str) -> None:
        self.called.append(name)
        if name == self.fail_in:
            raise Boom(f"{name} failed on purpose")

    def data_received(self, data: bytes) -> None:
        self._call("data_received")
        self.stream.write(data)

    def eof_received(self) -> None:
        self._call("eof_received")
        self.stream.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)
        self._call("connection_lost")

    def pause_writing(self) -> None:
        self._call("pause_writing")

    def resume_writing(self) -> None:
        self._call("resume_writing")


def loop_errors() -> list[dict[str, Any]]:
    """What reaches the loop's exception handler (asyncio's "Fatal error on transport")."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    return errors


async def echoes_both_ways(stream: yamux.Stream, tag: bytes) -> None:
    stream.write(tag)
    assert await asyncio.wait_for(stream.readexactly(len(tag)), 5) == tag
    stream.write_eof()
    assert await asyncio.wait_for(stream.read(), 5) == b""


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "its protocol raised" in r.getMessage()]


@pytest.mark.parametrize("callback", CALLBACKS)
async def test_a_raising_protocol_resets_its_stream_only(
    callback: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors = loop_errors()
    with caplog.at_level(logging.ERROR, "yamux"):
        async with session_pair() as (client, server):
            mine = [await client.open_stream() for _ in range(3)]
            for stream in mine:
                stream.write(b"open")  # the SYN goes with it
            theirs = [await asyncio.wait_for(server.accept_stream(), 5) for _ in range(3)]
            for stream in theirs:
                assert await stream.readexactly(4) == b"open"
            bad = Echo(theirs[0], fail_in=callback)
            good = [Echo(stream) for stream in theirs[1:]]
            for protocol in (bad, *good):
                protocol.stream.set_protocol(protocol)

            if callback == "data_received":
                mine[0].write(b"x")
            elif callback == "eof_received":
                mine[0].write_eof()
            elif callback == "connection_lost":
                mine[0].reset()
            else:  # more than the window: our writes wait, the protocol is paused
                theirs[0].write(b"y" * BIG)
                if callback == "resume_writing":  # reading lets the rest go: resumed, it fails
                    with pytest.raises(yamux.StreamResetError):
                        await asyncio.wait_for(mine[0].readexactly(BIG), 5)
            exc = await asyncio.wait_for(bad.lost, 5)
            if callback != "connection_lost":  # its own RST and a reason that says why
                assert isinstance(exc, yamux.StreamResetError), exc
                assert f"failed in {callback}" in str(exc)
                with pytest.raises(yamux.StreamResetError):
                    await asyncio.wait_for(mine[0].read(), 5)
            assert bad.called[-1] == "connection_lost"
            assert theirs[0].exception() is not None

            for n, stream in enumerate(mine[1:]):
                await echoes_both_ways(stream, b"still here %d" % n)
            assert not client.closed
            assert not server.closed
            assert await asyncio.wait_for(client.ping(), 5) >= 0
    assert errors == []
    (record,) = failures(caplog)
    assert f"its protocol raised in {callback}" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Boom)


async def test_frames_after_the_failure_in_the_same_read_skip_that_stream_only() -> None:
    """Data and FIN for the failed stream behind the frame that failed, in one read."""
    errors = loop_errors()
    async with raw_peer(client=False) as (session, peer):
        peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, 3, 0)
        bad_stream = await asyncio.wait_for(session.accept_stream(), 5)
        good_stream = await asyncio.wait_for(session.accept_stream(), 5)
        bad = Echo(bad_stream, fail_in="data_received")
        good = Echo(good_stream)
        bad_stream.set_protocol(bad)
        good_stream.set_protocol(good)
        burst = b"".join(
            encode_header(FrameType.DATA, flags, stream_id, len(body)) + body
            for stream_id, flags, body in [
                (1, 0, b"one"),
                (1, 0, b"two"),
                (3, 0, b"three"),
                (1, Flag.FIN, b"four"),
                (3, Flag.FIN, b"five"),
            ]
        )
        peer.writer.write(burst)
        assert isinstance(await asyncio.wait_for(bad.lost, 5), yamux.StreamResetError)
        assert bad.called == ["data_received", "connection_lost"]
        echoed = b""
        while echoed != b"threefive":
            frame = await peer.expect(FrameType.DATA)
            assert frame.stream_id == 3
            echoed += frame.body
        assert good.called == ["data_received", "data_received", "eof_received"]
        assert not session.closed
    assert errors == []


async def test_many_failing_streams_write_a_handful_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer can make every stream's protocol fail: the log stays short, with a count."""
    with caplog.at_level(logging.WARNING, "yamux"):
        async with raw_peer(client=False) as (session, peer):
            for n in range(50):
                stream_id = 2 * n + 1
                peer.send(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0)
                stream = await asyncio.wait_for(session.accept_stream(), 5)
                stream.set_protocol(Echo(stream, fail_in="data_received"))
                peer.send(FrameType.DATA, 0, stream_id, 1, b"!")
            resets = 0
            while resets < 50:
                frame = await peer.expect(FrameType.WINDOW_UPDATE)
                resets += bool(frame.flags & Flag.RST)
            assert not session.closed
    assert len(failures(caplog)) == 5
    summary = [
        r.getMessage() for r in caplog.records if "suppressed log messages" in r.getMessage()
    ]
    assert summary == ["session ended: suppressed log messages: 45 x stream-protocol-failed"]
