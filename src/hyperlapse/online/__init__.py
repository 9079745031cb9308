"""Online analysis of a training run: snapshots in (from a recorder or a store), one structure
report per snapshot out.

- :mod:`~hyperlapse.online.sources`: the one way snapshots arrive (a store's committed
  snapshots, followed as they are committed).
- :mod:`~hyperlapse.online.analyzer`: :class:`OnlineEncoder`, the per-snapshot pipeline.
- :mod:`~hyperlapse.online.session`: reports.jsonl, terminal lines, the page.
- :mod:`~hyperlapse.online.runner`: :class:`RunAnalysis`, bounded and restartable (the board).
- :mod:`~hyperlapse.online.analyze`, :mod:`~hyperlapse.online.live`: ``analyze``/``watch`` and
  the recorder's :class:`LiveReport`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OnlineEncoder", "RunAnalysis", "LiveReport"]

_LAZY = {
    "OnlineEncoder": "hyperlapse.online.analyzer",
    "RunAnalysis": "hyperlapse.online.runner",
    "LiveReport": "hyperlapse.online.live",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyperlapse.online' has no attribute {name!r}")
