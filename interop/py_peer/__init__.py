"""The Python halves of the interop scenarios (interop/SCENARIOS.md), on this project's yamux.

Both roles of every scenario:

* ``run_active`` (active.py) -- Python is the yamux **client** and drives the scenario (the
  peer runs ``-role server``, passive);
* ``run_passive`` (passive.py) -- Python is the yamux **server** and obeys the command lines
  (the peer runs ``-role client``, active).

The per-stream roles both sides play (closer and drainer of a half-close, Go Away sender and
refused opener, pinger, big writer, busy reader and writer) are written once, in roles.py.
In every case Python listens on 127.0.0.1 and the peer dials it (:class:`PeerListener`).
``run_against`` (run.py) puts it together for a yamux family (interop/families.py):
listener, peer, the Python half, and an :class:`Outcome` that holds both verdicts plus
everything needed to debug a failure without rerunning it (the peer's stdout/stderr, the
Python exception and traceback, bytes seen/expected of every transfer, and frame counters
of a wire tap on the Python side, tap.py).

Manual use: ``python -m interop.py_peer echo client [--family js]`` (Python = yamux client).
"""

from .active import run_active
from .params import INITIAL_WINDOW, ROLES, SCENARIOS, Params, ScenarioError
from .passive import run_passive
from .report import Report
from .run import Outcome, PeerListener, run_against, run_against_go
from .tap import WireStats, WireTap

__all__ = [
    "INITIAL_WINDOW",
    "ROLES",
    "SCENARIOS",
    "Outcome",
    "Params",
    "PeerListener",
    "Report",
    "ScenarioError",
    "WireStats",
    "WireTap",
    "run_active",
    "run_against",
    "run_against_go",
    "run_passive",
]
