"""A Stream on its own: fed through its public methods, talking back only via StreamLink."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import yamux
from yamux.stream_state import Input, StreamMachine


class RecordingLink:
    """The smallest StreamLink: records what the stream asks of its session."""

    read_chunk_size = 1024

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pending = 0
        self.loop = asyncio.get_running_loop()

    def send_data(self, stream_id: int, data: bytes) -> int:
        self.calls.append(("send_data", data))
        return self.pending

    def pending_bytes(self, stream_id: int) -> int:
        return self.pending

    def consume(self, stream_id: int, length: int) -> None:
        self.calls.append(("consume", length))

    def close_stream(self, stream_id: int) -> None:
        self.calls.append(("close_stream", stream_id))

    def reset_stream(self, stream_id: int) -> None:
        self.calls.append(("reset_stream", stream_id))

    def watch_pending(self, stream: yamux.Stream) -> None:
        self.calls.append(("watch_pending", stream.id))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def accepted_stream() -> tuple[yamux.Stream, RecordingLink, StreamMachine]:
    link = RecordingLink()
    state = StreamMachine()
    state.process(Input.RECV_SYN)
    state.process(Input.SEND_ACK)
    return yamux.Stream(link, 2, state), link, state


async def test_fed_data_is_read_and_consumed_then_eof_from_the_state_machine() -> None:
    stream, link, state = accepted_stream()
    reading = asyncio.create_task(stream.read())
    stream.feed_data(b"hello ")
    stream.feed_data(b"world")
    await asyncio.sleep(0)
    assert not reading.done()
    state.process(Input.RECV_FIN)  # the core sees the FIN first ...
    stream.feed_eof()  # ... then the session wakes the reader
    assert await reading == b"hello world"
    assert stream.at_eof()
    assert sum(n for call, n in link.calls if call == "consume") == 11


async def test_set_exception_fails_a_blocked_reader_and_later_writes() -> None:
    stream, link, _ = accepted_stream()
    reading = asyncio.create_task(stream.read(10))
    await asyncio.sleep(0)
    stream.set_exception(yamux.StreamResetError("reset by peer"))
    with pytest.raises(yamux.StreamResetError, match="read failed: reset by peer"):
        await reading
    with pytest.raises(yamux.StreamResetError):
        stream.write(b"x")
    assert link.calls == []


async def test_write_close_and_reset_go_through_the_link_only() -> None:
    stream, link, state = accepted_stream()
    stream.write(b"abc")
    stream.close()
    assert link.calls == [("send_data", b"abc"), ("close_stream", 2)]
    state.process(Input.SEND_FIN)  # what the session's core does on close_stream
    assert stream.is_closing()
    assert stream.state is yamux.State.LOCAL_CLOSE
    with pytest.raises(yamux.StreamClosedError):
        stream.write(b"more")
    stream.reset()
    assert link.calls[-1] == ("reset_stream", 2)
    assert isinstance(stream.exception(), yamux.StreamResetError)
