"""The kinds of option values: how each is read from text and how any value of it is checked.

A kind is a click parameter type, so a flag, its ``RELAY_*`` variable and a
config-file key are all read by ``convert`` (text, or the file's TOML value).
``check`` judges a value however it came, the Python API's keywords too: it
returns the value (normalised, e.g. an int number of seconds as a float) or
raises ValueError with the reason alone, and the caller names the option as
the user wrote it (``max_sessions=0: must be at least 1``, ``Invalid value
for '--max-sessions': '0': must be at least 1``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Final

import click

from .secret import check_secret
from .service import Service

KIB: Final = 1 << 10
MIB: Final = 1 << 20
GIB: Final = 1 << 30
SIZE_UNITS: Final = {
    "": 1,
    "B": 1,
    "K": KIB,
    "KIB": KIB,
    "M": MIB,
    "MIB": MIB,
    "G": GIB,
    "GIB": GIB,
}


class Kind(click.ParamType):  # type: ignore[type-arg]
    """A kind of option value: ``parse`` reads text, ``check`` judges any value."""

    name = "TEXT"
    hidden = False
    """Never show the value in a message (a secret)."""

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The value that text (or a config file's value) stands for; ``self.fail`` otherwise."""
        return raw

    def check(self, value: Any) -> Any:
        """``value`` if it is one of this kind (normalised); ValueError with the reason if not."""
        return value

    def show(self, value: Any) -> str:
        """A default as --help shows it."""
        return str(value)

    def bounds(self) -> str | None:
        """The range --help shows (``x>=1``), if any."""
        return None

    def in_file(self, value: Any, directory: PurePath) -> Any:
        """A value as a config file in ``directory`` gives it (a path: relative to it)."""
        return value

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        parsed = self.parse(value, param, ctx)
        try:
            return self.check(parsed)
        except ValueError as exc:
            if self.hidden:
                self.fail(str(exc), param, ctx)
            shown = repr(value) if isinstance(value, str) else describe(parsed)
            self.fail(f"{shown}: {exc}", param, ctx)


def describe(value: Any) -> str:
    """A value in a message: as Python writes it (a float as short as it goes)."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Number(Kind):
    """A number: ``read`` turns its text into one (``int``, ``float``), ``noun`` names it."""

    read: Callable[[str], Any] = int
    noun = "an integer"

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(raw, str):
            return raw
        try:
            return type(self).read(raw.strip())
        except ValueError:
            self.fail(f"{raw!r} is not {self.noun}", param, ctx)


class Integer(_Number):
    name = "INTEGER"

    def __init__(self, minimum: int, maximum: int | None = None, what: str = "") -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.what = what
        """How a failed range check reads, e.g. "a port number (1-65535)"."""

    def check(self, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be {self.what or 'an integer'}")
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise ValueError(f"must be {self.what}" if self.what else self._range())
        return value

    def _range(self) -> str:
        if self.maximum is None:
            return f"must be at least {self.minimum}"
        return f"must be {self.minimum}-{self.maximum}"

    def bounds(self) -> str:
        if self.maximum is None:
            return f"x>={self.minimum}"
        return f"{self.minimum}<=x<={self.maximum}"


PORT = Integer(1, 65535, "a port number (1-65535)")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and
    ``taskset`` narrow), not every core of the host."""
    return len(os.sched_getaffinity(0))


class Workers(Integer):
    """A number of processes, or ``auto``: one per usable core (``usable_cores``)."""

    name = "N|auto"

    def __init__(self, maximum: int) -> None:
        super().__init__(1, maximum)

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(raw, str) and raw.strip().lower() == "auto":
            return "auto"
        return super().parse(raw, param, ctx)

    def check(self, value: Any) -> int:
        if value == "auto":
            return min(usable_cores(), self.maximum or usable_cores())
        return super().check(value)


class Seconds(_Number):
    """A duration in seconds: more than 0, or with ``zero_off`` 0 too (meaning: off)."""

    name = "SECONDS"
    read = float
    noun = "a number of seconds"

    def __init__(self, *, zero_off: bool = False) -> None:
        self.zero_off = zero_off

    def check(self, value: Any) -> float:
        if not _number(value) or not math.isfinite(value):
            raise ValueError("must be a number of seconds")
        if value < 0 or (value == 0 and not self.zero_off):
            raise ValueError("must be 0 (off) or more" if self.zero_off else "must be more than 0")
        return float(value)

    def show(self, value: Any) -> str:
        return f"{value:g}"

    def bounds(self) -> str:
        return "x>=0" if self.zero_off else "x>0"


