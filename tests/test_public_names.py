"""Public names: yamux's small API, errors a hashicorp user reads right, events exported."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil

import pytest

import relay
import yamux
from relay.server.ports import NoFreePortError
from yamux import errors

PUBLIC = {
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionWriteTimeoutError",
    "ControlQueueFullError",
    "GoAwayCode",
    "KeepaliveTimeoutError",
    "NoNewStreamsError",
    "PeerTerminatedError",
    "ProtocolError",
    "Server",
    "Session",
    "SessionClosedError",
    "SessionError",
    "State",
    "Stream",
    "StreamClosedError",
    "StreamError",
    "StreamOpenTimeoutError",
    "StreamResetError",
    "StreamTimeoutError",
    "TaskOwner",
    "TooManyStreamsError",
    "WindowBudget",
    "YamuxError",
    "connect",
    "connect_pipes",
    "events",
    "start_server",
}
"""What a user imports; a name added or dropped here is an API change, on purpose."""


def test_the_public_api_is_exactly_the_names_in_all() -> None:
    assert set(yamux.__all__) == PUBLIC
    exported = {name for name in vars(yamux) if not name.startswith("_")}
    modules = {name for name in exported if inspect.ismodule(getattr(yamux, name))}
    assert sorted(exported - modules - PUBLIC) == []  # no class or function beside __all__


def test_every_error_is_public_and_derives_from_yamux_error() -> None:
    defined = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if cls.__module__ == "yamux.errors"
    }
    assert len(defined) >= 15
    assert sorted(defined - PUBLIC) == []
    assert all(issubclass(getattr(yamux, name), yamux.YamuxError) for name in defined)


def test_removed_names_are_attribute_errors() -> None:
    for name in ("GoAwayError", "RemoteGoAwayError", "StreamLink", "Frame", "Event"):
        with pytest.raises(AttributeError, match=name):
            getattr(yamux, name)


def test_session_shows_only_the_user_api() -> None:
    """The asyncio protocol and the link its streams use are a private object behind it."""
    public = {name for name in dir(yamux.Session) if not name.startswith("_")}
    assert public == {
        "accept_stream",
        "attach",
        "client",
        "close",
        "close_reason",
        "closed",
        "config",
        "get_extra_info",
        "go_away",
        "last_rtt",
        "num_streams",
        "open_stream",
        "open_stream_nowait",
        "open_would_wait",
        "ping",
        "remote_go_away",
        "rtt",
        "serve",
        "wait_closed",
        "wait_go_away",
        "write_buffer_size",
    }
    assert not issubclass(yamux.Session, asyncio.BaseProtocol)


async def test_session_server_and_stream_close_the_asyncio_way() -> None:
    """close() is sync and starts closing; wait_closed() is a coroutine that waits."""
    for cls in (yamux.Session, yamux.Server, yamux.Stream):
        assert not inspect.iscoroutinefunction(cls.close), cls
        assert inspect.iscoroutinefunction(cls.wait_closed), cls
    server = await yamux.start_server(lambda session: session.wait_closed(), "127.0.0.1", 0)
    session = await yamux.connect("127.0.0.1", server.port)
    assert session.close() is None
    assert session.closed
    await session.wait_closed()
    assert server.close() is None
    assert not server.is_serving()
    await server.wait_closed()


def test_relay_errors_share_a_base_and_keep_their_standard_bases() -> None:
    for error, standard in [
        (relay.RegistrationError, ConnectionError),
        (relay.RelayRefusedError, ConnectionError),
        (relay.RelayDisconnectedError, ConnectionError),
        (relay.OptionError, ValueError),
        (NoFreePortError, OSError),
    ]:
        assert issubclass(error, relay.RelayError)
        assert issubclass(error, standard)


def test_every_exception_the_relay_package_defines_derives_from_relay_error() -> None:
    defined = []
    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if info.name == "relay.__main__":
            continue
        module = importlib.import_module(info.name)
        defined += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == info.name
        ]
    assert len(defined) >= 8
    assert [cls.__qualname__ for cls in defined if not issubclass(cls, relay.RelayError)] == []


def test_every_event_the_core_reports_is_in_yamux_events() -> None:
    events = yamux.events
    defined = {
        name
        for name, cls in inspect.getmembers(events, inspect.isclass)
        if cls.__module__ == "yamux.events"
    }
    assert len(defined) >= 10
    assert sorted(defined | {"Event"}) == sorted(events.__all__)
