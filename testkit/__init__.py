"""Helpers shared by tests/, bench/ and interop/: processes, free ports, the Go build, SlowLink.

Not installed with the project: callers put the repository root on ``sys.path``
(pytest does it through ``pythonpath = ["."]``; ``python -m bench`` runs from the
root). Standard library only, so the bench and the interop harness need nothing
beyond Python.
"""
