"""The bundled demo revisions, read without starting them."""

from __future__ import annotations

from holdover.demo import RELEASES, bundled_revisions
from holdover.demo.app import Release
from holdover.demo.launch import next_revision


def test_bundled_revisions_differ_visibly() -> None:
    revs = bundled_revisions()
    assert [r for r, _ in revs] == ["v1", "v2", "v3"]
    releases = [Release.load(path) for _, path in revs]
    assert len({r.accent for r in releases}) == 3
    assert len({r.tagline for r in releases}) == 3
    assert [r.has("pinning") for r in releases] == [False, True, True]
    assert next_revision({"revisions": [{"id": "v1"}]}) == ("v2", RELEASES / "v2")
    assert next_revision({"revisions": [{"id": i} for i in ("v1", "v2", "v3")]}) is None
