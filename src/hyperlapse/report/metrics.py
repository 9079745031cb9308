"""Per-snapshot structure metrics: pure functions from tensors to JSON-ready values.

These build the ``layers``, ``weights``, ``hubs`` and ``scores`` parts of a report (see
:mod:`hyperlapse.report.schema`). Distances are hyperbolic (the manifold is passed in), so the
radius of a node is ``d_c(0, z)``: small radius = central in the hierarchy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..scatter import scatter

__all__ = [
    "NODE_TYPE_NAMES",
    "auc_ap",
    "layer_stats",
    "weight_stats",
    "hub_neurons",
    "structure_change",
]

NODE_TYPE_NAMES = ("input", "hidden", "output")


def auc_ap(scores: Tensor, labels: Tensor) -> tuple[float | None, float | None]:
    """ROC AUC and average precision (:mod:`hyperlapse.train.metrics`), ``None`` if undefined.

    Shapes:
        scores, labels: ``[M]`` (labels bool or 0/1).

    Example:
        >>> auc_ap(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 0, 1, 0]))
        (0.75, 0.8333333333333333)
        >>> auc_ap(torch.tensor([0.9]), torch.tensor([1]))
        (None, None)
    """
    from ..train.metrics import roc_auc_and_ap

    labels = labels.detach().flatten().bool()
    if labels.all() or not labels.any():
        return None, None
    return roc_auc_and_ap(scores, labels)


def layer_stats(
    radius: Tensor,
    node_layer: Tensor,
    widths: Sequence[int],
    drift: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per node layer: mean and std of the hyperbolic radius, and of the drift when given.

    Shapes:
        radius, node_layer, drift: ``[N]``.

    Example:
        >>> out = layer_stats(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 1]), [2, 1])
        >>> [(d["radius_mean"], d["radius_std"], d["drift_mean"]) for d in out]
        [(2.0, 1.0, None), (2.0, 0.0, None)]
    """
    L1 = len(widths)
    r = radius.detach().to(torch.float64)
    count = scatter(torch.ones_like(r), node_layer, L1, "sum")
    mean = scatter(r, node_layer, L1, "sum") / count
    var = scatter((r - mean[node_layer]) ** 2, node_layer, L1, "sum") / count
    if drift is not None:
        d = drift.detach().to(torch.float64)
        dmean = scatter(d, node_layer, L1, "sum") / count
        dmax = scatter(d, node_layer, L1, "amax")
    out = []
    for l in range(L1):
        kind = "input" if l == 0 else ("output" if l == L1 - 1 else "hidden")
        out.append(
            {
                "layer": l,
                "type": kind,
                "width": int(widths[l]),
                "radius_mean": float(mean[l]),
                "radius_std": float(var[l].sqrt()),
                "drift_mean": None if drift is None else float(dmean[l]),
                "drift_max": None if drift is None else float(dmax[l]),
            }
        )
    return out


def weight_stats(
    edge_weight: Tensor,
    edge_layer: Tensor,
    num_layers: int,
    prev_edge_weight: Tensor | None = None,
    links: Tensor | None = None,
    prev_links: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per weight layer ``l`` (edges from node layer ``l`` to ``l + 1``): Frobenius norm, sign
    flips since the previous snapshot (weights whose sign went from + to - or - to +), and the
    number of new links.

    Shapes:
        edge_weight, edge_layer, prev_edge_weight, links, prev_links: ``[E]`` (full graph).

    Example:
        >>> w0, w1 = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-1.0, -2.0, 4.0])
        >>> out = weight_stats(w1, torch.tensor([0, 0, 1]), 2, w0)
        >>> [(round(d["norm"], 3), d["sign_flips"]) for d in out]
        [(2.236, 1), (4.0, 0)]
    """
    w = edge_weight.detach().to(torch.float64)
    norm = scatter(w * w, edge_layer, num_layers, "sum").sqrt()
    count = scatter(torch.ones_like(w), edge_layer, num_layers, "sum")
    flips = new = None
    if prev_edge_weight is not None:
        flipped = (torch.sign(w) * torch.sign(prev_edge_weight.to(torch.float64))) < 0
        flips = scatter(flipped.to(torch.float64), edge_layer, num_layers, "sum")
    if links is not None and prev_links is not None:
        new = scatter((links & ~prev_links).to(torch.float64), edge_layer, num_layers, "sum")
    return [
        {
            "layer": l,
            "norm": float(norm[l]),
            "num_weights": int(count[l]),
            "sign_flips": None if flips is None else int(flips[l]),
            "sign_flip_frac": None if flips is None else float(flips[l] / count[l]),
            "new_links": None if new is None else int(new[l]),
        }
        for l in range(num_layers)
    ]


def hub_neurons(
    radius: Tensor,
    node_type: Tensor,
    node_layer: Tensor,
    node_index: Tensor,
    k: int,
    prev_nodes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The ``k`` hidden neurons of smallest hyperbolic radius and how many are new since the
    previous snapshot (``turnover``).

    Ties in radius are broken by node id, so the choice is deterministic.

    Shapes:
        radius, node_type, node_layer, node_index: ``[N]``.

    Example:
        >>> h = hub_neurons(torch.tensor([0.1, 0.5, 0.2, 0.9]), torch.tensor([0, 1, 1, 1]),
        ...                 torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 2]), 2, [1, 3])
        >>> h["nodes"], h["turnover"]
        ([2, 1], 1)
    """
    hidden = torch.nonzero(node_type == 1).flatten()
    if hidden.numel() == 0:
        return {"nodes": [], "layer": [], "index": [], "radius": [], "turnover": None}
    r = radius.detach()[hidden].to(torch.float64)
    k = min(k, hidden.numel())
    order = torch.argsort(r, stable=True)[:k]
    nodes = hidden[order]
    turnover = None
    if prev_nodes is not None:
        turnover = len(set(nodes.tolist()) - set(prev_nodes))
    return {
        "nodes": nodes.tolist(),
        "layer": node_layer[nodes].tolist(),
        "index": node_index[nodes].tolist(),
        "radius": r[order].tolist(),
        "turnover": turnover,
    }


def structure_change(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rate of structural change between consecutive reports, against the noise floor: see
    :func:`hyperlapse.report.summary.structure_change` (kept here for scripts that import it)."""
    from .summary import structure_change as change

    return change(reports)
