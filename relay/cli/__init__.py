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


def _json_requested(argv: Sequence[str]) -> bool:
    """``--log-format json`` on the command line or in RELAY_LOG_FORMAT (before parsing)."""
    log_format = declaration(ProcessOptions, "log_format")
    for i, arg in enumerate(argv):
        if arg == f"{log_format.flag}=json" or (
            arg == log_format.flag and argv[i + 1 : i + 2] == ["json"]
        ):
            return True
    return os.environ.get(log_format.envvar) == "json"


def main() -> None:
    """Console script entry point (``relay``).

    With ``--log-format json`` a usage error is one JSON log line too, so that
    every stderr line stays a JSON object; otherwise click prints it as usual.
    """
    argv = sys.argv[1:]
    try:
        code = cli.main(argv, prog_name="relay", standalone_mode=False)
    except click.ClickException as exc:
        if not _json_requested(argv):
            exc.show()
        else:
            logs.setup("info", "json")
            usage = exc.ctx.get_usage() if isinstance(exc, click.UsageError) and exc.ctx else None
            logger.error(
                "%s", exc.format_message(), extra={"exit_code": exc.exit_code, "usage": usage}
            )
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(EXIT_SIGINT)
    sys.exit(code if isinstance(code, int) else 0)
