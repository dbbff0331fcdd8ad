"""Click parameter types of the relay's options: ports, port ranges, endpoints, byte sizes."""

from __future__ import annotations

from typing import Any, Final

import click

PORT = click.IntRange(1, 65535)
SECONDS = click.FloatRange(min=0, min_open=True)


class PortRange(click.ParamType):  # type: ignore[type-arg]
    """``LOW-HIGH``, both ports, LOW <= HIGH."""

    name = "LOW-HIGH"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        low_text, sep, high_text = text.partition("-")
        try:
            if not sep:
                raise ValueError
            low, high = int(low_text), int(high_text)
        except ValueError:
            self.fail(f"{value!r} is not a port range LOW-HIGH, e.g. 5000-5100", param, ctx)
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            self.fail(f"{value!r}: ports must be 1-65535", param, ctx)
        if low > high:
            self.fail(f"{value!r}: LOW must not be greater than HIGH", param, ctx)
        return low, high


class Endpoint(click.ParamType):  # type: ignore[type-arg]
    """``HOST:PORT`` (``[v6]:PORT``) to listen on; port 0 lets the OS choose."""

    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        host, sep, port_text = str(value).strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host:
            self.fail(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:9100", param, ctx)
        try:
            port = int(port_text)
        except ValueError:
            self.fail(f"{value!r}: {port_text!r} is not a port number", param, ctx)
        if not 0 <= port <= 65535:
            self.fail(f"{value!r}: ports must be 0-65535", param, ctx)
        return host, port


SIZE_UNITS: Final = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GIB": 1 << 30,
}


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes: a plain integer, or with a binary unit (``256KiB``, ``16MiB``, ``1GiB``).

    With ``minimum``, a smaller size is an error of this option (the flag, env var or
    config file it came from is named), not of the yamux field it ends up in.
    """

    name = "SIZE"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        number = text.rstrip("BbIiKkMmGg")
        unit = SIZE_UNITS.get(text[len(number) :].upper())
        if not number.isdigit() or unit is None:
            self.fail(
                f"{value!r} is not a size: bytes, or a number with KiB, MiB or GiB", param, ctx
            )
        size = int(number) * unit
        if size < self.minimum:
            self.fail(f"{value!r} is less than the minimum of {self.minimum} bytes", param, ctx)
        return size
