"""The install commands in the docs work: hyperlapse is not on PyPI, so none may tell a user to
`pip install hyperlapse` or `pip install "hyperlapse[extra]"` (pip: "No matching
distribution"); the extras they name exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "integrations" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]


def test_no_page_installs_hyperlapse_from_pypi():
    published = re.compile(r"pip install\s+(-U\s+)?['\"]?hyperlapse\b")
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if published.search(line) and "@ git+" not in line:  # a direct URL works
                assert "not published" in line or "not on PyPI" in line, (
                    f"{page.relative_to(ROOT)}:{n} installs hyperlapse from PyPI: {line.strip()}")


def test_extras_named_by_install_commands_exist():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])
    named = set()
    for page in PAGES:
        for group in re.findall(r"pip install -e ['\"]?\.\[([a-z,]+)\]", page.read_text()):
            named |= set(group.split(","))
    assert named and named <= extras | {"extra"}, named - extras
