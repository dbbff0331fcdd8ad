"""The option registry: every option declared once, then built for each command that takes it.

An option declared with ``option(...)`` under its group (``relay``,
``forwarder`` or ``common``) becomes an option of the subcommand of its mode
and of the seed command, gets its ``RELAY_<NAME>`` environment variable
(shown in --help) and may be set in the config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from ..ops import config as config_file

ENV_PREFIX = "RELAY_"
CONFIG_META = "relay.config"
"""Key of the loaded config file in ``click.Context.meta``."""

RELAY, FORWARDER, COMMON = "relay", "forwarder", "common"
"""Option groups: relay-only, forwarder-only, both."""


class GroupedOption(click.Option):
    """An option listed under the heading of its mode in --help."""

    def __init__(self, *args: Any, group: str = COMMON, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

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
        if source is click.core.ParameterSource.DEFAULT_MAP and ctx is not None:
            found = loaded_config(ctx)
            return f"{hint} (in {found.path if found is not None else 'the config file'})"
        return hint


@dataclass(frozen=True)
class OptionSpec:
    decls: tuple[str, ...]
    group: str
    kwargs: dict[str, Any]

    def build(self) -> GroupedOption:
        opt = GroupedOption(self.decls, group=self.group, **self.kwargs)
        if opt.envvar is None and opt.name is not None and self.kwargs.get("expose_value", True):
            opt.envvar = ENV_PREFIX + opt.name.upper()
            opt.show_envvar = True
        return opt


OPTIONS: list[OptionSpec] = []


def option(*decls: str, group: str, **kwargs: Any) -> None:
    """Declare an option once: subcommand of its group, seed form, env var and config file."""
    OPTIONS.append(OptionSpec(decls, group, kwargs))


def options_of(*groups: str) -> list[GroupedOption]:
    return [spec.build() for spec in OPTIONS if spec.group in groups]


def option_names(*groups: str) -> set[str]:
    return {name for opt in options_of(*groups) if (name := opt.name) is not None}


def loaded_config(ctx: click.Context) -> config_file.ConfigFile | None:
    found: config_file.ConfigFile | None = ctx.meta.get(CONFIG_META)
    return found
