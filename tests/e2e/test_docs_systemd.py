"""The systemd unit in docs/operating.md, checked by systemd itself (``systemd-analyze
verify``): an unknown or misspelt directive, which systemd would silently ignore, fails.
tests/test_docs.py checks the same unit against a list of directives without systemd."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())


def unit_file() -> str:
    text = (ROOT / "docs" / "operating.md").read_text()
    m = re.search(r"## Running it under systemd\n+```ini\n(.*?)```", text, re.S)
    assert m, "no ```ini unit under 'Running it under systemd' in docs/operating.md"
    return m.group(1)


def test_documented_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed: scripts/test.sh installs Debian's "
                    "systemd package for this test")

    def problems(unit: str) -> list[str]:
        path = tmp_path / "shop.service"
        path.write_text(unit)
        r = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True,
                           timeout=60)
        return [ln for ln in (r.stdout + r.stderr).splitlines()
                if ln.strip() and "is not executable" not in ln]  # /srv/shop: an example

    found = problems(unit_file())
    assert not found, "\n".join(found)
    # It does complain about what systemd would ignore, so the check above means something.
    assert any("LimitNOFILES" in ln for ln in problems(
        unit_file().replace("LimitNOFILE=", "LimitNOFILES=")))