class ByteSize(Kind):
    """A size in bytes: a plain integer, or with a binary unit (``256KiB``, ``16MiB``, ``1GiB``)."""

    name = "SIZE"

    def __init__(self, minimum: int = 0, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(raw, str):
            return raw
        text = raw.strip()
        number = text.rstrip("BbIiKkMmGg")
        unit = SIZE_UNITS.get(text[len(number) :].upper())
        if not number.isdigit() or unit is None:
            self.fail(f"{raw!r} is not a size: bytes, or a number with KiB, MiB or GiB", param, ctx)
        return int(number) * unit

    def check(self, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be a whole number of bytes")
        if value < self.minimum:
            raise ValueError(f"must be at least {self.show(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.show(self.maximum)}")
        return value

    def show(self, value: Any) -> str:
        for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
            if value and value % size == 0:
                return f"{value // size}{unit}"
        return f"{value} bytes"


class PortRange(Kind):
    """``LOW-HIGH``, both ports, LOW <= HIGH; in Python a pair ``(low, high)``."""

    name = "LOW-HIGH"

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(raw, str):
            return raw
        low_text, sep, high_text = raw.strip().partition("-")
        try:
            if not sep:
                raise ValueError
            return int(low_text), int(high_text)
        except ValueError:
            self.fail(f"{raw!r} is not a port range LOW-HIGH, e.g. 5000-5100", param, ctx)

    def check(self, value: Any) -> tuple[int, int]:
        if (
            not isinstance(value, tuple | list)
            or len(value) != 2
            or not all(isinstance(port, int) and not isinstance(port, bool) for port in value)
        ):
            raise ValueError("must be a pair of ports (low, high)")
        low, high = value
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise ValueError("ports must be 1-65535")
        if low > high:
            raise ValueError("LOW must not be greater than HIGH")
        return low, high

    def show(self, value: Any) -> str:
        return f"{value[0]}-{value[1]}"


class Endpoint(Kind):
    """``HOST:PORT`` (``[v6]:PORT``) to listen on; port 0 lets the OS choose."""

    name = "HOST:PORT"

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(raw, str):
            return raw
        host, sep, port_text = raw.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host:
            self.fail(f"{raw!r} is not HOST:PORT, e.g. 127.0.0.1:9100", param, ctx)
        try:
            return host, int(port_text)
        except ValueError:
            self.fail(f"{raw!r}: {port_text!r} is not a port number", param, ctx)

    def check(self, value: Any) -> tuple[str, int]:
        if (
            not isinstance(value, tuple | list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not value[0]
            or not isinstance(value[1], int)
        ):
            raise ValueError("must be a pair (host, port)")
        if not 0 <= value[1] <= 65535:
            raise ValueError("ports must be 0-65535")
        return value[0], value[1]

    def show(self, value: Any) -> str:
        return f"{value[0]}:{value[1]}"


class Choice(Kind):
    """One of a few words; ``choices`` may map each word to the value it stands for."""

    def __init__(
        self, choices: Sequence[str] | Mapping[str, Any], *, case_sensitive: bool = True
    ) -> None:
        self.choices: dict[str, Any] = (
            dict(choices) if isinstance(choices, Mapping) else {c: c for c in choices}
        )
        self.case_sensitive = case_sensitive
        self.name = "|".join(self.choices)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return f"[{self.name}]"

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(raw, str) or raw in self.choices.values():
            return raw
        for word, value in self.choices.items():
            if raw == word or (not self.case_sensitive and raw.lower() == word.lower()):
                return value
        words = ", ".join(repr(word) for word in self.choices)
        self.fail(f"{raw!r} is not one of {words}", param, ctx)

    def check(self, value: Any) -> Any:
        if value not in self.choices.values() or isinstance(value, bool):
            raise ValueError(f"must be one of {', '.join(map(repr, self.choices.values()))}")
        return value

    def show(self, value: Any) -> str:
        return next(word for word, known in self.choices.items() if known == value)


class Flag(Kind):
    """On or off; the CLI makes it a flag (``--x`` or ``--x/--no-x``)."""

    name = "BOOLEAN"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("must be True or False")
        return value


class Text(Kind):
    """A string; ``rule`` may refuse some (it raises ValueError with the reason)."""

    def __init__(self, rule: Callable[[str], object] | None = None) -> None:
        self.rule = rule

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if self.rule is not None:
            self.rule(value)
        return value


class Path(Kind):
    """A file or directory name; in Python a ``str`` or ``os.PathLike``, kept as ``str``.

    In a config file a relative name is relative to the file's directory (the working
    directory of a service is ``/``).
    """

    def __init__(self, name: str = "FILE") -> None:
        self.name = name

    @property
    def is_file(self) -> bool:
        """A file (not a directory): systemd can hand it over as a credential."""
        return self.name == "FILE"

    def in_file(self, value: Any, directory: PurePath) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return os.path.join(directory, value)
        return value

    def check(self, value: Any) -> str:
        if not isinstance(value, str | os.PathLike):
            raise ValueError("must be a path (str or os.PathLike)")
        text = os.fspath(value)
        if not isinstance(text, str) or not text:
            raise ValueError("must be a path (str or os.PathLike)")
        return text


class Secret(Kind):
    """A secret (``str``, or ``bytes`` in Python), strong enough; never shown in a message."""

    hidden = True

    def check(self, value: Any) -> str | bytes:
        if not isinstance(value, str | bytes) or not value:
            raise ValueError("must be a non-empty str or bytes")
        check_secret(value)
        return value


class ServiceSpec(Kind):
    """``NAME=[LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]``; in Python a ``relay.Service``."""

    name = "NAME=[HOST:]LOCAL_PORT[:REMOTE_PORT]"

    def parse(self, raw: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(raw, str):
            return raw
        try:
            return Service.parse(raw)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def check(self, value: Any) -> Service:
        if not isinstance(value, Service):
            raise ValueError("must be a relay.Service")
        return value


class Instance(Kind):
    """An object of a Python type (an SSLContext, ...): for options of the Python API only."""

    def __init__(self, *types: type, what: str) -> None:
        self.types = types
        self.what = what

    def check(self, value: Any) -> Any:
        if not isinstance(value, self.types):
            raise ValueError(f"must be {self.what}")
        return value
