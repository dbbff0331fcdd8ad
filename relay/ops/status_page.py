"""The status page at ``/`` of ``--metrics``: one HTML file with its CSS and JavaScript inline.

It fetches ``/status`` every two seconds and shows every table of objects in it
(registrations, services, workers, ...) and ``/readyz``; nothing to build, no
asset from elsewhere, so it works on a host without internet access.
"""

from __future__ import annotations

import functools
from importlib.resources import files


@functools.cache
def html() -> bytes:
    """The page, read once from the package (``status.html``)."""
    return files(__package__).joinpath("status.html").read_bytes()
