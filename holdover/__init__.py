"""holdover: a zero-downtime upgrade gateway.

Architecture, one folder each:

- ``proxy/``      the data plane: HTTP/1.1 over raw asyncio protocols and httptools
                  (``http1`` socket-free rules, ``server`` client side, ``upstream``
                  worker side and connection pools).
- ``routing/``    decisions as plain data: which worker gets a request, who waits.
- ``supervisor/`` worker processes: spawn, health, restart with back-off, staged stop,
                  per-worker logs, and the guard that leaves no orphan behind.
- ``gateway.py``  wires the three together in one event loop; ``cli.py`` is the
                  ``holdover`` command; ``config.py`` defines every setting once.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("holdover")  # the installed distribution's, one source of truth
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
