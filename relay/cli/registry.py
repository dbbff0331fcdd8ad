"""The command line's options, built from the declarations of ``relay.options``.

Each declared option becomes an option of the subcommand of its mode (relay,
forwarder, or common to both) and of the seed command, with its
``RELAY_<NAME>`` environment variable (shown in --help); the config file may
set it too. A bad value, or a bad combination found when the options are
built, is a usage error that names the flag and where the value came from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import click

from ..ops import config as config_file
from ..options import (
    Declaration,
    ForwardOptions,
    OptionError,
    ProcessOptions,
    RegistrationOptions,
    RelayOptions,
    SharedOptions,
    declarations,
)
from ..options.declare import own_declarations
from ..options.kinds import Flag, Kind
from ..options.sources import credential_files

CONFIG_META = "relay.config"
"""Key of the loaded config file in ``click.Context.meta``."""
CREDENTIALS_META = "relay.credentials"
"""Key of the options taken from systemd credentials in ``click.Context.meta``."""

RELAY, FORWARDER, COMMON = "relay", "forwarder", "common"
"""Option groups: relay-only, forwarder-only, both."""

GROUPS: dict[str, list[Declaration]] = {
    RELAY: own_declarations(RelayOptions, SharedOptions),
    FORWARDER: [  # the forwarder's own first, as --help has always listed them
        *own_declarations(ForwardOptions, RegistrationOptions),
        *own_declarations(RegistrationOptions, SharedOptions),
    ],
    COMMON: [*declarations(SharedOptions), *declarations(ProcessOptions)],
}
_SPELLING = {
    d.name: d.on_command_line
    for options in (RelayOptions, ForwardOptions, ProcessOptions)
    for d in declarations(options)
}


class GroupedOption(click.Option):
    """An option listed under the heading of its mode in --help."""

    def __init__(self, *args: Any, group: str = COMMON, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def get_help_extra(self, ctx: click.Context) -> Any:
        """click's extras, with the range of a kind of ours."""
        extra = super().get_help_extra(ctx)
        bounds = self.type.bounds() if isinstance(self.type, Kind) else None
        if bounds is not None:
            extra["range"] = bounds
        return extra

    def consume_value(
        self, ctx: click.Context, opts: Mapping[str, Any]
    ) -> tuple[Any, click.core.ParameterSource]:
        value, source = super().consume_value(ctx, opts)
        ctx.meta[f"relay.source.{self.name}"] = source  # for get_error_hint, called before
        return value, source  # click records the source itself

    def get_error_hint(self, ctx: click.Context | None) -> str:
        """Name where a bad value came from: the flag, its env var, or the config file."""
        hint = " / ".join(f"'{name}'" for name in self.opts)
        source = ctx.meta.get(f"relay.source.{self.name}") if ctx is not None else None
        if source is click.core.ParameterSource.ENVIRONMENT and self.envvar:
            return f"{hint} (env var {self.envvar})"
        if ctx is not None and self.name in ctx.meta.get(CREDENTIALS_META, {}):
            return f"{hint} (systemd credential {ctx.meta[CREDENTIALS_META][self.name]})"
        if source is click.core.ParameterSource.DEFAULT_MAP and ctx is not None:
            found = loaded_config(ctx)
            return f"{hint} (in {found.path if found is not None else 'the config file'})"
        return hint


def click_option(declared: Declaration, group: str) -> GroupedOption:
    """The click option of one declared option."""
    spec = declared.spec
    flag = declared.flag
    names = [spec.short] if spec.short else []
    names += [f"{flag}/--no-{flag[2:]}" if spec.negatable else flag, declared.name]
    kwargs: dict[str, Any] = {
        "help": spec.help,
        "envvar": declared.envvar,
        "show_envvar": True,
        "default": declared.default,
        "multiple": spec.multiple,
    }
    if isinstance(spec.kind, Flag):
        kwargs["is_flag"] = True
        kwargs["show_default"] = declared.default is True
    else:
        kwargs["type"] = spec.kind
        kwargs["metavar"] = spec.metavar
        if declared.default not in (None, ()):
            # As --help shows it; click reads it like any text (``show`` reads back).
            kwargs["default"] = spec.kind.show(declared.default)
            kwargs["show_default"] = True
    return GroupedOption(names, group=group, **kwargs)


def options_of(*groups: str) -> list[GroupedOption]:
    return [
        click_option(declared, group)
        for group in groups
        for declared in GROUPS[group]
        if declared.spec.cli
    ]


def option_names(*groups: str) -> set[str]:
    return {d.name for group in groups for d in GROUPS[group] if d.spec.cli}


def loaded_config(ctx: click.Context) -> config_file.ConfigFile | None:
    found: config_file.ConfigFile | None = ctx.meta.get(CONFIG_META)
    return found


def with_credentials(ctx: click.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the file options not given taken from systemd's credentials."""
    given = {name for name, value in values.items() if value is not None}
    found = credential_files(values.keys(), given)
    ctx.meta[CREDENTIALS_META] = found
    return {**values, **found}


def _spelled(name: str) -> str:
    return _SPELLING.get(name, name)


@contextlib.contextmanager
def usage_errors(ctx: click.Context) -> Iterator[None]:
    """Errors of building from the options, as usage errors that name the flags."""
    try:
        yield
    except OptionError as exc:
        param = next((p for p in ctx.command.params if p.name == exc.name), None)
        if param is None:
            raise click.UsageError(exc.message(_spelled), ctx) from None
        raise click.BadParameter(exc.message(_spelled, named=False), ctx, param) from None
    except ValueError as exc:  # an auth file, a TLS file, a service: their messages say which
        raise click.UsageError(str(exc), ctx) from None
