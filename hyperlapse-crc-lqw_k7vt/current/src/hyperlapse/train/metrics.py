"""Ranking and agreement metrics, implemented here so the package needs no scikit-learn.

All functions take 1-D tensors (or anything ``torch.as_tensor`` accepts), handle ties the usual
way (average ranks; one precision-recall point per distinct score) and return Python floats
(``nan`` when undefined, e.g. AUC with a single class).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["rankdata", "roc_auc", "average_precision", "roc_auc_and_ap", "spearman", "accuracy"]


def _flat(x) -> Tensor:
    return torch.as_tensor(x).detach().reshape(-1).to(torch.float64).cpu()


def rankdata(x) -> Tensor:
    """Ranks ``1..n`` with ties given their average rank (scipy's ``rankdata`` 'average').

    Shapes:
        x: ``[n]``; returns ``[n]`` float64.

    Example:
        >>> rankdata([10.0, 20.0, 10.0, 30.0]).tolist()
        [1.5, 3.0, 1.5, 4.0]
    """
    x = _flat(x)
    n = x.numel()
    if n == 0:
        return x
    order = torch.argsort(x, stable=True)
    xs = x[order]
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = xs[1:] != xs[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    counts = torch.bincount(group).to(torch.float64)
    ends = torch.cumsum(counts, 0)
    avg = ends - (counts - 1) / 2.0
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = avg[group]
    return ranks


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (probability a positive outranks a negative, ties count 1/2).

    Example:
        >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s, y = _flat(scores), _flat(labels) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores, labels) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds.

    The definition of scikit-learn's ``average_precision_score`` (no interpolation).

    Example:
        >>> average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.8333333333333333
    """
    s, y = _flat(scores), (_flat(labels) > 0.5).to(torch.float64)
    n_pos = float(y.sum())
    if n_pos == 0:
        return math.nan
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    tp = torch.cumsum(y, 0)
    seen = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    last = torch.ones(s.numel(), dtype=torch.bool)  # last index of each distinct score
    last[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last], seen[last]
    precision = tp / seen
    recall = tp / n_pos
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def roc_auc_and_ap(scores, labels) -> tuple[float, float]:
    """:func:`roc_auc` and :func:`average_precision` from one sort (the cost of scoring every
    edge of a large MLP is mostly sorting: one sort instead of two halves it).

    Both are computed per distinct score: AUC from the average rank of each group of tied
    scores, AP from the precision and recall at each distinct threshold, descending.

    Example:
        >>> roc_auc_and_ap([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        (0.75, 0.8333333333333333)
    """
    s, y = _flat(scores), (_flat(labels) > 0.5).to(torch.float64)
    n = s.numel()
    n_pos = float(y.sum())
    if n_pos == 0:
        return math.nan, math.nan
    n_neg = n - n_pos
    ss, order = torch.sort(s)
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = ss[1:] != ss[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    counts = torch.bincount(group).to(torch.float64)
    positives = torch.bincount(group, weights=y[order])
    if n_neg > 0:
        avg_rank = torch.cumsum(counts, 0) - (counts - 1) / 2.0
        auc = float(((positives * avg_rank).sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    else:
        auc = math.nan
    tp = torch.cumsum(positives.flip(0), 0)
    seen = torch.cumsum(counts.flip(0), 0)
    recall = tp / n_pos
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return auc, float(((recall - prev) * (tp / seen)).sum())


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks).

    Example:
        >>> round(spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 40.0, 30.0]), 12)
        0.8
    """
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else math.nan


def accuracy(pred, target) -> float:
    """Fraction of equal entries.

    Example:
        >>> accuracy([1, 0, 1, 1], [1, 1, 1, 0])
        0.5
    """
    p, t = _flat(pred), _flat(target)
    return float((p == t).to(torch.float64).mean()) if p.numel() else math.nan
