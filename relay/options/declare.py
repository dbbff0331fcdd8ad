"""One declaration per option: a field of a frozen dataclass that says everything about it.

``option(default, kind, help)`` declares a field once. From it come the Python
keyword (the field's name, ``max_sessions=``), the flag (``--max-sessions``),
the environment variable (``RELAY_MAX_SESSIONS``), the config-file key
(``max-sessions``), the default --help shows, and the check of a value given
any of these ways. ``Options`` checks every field when a dataclass is built,
then the rules between fields (``check_together``); a bad value raises
``OptionError``, which names the option as a keyword (``max_sessions=0: must
be at least 1``) and which the CLI renders with the flag and where the value
came from.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from ..errors import RelayError
from .kinds import Kind, describe

ENV_PREFIX = "RELAY_"
_SPEC = "relay.option"
_UNSHOWN: Any = object()
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Spec:
    """What ``option()`` stores in a field's metadata."""

    kind: Kind
    help: str
    metavar: str | None = None
    cli: bool = True
    """False: the Python API only (an object no flag could carry, such as an SSLContext)."""
    negatable: bool = False
    """A flag that also has ``--no-...``."""
    multiple: bool = False
    """The flag may be repeated; the value is a tuple."""
    short: str | None = None
    spelled: str | None = None
    """How CLI messages name an option of the Python API only (e.g. a config-file table)."""
    flag: str | None = None
    """The flag, when it is not the name's (``--relay`` for ``relays``, a repeatable flag
    that names one each time)."""


@dataclass(frozen=True, slots=True)
class Declaration:
    """One option as declared: its name, default and spec, and the names derived from them."""

    name: str
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def key(self) -> str:
        """The config-file key (``max_sessions`` is accepted too)."""
        return self.name.replace("_", "-")

    @property
    def on_command_line(self) -> str:
        """How the CLI names it in a message."""
        return self.flag if self.spec.cli else self.spec.spelled or self.name


def option(
    default: Any,
    kind: Kind,
    help: str,
    *,
    metavar: str | None = None,
    cli: bool = True,
    negatable: bool = False,
    multiple: bool = False,
    short: str | None = None,
    spelled: str | None = None,
    flag: str | None = None,
) -> Any:
    """Declare a field of an ``Options`` dataclass: its one default, kind and help."""
    spec = Spec(kind, help, metavar, cli, negatable, multiple, short, spelled, flag)
    return dataclasses.field(default=default, repr=not kind.hidden, metadata={_SPEC: spec})


_DECLARED: dict[type[Options], tuple[Declaration, ...]] = {}


def declarations(cls: type[Options]) -> tuple[Declaration, ...]:
    """The options ``cls`` declares (its own and inherited), in declaration order."""
    declared = _DECLARED.get(cls)
    if declared is None:
        declared = _DECLARED[cls] = tuple(
            Declaration(field.name, field.default, field.metadata[_SPEC])
            for field in dataclasses.fields(cls)
            if _SPEC in field.metadata
        )
    return declared


def declaration(cls: type[Options], name: str) -> Declaration:
    return next(d for d in declarations(cls) if d.name == name)


class OptionError(RelayError, ValueError):
    """A bad option value, or a bad combination; ``str()`` names options as Python keywords.

    ``reason`` may name other options as ``{name}``: each surface spells them its
    own way (``reconnect_delay`` in Python, ``--reconnect-delay`` on the command line).
    """

    def __init__(self, name: str, reason: str, value: Any = _UNSHOWN) -> None:
        self.name = name
        self.reason = reason
        self.value = value
        super().__init__(self.message(str))

    def message(self, spell: Callable[[str], str], *, named: bool = True) -> str:
        """The message with every option spelled by ``spell``; without ``named``, it leaves
        out the option itself (click puts the flag in front)."""
        reason = self.reason.format_map(_Spelled(spell))
        shown = "" if self.value is _UNSHOWN else describe(self.value)
        if not named:
            return f"{shown}: {reason}" if shown else reason
        return f"{spell(self.name)}{'=' + shown if shown else ''}: {reason}"


class _Spelled(dict[str, str]):
    def __init__(self, spell: Callable[[str], str]) -> None:
        super().__init__()
        self.spell = spell

    def __missing__(self, key: str) -> str:
        return self.spell(key)


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of the option dataclasses: every field checked by its kind, then together."""

    def __post_init__(self) -> None:
        for declared in declarations(type(self)):
            value = getattr(self, declared.name)
            if value is None and declared.default is None:
                continue
            kind = declared.spec.kind
            try:
                if declared.spec.multiple:
                    if not isinstance(value, tuple | list):
                        raise ValueError("must be a tuple")
                    checked: Any = tuple(kind.check(item) for item in value)
                else:
                    checked = kind.check(value)
            except ValueError as exc:
                shown = _UNSHOWN if kind.hidden else value
                raise OptionError(declared.name, str(exc), shown) from None
            if checked is not value:
                object.__setattr__(self, declared.name, checked)
        self.check_together()

    def check_together(self) -> None:
        """Rules between options (subclasses add theirs); raise OptionError."""

    @classmethod
    def build(cls, given: Self | None = None, /, **changes: Any) -> Self:
        """``given`` (else the defaults) with ``changes``; an unknown name is a TypeError."""
        names = {declared.name for declared in declarations(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)} of {cls.__name__}")
        if given is None:
            return cls(**changes)
        if not isinstance(given, cls):
            raise TypeError(f"options must be a {cls.__name__}, got {type(given).__name__}")
        return dataclasses.replace(given, **changes) if changes else given

    @classmethod
    def split(cls, keywords: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``keywords`` as (those that name options of ``cls``, the others)."""
        names = {declared.name for declared in declarations(cls)}
        ours = {key: value for key, value in keywords.items() if key in names}
        return ours, {key: value for key, value in keywords.items() if key not in names}

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **more: Any) -> Self:
        """From the CLI's parsed values (only those of ``cls``'s own options), plus ``more``."""
        picked = {d.name: values[d.name] for d in declarations(cls) if d.name in values}
        return cls(**picked, **more)


def own_declarations(cls: type[Options], *bases: type[Options]) -> list[Declaration]:
    """The options ``cls`` declares that none of ``bases`` does."""
    inherited: Iterable[str] = {d.name for base in bases for d in declarations(base)}
    return [d for d in declarations(cls) if d.name not in inherited]


def takes_options(cls: type[Options], *, others: bool = False) -> Callable[[F], F]:
    """Show ``cls``'s options as keyword parameters of a function that takes them as
    ``**keywords``, in ``inspect.signature`` and ``help()``; ``others``: it takes more
    keywords than those (they stay ``**keywords``)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        given = list(signature.parameters.values())
        rest = [p for p in given if p.kind is inspect.Parameter.VAR_KEYWORD]
        keywords = [
            inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=d.default)
            for d in declarations(cls)
        ]
        parameters = [p for p in given if p not in rest] + keywords + (rest if others else [])
        func.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return func

    return decorate
