"""Command line: ``relay server PORT``, ``relay forward LOCAL_PORT HOST PORT``, and the seed forms.

Every option is declared once in ``relay.options``; here one module per
concept: ``registry`` (the click options of those declarations, grouped by
mode, and their usage errors), ``configfile`` (``--config``), ``help_layout``
(help texts, --help grouping, --version), ``arguments`` (positional
arguments), ``build`` (the relay or forwarder from the options), ``run``
(event loop, signals, drain), ``commands`` (the click commands).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import click

from ..ops import drain, logs
from ..options import ProcessOptions
from ..options.declare import declaration
from .build import build_forwarder, build_server
from .commands import cli
from .registry import COMMON, FORWARDER, RELAY, option_names
from .run import event_loop_factory

__all__ = [
    "COMMON",
    "EXIT_SIGINT",
    "FORWARDER",
    "RELAY",
    "build_forwarder",
    "build_server",
    "cli",
    "event_loop_factory",
    "main",
    "option_names",
]

logger = logging.getLogger("relay.cli")
EXIT_SIGINT = drain.EXIT_SIGINT


def requested_log_format(argv: Sequence[str], ctx: click.Context | None) -> str:
    """The ``--log-format`` asked for however it was given (flag, RELAY_LOG_FORMAT, the
    config file), even when the command line did not parse; ``text`` if none."""
    log_format = declaration(ProcessOptions, "log_format")
    asked: str | None = None
    for i, arg in enumerate(argv):
        if arg.startswith(log_format.flag + "="):
            asked = arg.partition("=")[2]
        elif arg == log_format.flag and i + 1 < len(argv):
            asked = argv[i + 1]
    if asked is None:
        asked = os.environ.get(log_format.envvar)
    while asked is None and ctx is not None:
        asked = (ctx.default_map or {}).get(log_format.name)
        ctx = ctx.parent
    return asked if asked in logs.LOG_FORMATS else logs.LOG_FORMATS[0]


def main() -> None:
    """Console script entry point (``relay``).

    With ``--log-format json`` (or ``logfmt``) a usage error is one log line in that
    format too, so that every stderr line stays one; otherwise click prints it as usual.
    """
    argv = sys.argv[1:]
    try:
        code = cli.main(argv, prog_name="relay", standalone_mode=False)
    except click.ClickException as exc:
        ctx = exc.ctx if isinstance(exc, click.UsageError) else None
        log_format = requested_log_format(argv, ctx)
        if log_format == "text":
            exc.show()
        else:
            logs.setup("info", log_format)
            usage = ctx.get_usage() if ctx is not None else None
            logger.error(
                "%s", exc.format_message(), extra={"exit_code": exc.exit_code, "usage": usage}
            )
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(EXIT_SIGINT)
    sys.exit(code if isinstance(code, int) else 0)
