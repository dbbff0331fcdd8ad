"""Public names: error names a hashicorp user reads right, deprecated old ones, exported events."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import relay
import yamux
from relay.server.ports import NoFreePortError
from yamux import errors


@pytest.mark.parametrize(
    ("old", "new"),
    [("GoAwayError", yamux.NoNewStreamsError), ("RemoteGoAwayError", yamux.PeerTerminatedError)],
)
def test_old_error_names_still_work_with_a_deprecation_warning(old: str, new: type) -> None:
    for module in (yamux, errors):
        with pytest.warns(DeprecationWarning, match=f"yamux.{old} is deprecated; use yamux"):
            assert getattr(module, old) is new


def test_unknown_names_are_still_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="NoSuchError"):
        _ = yamux.NoSuchError  # type: ignore[attr-defined]


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


def test_every_event_the_core_reports_is_exported_from_yamux() -> None:
    from yamux import events

    defined = {
        name
        for name, cls in inspect.getmembers(events, inspect.isclass)
        if cls.__module__ == "yamux.events"
    }
    assert len(defined) >= 10
    assert sorted(defined - set(yamux.__all__)) == []
