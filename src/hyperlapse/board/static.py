"""A self-contained comparison page (``comparison.html``) for sharing: the board's comparison
view with plotly.js, the page's script and the runs' data inlined, so it opens offline from a
file or an e-mail, with no server."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import OutputError
from . import data
from .runs import describe_store

__all__ = ["write_comparison"]


def _inline_json(value: object) -> str:
    # "</" would end the <script> element early
    return json.dumps(value, allow_nan=False).replace("</", "<\\/")


def write_comparison(
    stores: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    out_html: str | os.PathLike,
    *,
    analyses: Mapping[str, str | os.PathLike] | None = None,
    max_points: int = data.DEFAULT_MAX_POINTS,
) -> Path:
    """Write a static page overlaying the logged metrics (and, where an analysis exists, drift
    above its noise floor and radius) of several runs.

    Args:
        stores: trajectory stores; a mapping gives each run its display name (default: the
            store's folder name).
        out_html: the page to write.
        analyses: run name -> folder holding that run's ``reports.jsonl`` (e.g. the per-run
            folders of ``hyperlapse sweep``); runs without one show their metrics only.
        max_points: points per series (longer series are decimated, and say so).

    Returns:
        The path written.

    Raises:
        OutputError: ``out_html`` cannot be written.
        MissingDependencyError: ``plotly`` is not installed.

    Example:
        >>> write_comparison(["runs/a.zarr", "runs/b.zarr"], "compare.html")  # doctest: +SKIP
    """
    from .app import ASSETS, plotly_js

    named = (dict(stores) if isinstance(stores, Mapping)
             else {Path(os.fspath(s)).name: s for s in stores})
    analyses = dict(analyses or {})
    payload: dict[str, object] = {"runs": [], "metrics": {}, "reports": {}}
    for name, store in named.items():
        info = describe_store(store)
        payload["runs"].append({"name": name, **info})  # type: ignore[union-attr]
        if info["snapshots"]:
            payload["metrics"][name] = data.metrics_series(store, max_points)  # type: ignore[index]
        if name in analyses:
            payload["reports"][name] = data.report_series(analyses[name], max_points)  # type: ignore[index]
    page = (ASSETS / "compare.html").read_text(encoding="utf-8")
    css = (ASSETS / "board.css").read_text(encoding="utf-8")
    js = (ASSETS / "board.js").read_text(encoding="utf-8")
    plotly = plotly_js().read_text(encoding="utf-8")
    page = page.replace('<link rel="stylesheet" href="/static/board.css">',
                        f"<style>\n{css}</style>")
    page = page.replace('<script src="/vendor/plotly.min.js"></script>',
                        f"<script>{plotly}</script>")
    page = page.replace('<script src="/static/board.js"></script>',
                        f"<script>window.HYPERLAPSE_STATIC = {_inline_json(payload)};</script>\n"
                        f"<script>{js}</script>")
    out = Path(out_html)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(
            f"Expected to write the comparison page to '{out}', but that failed "
            f"({exc.strerror or exc}). Choose a writable location."
        ) from exc
    return out
