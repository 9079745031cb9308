"""``report.html``: one self-contained page (PNG images inlined as base64, no external links)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .summary import fastest_phases, score_table, structure_change

__all__ = ["render_html", "fastest_phases"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid
#ddd} table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left} img{max-width:100%;display:block;margin:.6em 0}
.muted{color:#777;font-size:.85em} figure{margin:0} figcaption{color:#555;font-size:.85em}
"""


_PROBES = {
    "grid": "grid probes",
    "random": "Gaussian-noise probes",
    "given": "given probes",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(row.get(key))}</td>" for key, _ in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(
    reports: Sequence[Mapping[str, Any]],
    images: Mapping[str, str | Path],
    path: str | Path,
    *,
    title: str = "hyperlapse report",
    summary: Mapping[str, Any] | None = None,
    captions: Mapping[str, str] | None = None,
) -> Path:
    """Write the report page.

    Args:
        reports: the run's reports, in snapshot order.
        images: ``{section title: PNG path}``, inlined in this order.
        path: output ``.html``.
        summary: extra key/value rows for the summary table (run, store, encoder, ...).
        captions: optional ``{section title: caption}``.
    """
    captions = captions or {}
    rows = dict(summary or {})
    if reports:
        first, last = reports[0], reports[-1]
        rows.setdefault("snapshots", len(reports))
        rows.setdefault("steps", f"{first['step']} .. {last['step']}")
        for key, value in last.get("metrics", {}).items():
            rows.setdefault(f"last {key}", value)
        geo = last.get("geometry") or {}
        for name, part in (("probes", geo), ("data", geo.get("data") or {})):
            for layer, stats in (part.get("layers") or {}).items():
                kind = _PROBES.get(geo.get("probes"), "probes") if name == "probes" else (
                    "data probes")
                rows.setdefault(
                    f"layer {layer}: volume vs boundary closeness (Spearman, {kind})",
                    stats.get("spearman_closeness"),
                )
        neurons = last.get("neurons") or {}
        if neurons:
            rows.setdefault(
                "central neurons: Spearman(radius, importance)",
                neurons.get("spearman_radius_importance"),
            )
            rows.setdefault(
                "central neurons: partial Spearman given weight norms (|.| < 0.3: a norm proxy)",
                neurons.get("partial_spearman_radius_importance"),
            )
    summary_html = "<table>" + "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in rows.items()
    ) + "</table>"
    figures = []
    for name, img in images.items():
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        caption = captions.get(name, "")
        figures.append(
            f"<h2>{html.escape(name)}</h2><figure><img alt=\"{html.escape(name)}\" "
            f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(caption)}"
            f"</figcaption></figure>"
        )
    scores = score_table(reports)
    score_html = _table(
        scores,
        [
            ("label", "forecast of t from t-1"),
            ("model", "model"),
            ("baseline", "its baseline"),
            ("baseline_name", "baseline"),
            ("strongest", "strongest baseline"),
            ("snapshots", "snapshots"),
        ],
    ) + (
        "<p class=muted>Means over the snapshots where the score and its baseline are both "
        "defined, on the same candidate edges. A model is worth reading where it beats the "
        "baseline; between snapshots a few steps apart, copying the past is hard to beat.</p>"
    ) if scores else "<p class=muted>No forecast with a baseline yet (two snapshots needed)."\
        "</p>"
    phases = fastest_phases(reports)
    change = structure_change(reports)
    if phases:
        phase_html = _table(
            phases,
            [
                ("step_from", "from step"),
                ("step_to", "to step"),
                ("rate", "drift above noise / step"),
                ("drift", "mean drift"),
                ("noise", "noise floor"),
                ("sign_flips", "sign flips"),
                ("hub_turnover", "central-neuron turnover"),
            ],
        ) + (
            "<p class=muted>Only intervals whose drift exceeds the noise floor (the drift of an "
            "unchanged snapshot). Rate: sqrt(drift^2 - floor^2) / optimizer steps; compare it "
            "between runs recorded at the same interval.</p>"
        )
    elif not change:
        phase_html = "<p class=muted>Fewer than two snapshots: no phases yet.</p>"
    elif all(c["noisy"] is None for c in change):
        phase_html = (
            "<p class=muted>No noise floor was measured (noise_every=0): drift alone cannot tell "
            "change in the network from jitter of the embedding, so no phase is named.</p>"
        )
    else:
        phase_html = (
            "<p class=muted>No interval's drift exceeds its noise floor: the embedding did not "
            "move more than it jitters on an unchanged snapshot.</p>"
        )
    page = (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class=muted>Structure of an MLP's training, embedded in hyperbolic space "
        f"(report schema v{reports[0]['version'] if reports else '-'}).</p>"
        f"<h2>Summary</h2>{summary_html}"
        f"<h2>Forecasts beside their baselines</h2>{score_html}"
        f"<h2>Phases where structure changed fastest</h2>{phase_html}"
        f"{''.join(figures)}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
