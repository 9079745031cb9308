"""``hyperlapse board``: a local web app over a folder of runs, live while they record.

* :func:`serve` - the server (uvicorn + Starlette; charts drawn by the plotly.js that ships in
  the ``plotly`` package, served from disk: nothing is fetched from the internet);
* :class:`RunIndex` - the stores of a folder and their state;
* :func:`write_comparison` - a self-contained HTML page overlaying runs, for sharing.

Needs the ``board`` extra: ``pip install -e '.[board]' in the hyperlapse clone``.
"""

from __future__ import annotations

from .runs import STATE_DIR, RunIndex, describe_store
from .server import serve
from .static import write_comparison

__all__ = ["RunIndex", "STATE_DIR", "describe_store", "serve", "write_comparison"]
