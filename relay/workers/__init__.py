"""``relay server --workers N``: a supervisor and N relay processes on one control port.

``supervisor`` starts and watches the workers, ``worker`` is the process each
runs (``python -m relay.workers.worker``), ``channel`` the line between the
two, ``aggregate`` the one ``/metrics`` and ``/status`` of them all.
"""
