"""Zoos: populations of small MLPs trained together, recorded, and read back run by run."""

from __future__ import annotations

from .builders import ZOOS, build_zoo
from .population import PopulationMLP
from .reader import RunView, Zoo, open_zoo

__all__ = ["ZOOS", "PopulationMLP", "RunView", "Zoo", "build_zoo", "open_zoo"]
