"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def load_benchmark(monkeypatch):
    """``load_benchmark("name")`` imports ``benchmarks/name.py`` afresh (the folder on
    ``sys.path`` for the test, so a script's own helpers import) and returns the module."""

    def load(name: str):
        monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal; :meth:`screen` is what a terminal would show."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """The lines left on screen: ``\\r`` returns to the line's start and overwrites."""
        lines, cur, col = [], [], 0
        for ch in self.getvalue():
            if ch == "\n":
                lines.append("".join(cur).rstrip())
                cur, col = [], 0
            elif ch == "\r":
                col = 0
            else:
                if col < len(cur):
                    cur[col] = ch
                else:
                    cur.append(ch)
                col += 1
        if cur:
            lines.append("".join(cur).rstrip())
        return lines


@pytest.fixture
def terminal(monkeypatch):
    """A :class:`FakeTerminal` that is stdout and stderr (one screen) for hyperlapse.progress:
    its bars and the lines written above them. (Patching ``sys.stderr`` itself would not
    last: pytest's capture sets it again between a test's setup and its call.)"""
    import hyperlapse.progress

    term = FakeTerminal()
    monkeypatch.setenv("COLUMNS", "200")  # wide enough for any bar (shutil reads it first)
    monkeypatch.setattr(hyperlapse.progress, "sys", SimpleNamespace(stdout=term, stderr=term))
    return term
