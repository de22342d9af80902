"""The bundled demo that ``holdover demo`` runs: a notes app and its three revisions.

``app`` is the app (one aiohttp process per worker, state only in memory); each folder
under ``releases/`` is one revision of it, described by its ``release.toml``; ``tour``
drives simulated users through a deploy (``holdover demo --tour``).
"""

from __future__ import annotations

from pathlib import Path

RELEASES = Path(__file__).resolve().parent / "releases"


def bundled_revisions() -> list[tuple[str, Path]]:
    """``[("v1", path), ("v2", path), ...]``: the revisions the demo ships, in order."""
    found = [p for p in RELEASES.iterdir() if (p / "release.toml").is_file()]
    return sorted(((p.name, p) for p in found), key=lambda r: (len(r[0]), r[0]))
