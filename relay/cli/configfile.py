"""``--config FILE``: the TOML file becomes the command's ``default_map``.

Precedence stays click's: command line > environment > config file > default.
Paths in the file are relative to the file (``relay.options.sources``).
"""

from __future__ import annotations

import click

from ..ops import config as config_file
from ..options import ENV_PREFIX
from ..options.sources import in_config_file
from .registry import COMMON, CONFIG_META, FORWARDER, RELAY, GroupedOption, option_names


def load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Eager: read the file before any other option, as the ``default_map`` of the command."""
    if value is None:
        return
    try:
        loaded = config_file.load(
            value,
            common=option_names(COMMON),
            server=option_names(RELAY),
            forward=option_names(FORWARDER) | {"local_forward_port"},
        )
    except config_file.ConfigFileError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    modes: dict[str, tuple[str, ...]] = {
        "server": (config_file.SERVER_SECTION,),
        "forward": (config_file.FORWARD_SECTION,),
    }
    defaults = loaded.defaults(
        *modes.get(ctx.info_name or "", (config_file.SERVER_SECTION, config_file.FORWARD_SECTION))
    )
    arguments = config_file.SERVER_ARGUMENTS | config_file.FORWARD_ARGUMENTS
    directory = loaded.path.absolute().parent
    ctx.default_map = in_config_file(
        {k: v for k, v in defaults.items() if k not in arguments}, directory
    )
    ctx.meta[CONFIG_META] = loaded


def config_option() -> click.Option:
    return GroupedOption(
        ["--config"],
        group=COMMON,
        metavar="FILE",
        envvar=ENV_PREFIX + "CONFIG",
        show_envvar=True,
        is_eager=True,
        expose_value=False,
        callback=load_config,
        type=click.Path(dir_okay=False),
        help="TOML file of option defaults, forwarded services and auth clients "
        "(flag > environment > file > default).",
    )
