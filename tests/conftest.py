"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
