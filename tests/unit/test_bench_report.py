"""The benchmark reports name only files they wrote: no plot link without matplotlib."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
BENCH = ROOT / "bench"


@pytest.fixture
def upgrade_bench(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "upgrade_bench", raising=False)
    return importlib.import_module("upgrade_bench")


META = {"started": "2026-12-01 10:00 UTC", "command": "python bench/upgrade_bench.py",
        "machine": {"cpu": "test", "cores": 2, "python": "3.11", "loadavg_1m_at_start": 0.1},
        "versions": {"holdover": "holdover 0.1.0"},
        "settings": {"users": 1, "session_seconds": 10, "warmup": 1, "phase": 1,
                     "drain_max": 1}}


def test_no_png_claimed_without_matplotlib(upgrade_bench, tmp_path: Path) -> None:
    png = tmp_path / "upgrade.png"
    note = upgrade_bench.plot([], png)
    assert note and "matplotlib is not installed" in note
    assert not png.exists()
    report = upgrade_bench.markdown([{"target": "nginx", "error": "not installed"}], META,
                                    None)
    assert "![timeline]" not in report and ".png" not in report
    assert "No timeline plot: matplotlib is not installed" in report
    with_plot = upgrade_bench.markdown([{"target": "nginx", "error": "x"}], META,
                                       "upgrade.png")
    assert "![timeline](upgrade.png)" in with_plot
