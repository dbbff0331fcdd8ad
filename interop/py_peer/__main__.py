"""``python -m interop.py_peer SCENARIO ROLE [--family js] [--size N ...]`` for manual debugging."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .. import families
from .params import ROLES, SCENARIOS
from .run import run_against


def main(argv: list[str] | None = None) -> int:
    """``python -m interop.py_peer SCENARIO ROLE [--size N ...]`` for manual debugging."""
    ap = argparse.ArgumentParser(prog="python -m interop.py_peer")
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("role", choices=ROLES, help="Python's yamux role (client = active)")
    for knob in ("size", "down", "window", "streams", "backlog", "count"):
        ap.add_argument(f"--{knob}", type=int)
    ap.add_argument("--keepalive-interval", type=float)
    ap.add_argument(
        "--family",
        choices=sorted(families.FAMILIES),
        default="go",
        help="the peer's yamux implementation (default: go)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.WARNING)
    overrides = {
        k: v
        for k, v in vars(ns).items()
        if k not in ("scenario", "role", "verbose", "family") and v is not None
    }
    outcome = asyncio.run(run_against(ns.family, ns.scenario, ns.role, **overrides))
    print(outcome.describe())
    return 0 if outcome.ok else 1


sys.exit(main())
