"""Interop tooling: Go programs on Debian's hashicorp/yamux and the harness that runs them.

A package only so that ``python -m interop.harness selftest`` and
``from interop import harness`` work from the repository root; it is not part of
the installed distribution (pyproject lists only ``yamux`` and ``relay``).
"""
