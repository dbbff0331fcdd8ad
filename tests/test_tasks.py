"""Task ownership and the one handler policy: Session.serve, yamux.Server, TaskOwner."""

from __future__ import annotations

import asyncio
import logging

import pytest

import yamux
from yamux_peers import session_pair


async def test_task_owner_logs_failures_and_cancel_then_wait_ends_every_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = yamux.TaskOwner(logging.getLogger("test.owner"))
    cleaned_up = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def runs_until_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: wait() must wait for it
            cleaned_up.set()

    with caplog.at_level(logging.ERROR, "test.owner"):
        owner.spawn(fails(), name="failing-task")
        owner.spawn(runs_until_cancelled(), name="long-task")
        await asyncio.sleep(0.01)
        assert len(owner) == 1
        owner.cancel()
        await owner.wait()
    assert cleaned_up.is_set()
    assert len(owner) == 0
    assert "task failing-task failed" in caplog.text
    assert "boom" in caplog.text


async def test_task_owner_on_done_runs_once_per_task_even_if_it_never_started() -> None:
    """The relay gives back a connection's slots in ``on_done``: it must run for a task that
    returned, failed, or was cancelled before its first step (its body never ran)."""
    owner = yamux.TaskOwner(logging.getLogger("test.owner"))
    ended: list[str] = []

    async def returns() -> None:
        await asyncio.sleep(0)

    async def waits() -> None:
        await asyncio.Event().wait()

    def record(task: asyncio.Task[None]) -> None:
        ended.append(task.get_name())

    owner.spawn(returns(), name="returns", on_done=record)
    owner.spawn(waits(), name="never-started", on_done=record).cancel()
    owner.spawn(waits(), name="cancelled", on_done=record)
    await asyncio.sleep(0.01)
    assert sorted(ended) == ["never-started", "returns"]
    owner.cancel()
    await owner.wait()
    assert sorted(ended) == ["cancelled", "never-started", "returns"]
    assert len(owner) == 0


async def test_handler_return_closes_the_stream_and_the_peer_sees_eof() -> None:
    async def answer_without_closing(reader: yamux.Stream, writer: yamux.Stream) -> None:
        writer.write(await reader.readexactly(5))

    async with session_pair() as (client, server):
        serving = asyncio.create_task(server.serve(answer_without_closing))
        stream = await client.open_stream()
        stream.write(b"hello")
        assert await asyncio.wait_for(stream.read(), 5) == b"hello"  # b"" would hang: EOF came
        assert stream.at_eof()
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(serving, 5)


@pytest.mark.parametrize("how", ["raises", "cancelled"])
async def test_handler_error_or_cancellation_resets_the_stream(how: str) -> None:
    started = asyncio.Event()

    async def handler(reader: yamux.Stream, writer: yamux.Stream) -> None:
        writer.write(b"partial answer")
        started.set()
        if how == "raises":
            raise ValueError("handler bug")
        await asyncio.Event().wait()

    owner = yamux.TaskOwner(logging.getLogger("test.owner"))
    async with session_pair() as (client, server):
        serving = asyncio.create_task(server.serve(handler, tasks=owner))
        stream = await client.open_stream()
        stream.write(b"x")
        await asyncio.wait_for(started.wait(), 5)
        if how == "cancelled":
            owner.cancel()  # cancels the handler task and waits for it
            await owner.wait()
        with pytest.raises(yamux.StreamResetError):
            await asyncio.wait_for(stream.read(), 5)
        assert not client.closed  # only that stream ended
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(serving, 5)
        owner.cancel()
        await owner.wait()


async def test_session_close_waits_for_its_handler_tasks() -> None:
    finished: list[str] = []

    async def slow_cleanup(reader: yamux.Stream, writer: yamux.Stream) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)
            finished.append("handler")

    async with session_pair() as (client, server):
        serving = asyncio.create_task(server.serve(slow_cleanup))
        await client.open_stream()
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        assert finished == ["handler"]
        await asyncio.wait_for(serving, 5)


async def test_server_has_asyncio_servers_shape() -> None:
    sessions: list[yamux.Session] = []

    async def on_session(session: yamux.Session) -> None:
        sessions.append(session)
        await session.wait_closed()

    server = await yamux.start_server(on_session, "127.0.0.1", 0)
    assert server.is_serving()
    serving = asyncio.create_task(server.serve_forever())
    client = await yamux.connect("127.0.0.1", server.port)
    await client.ping()
    assert len(sessions) == 1
    serving.cancel()  # as with asyncio.Server: cancelling serve_forever closes the server
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert not server.is_serving()
    assert sessions[0].closed
    await asyncio.wait_for(client.wait_closed(), 5)  # the server closed its session


async def test_server_close_is_sync_idempotent_and_async_with_closes_it() -> None:
    async def on_session(session: yamux.Session) -> None:
        await session.wait_closed()

    async with await yamux.start_server(on_session, "127.0.0.1", 0) as server:
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        await yamux.connect("127.0.0.1", port)
    other = await yamux.start_server(on_session, "127.0.0.1", 0)
    client = await yamux.connect("127.0.0.1", other.port)
    await client.ping()
    other.close()
    other.close()  # closing twice is harmless
    await other.wait_closed()
    assert not other.is_serving()
    await asyncio.wait_for(client.wait_closed(), 5)  # the server closed its session
