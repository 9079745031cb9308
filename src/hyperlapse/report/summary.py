"""The run-level numbers a page shows, each beside what makes it mean something.

Pure functions over a run's reports, shared by ``report.html`` and the board:

- :func:`score_table`: every forecast score beside its baseline on the same candidates and
  snapshots (persistence for links and new links, copying the signs for sign accuracy, the
  normalised extrapolation for sign flips) and the strongest baseline; a score without its
  baseline is left out.
- :func:`structure_change` and :func:`fastest_phases`: drift between snapshots against its
  noise floor, as a rate per optimizer step of the part above the floor; phases are found only
  above the floor. The rate compares between runs recorded at the same interval: the
  embedding's displacement grows slower than the steps between snapshots (docs/reports.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .sections import drift_above_noise

__all__ = ["SCORE_ROWS", "score_table", "structure_change", "fastest_phases", "decimate"]

#: (label, the model's key in ``scores``, its baseline, the baseline's key, what it means).
SCORE_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("link AUC", "link_auc", "persistence", "link_auc", "links at t ranked from t-1"),
    ("link AP", "link_ap", "persistence", "link_ap", "links at t ranked from t-1"),
    ("new-link AUC", "new_link_auc", "persistence", "new_link_auc", "links at t not at t-1"),
    ("new-link AP", "new_link_ap", "persistence", "new_link_ap", "links at t not at t-1"),
    ("sign-flip AUC", "sign_flip_auc", "extrapolation", "sign_flip_auc", "links changing sign"),
    ("sign-flip AP", "sign_flip_ap", "extrapolation", "sign_flip_ap", "links changing sign"),
    ("sign accuracy", "sign_acc", "persistence", "sign_acc", "sign of each link at t"),
)

_BASELINE_TEXT = {
    "persistence": "persistence (t-1 as is)",
    "extrapolation": "extrapolation w + (w - w_prev), normalised",
}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_table(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per forecast score: the model's mean, its baseline's mean over the same snapshots, the
    strongest baseline's mean, and how many snapshots entered (both defined).

    Returns:
        ``[{"label", "key", "model", "baseline", "baseline_name", "strongest", "snapshots",
        "meaning"}]``, only rows whose baseline exists.

    Example:
        >>> r = {"scores": {"link_auc": 0.99, "baselines": {"persistence": {"link_auc": 0.999},
        ...      "extrapolation": {"link_auc": 0.995}}}}
        >>> row = score_table([r, r])[0]
        >>> row["label"], row["model"], row["baseline"], row["strongest"], row["snapshots"]
        ('link AUC', 0.99, 0.999, 0.999, 2)
    """
    rows = []
    for label, key, base, base_key, meaning in SCORE_ROWS:
        model, ours, strongest = [], [], []
        for rep in reports:
            scores = rep.get("scores") or {}
            baselines = scores.get("baselines") or {}
            value = scores.get(key)
            ref = (baselines.get(base) or {}).get(base_key)
            if value is None or ref is None:
                continue
            model.append(value)
            ours.append(ref)
            others = [b.get(base_key) for b in baselines.values() if b.get(base_key) is not None]
            strongest.append(max(others))
        if not model:
            continue
        rows.append(
            {
                "label": label,
                "key": key,
                "model": _mean(model),
                "baseline": _mean(ours),
                "baseline_name": _BASELINE_TEXT.get(base, base),
                "strongest": _mean(strongest),
                "snapshots": len(model),
                "meaning": meaning,
            }
        )
    return rows


def _weighted(rep: Mapping[str, Any], key: str) -> float | None:
    num = den = 0.0
    for layer in rep["layers"]:
        value = layer.get(key)
        if value is None:
            return None
        num += value * layer["width"]
        den += layer["width"]
    return num / den if den else None


def structure_change(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rate of structural change between consecutive reports, against the noise floor.

    For interval ``(t-1, t]``: ``drift`` is the node-weighted mean drift of snapshot ``t``,
    ``noise`` the same mean of its noise floor (the drift of an unchanged snapshot),
    ``above`` the part of the drift the floor does not explain
    (:func:`~hyperlapse.report.sections.drift_above_noise`) and ``rate`` that part per optimizer
    step. Removing the floor keeps jitter, which does not grow with the recording interval,
    out of the rate; the motion itself grows slower than the interval (measured in
    docs/reports.md), so rates compare between runs recorded at the same interval.
    ``noisy`` is True when the drift is not above the floor (``None``: no floor measured).

    Returns:
        one dict per interval: ``{"index", "step_from", "step_to", "drift", "noise", "above",
        "rate", "raw_rate", "noisy", "sign_flips", "hub_turnover", "link_auc"}``.
    """
    out = []
    for prev, rep in zip(reports[:-1], reports[1:], strict=True):
        drift = _weighted(rep, "drift_mean")
        noise = _weighted(rep, "drift_noise")
        steps = max(rep["step"] - prev["step"], 1)
        above = drift_above_noise(drift, noise)
        flips = [w["sign_flips"] for w in rep["weights"] if w["sign_flips"] is not None]
        out.append(
            {
                "index": rep["index"],
                "step_from": prev["step"],
                "step_to": rep["step"],
                "drift": drift,
                "noise": noise,
                "above": above,
                "rate": None if above is None else above / steps,
                "raw_rate": None if drift is None else drift / steps,
                "noisy": None if above is None or drift is None else drift <= noise,
                "sign_flips": sum(flips) if flips else None,
                "hub_turnover": rep["hubs"].get("turnover"),
                "link_auc": rep["scores"].get("link_auc"),
            }
        )
    return out


def fastest_phases(reports: Sequence[Mapping[str, Any]], top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` intervals whose drift above the noise floor, per optimizer step, is largest,
    in step order; intervals under the floor never qualify. Without a floor (``noise_every=0``)
    none qualifies: raw drift cannot tell change from jitter."""
    change = [c for c in structure_change(reports) if c["noisy"] is False]
    best = sorted(change, key=lambda c: -c["rate"])[:top]
    return sorted(best, key=lambda c: c["step_from"])


def decimate(n: int, limit: int = 500) -> tuple[list[int], str]:
    """Indices of at most ``limit`` of ``n`` points, evenly spaced (first and last kept), and a
    note saying so ("" when nothing is left out).

    Example:
        >>> decimate(5, 3)
        ([0, 2, 4], 'every 2nd of 5 snapshots drawn')
        >>> decimate(3, 10)
        ([0, 1, 2], '')
    """
    if n <= limit:
        return list(range(n)), ""
    stride = -(-n // limit)
    picks = list(range(0, n, stride))
    if picks[-1] != n - 1:
        picks.append(n - 1)
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(stride if stride < 20 else stride % 10, "th")
    return picks, f"every {stride}{suffix} of {n} snapshots drawn"
