"""The docs that are generated must be current, and the README's commands must exist."""

from pathlib import Path

from holdover import config
from holdover.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == config.reference_markdown(), (
        "docs/configuration.md is stale: run `holdover config-reference > docs/configuration.md`")


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```sh") + 1:lines.index("```sh") + 3]
    assert "holdover demo" in block[0]
    assert "scripts/test.sh" in block[1]
    assert (ROOT / "scripts" / "test.sh").exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    build_parser().parse_args(["demo"])  # the command the README names exists
