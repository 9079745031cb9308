"""Dependencies run one way (graph -> nn -> train -> online -> report); no private cross-imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "hyperlapse"
# what a package must never import (the ones above it in the chain)
ABOVE = {
    "geometry": ("nn", "train", "online", "report", "cli"),
    "nn": ("train", "online", "report", "cli"),
    "train": ("online", "report", "cli"),
}


def _imports(path: Path):
    """``(module, names)`` of every import in a file, relative ones resolved to hyperlapse.*."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            yield module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_import_reaches_back_up(package):
    bad = []
    for path in sorted((SRC / package).rglob("*.py")):
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] == "hyperlapse" and len(parts) > 1 and parts[1] in ABOVE[package]:
                bad.append(f"{path.name}: {module}")
    assert not bad, bad


def test_no_private_name_is_imported_across_packages():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        own = path.relative_to(SRC).parts[0]
        for module, names in _imports(path):
            parts = module.split(".")
            if parts[0] != "hyperlapse" or len(parts) < 2 or parts[1] == own.removesuffix(".py"):
                continue
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or any(p.startswith("_") for p in parts[1:]):
                bad.append(f"{path.relative_to(SRC)}: {module} {private}")
    assert not bad, bad
