"""Ground truth for the per-neuron quantities of a report: importance and weight norms.

A report's interpretive quantities (a neuron's hyperbolic radius, the "central" neurons) are only
worth reading if they carry information about what the neuron does. This module measures it:

* importance of hidden neuron ``j`` on probe inputs: what zeroing its output does to the network,
  ``mean_x |f(x) - f_{-j}(x)|^2`` over the outputs (label-free, usable live), or the increase of
  the loss when labels are given (:func:`neuron_importance`);
* its incoming and outgoing weight norms ``|W_l[j, :]|``, ``|W_{l+1}[:, j]|``
  (:func:`weight_norms`), the trivial explanation of most structure;
* Spearman and *partial* Spearman correlations (:func:`partial_spearman`: ranks, controls
  regressed out), so a quantity that only restates weight norm shows ~0 partial correlation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry.pullback import mlp_forward

__all__ = [
    "neuron_importance",
    "weight_norms",
    "rank",
    "partial_spearman",
    "neuron_ground_truth",
    "top_turnover",
]


def _hidden_widths(architecture: Mapping[str, Any]) -> list[int]:
    return list(architecture["widths"])[1:-1]


def neuron_importance(
    state: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    probes: Tensor,
    targets: Tensor | None = None,
) -> Tensor:
    """Per hidden neuron (in node order: layer 1 first), the effect of ablating it.

    Without ``targets``: ``mean_x |f(x) - f_{-j}(x)|^2`` (outputs ``f``). With integer
    ``targets``: increase of the cross-entropy; with float targets: increase of the mean
    squared error. One batched forward per hidden layer.

    Shapes:
        probes: ``[B, n_0]``; targets: ``[B]`` (int) or ``[B, n_L]`` (float); returns
        ``[sum of hidden widths]`` float64.

    Example:
        >>> from torch import nn
        >>> from hyperlapse import describe_mlp
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> with torch.no_grad():
        ...     _ = net[2].weight.copy_(torch.tensor([[1.0, 0.0, 2.0]]))
        >>> imp = neuron_importance(net.state_dict(), describe_mlp(net), torch.randn(16, 2))
        >>> bool(imp[1] == 0), bool(imp[2] > 0)
        (True, True)
    """
    x = probes.detach().to(torch.float64)
    base = mlp_forward(state, architecture, x, dtype=torch.float64)[-1]

    def cost(out: Tensor) -> Tensor:  # [..., B, n_L] -> [...]
        if targets is None:
            return (out - base).pow(2).sum(-1).mean(-1)
        if not targets.is_floating_point():
            logp = F.log_softmax(out, dim=-1)
            idx = targets.long().expand(*out.shape[:-1]).unsqueeze(-1)
            return -logp.gather(-1, idx).squeeze(-1).mean(-1)
        return (out - targets.to(out)).pow(2).mean((-2, -1))

    ref = cost(base.unsqueeze(0))[0] if targets is not None else torch.zeros((), dtype=x.dtype)
    out = []
    for l, n in enumerate(_hidden_widths(architecture), start=1):
        mask = (1 - torch.eye(n, dtype=torch.float64)).unsqueeze(1)  # [n, 1, n]
        ablated = mlp_forward(
            state, architecture, x.expand(n, *x.shape), dtype=torch.float64, scale={l: mask}
        )[-1]
        out.append(cost(ablated) - ref)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def weight_norms(state: Mapping[str, Tensor], architecture: Mapping[str, Any]) -> Tensor:
    """Per hidden neuron (node order), ``[in_norm, out_norm]``: ``|W_l[j, :]|`` and
    ``|W_{l+1}[:, j]|``.

    Shapes:
        returns ``[sum of hidden widths, 2]`` float64.
    """
    layers = architecture["layers"]
    rows = []
    for l in range(len(layers) - 1):
        w_in = state[layers[l]["weight"]].detach().to(torch.float64)
        w_out = state[layers[l + 1]["weight"]].detach().to(torch.float64)
        rows.append(torch.stack([w_in.norm(dim=1), w_out.norm(dim=0)], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def rank(x: Tensor) -> Tensor:
    """Average ranks ``1..n`` (ties share their mean rank).

    Example:
        >>> rank(torch.tensor([3.0, 1.0, 3.0])).tolist()
        [2.5, 1.0, 2.5]
    """
    x = x.detach().to(torch.float64).flatten()
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    uniq, inv = torch.unique(x, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, r)
    counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
    return (sums / counts)[inv]


def partial_spearman(x: Tensor, y: Tensor, controls: Tensor | Sequence[Tensor] = ()) -> float:
    """Spearman correlation of ``x`` and ``y`` after regressing the ranks of ``controls`` out.

    With no controls it is the plain Spearman correlation. ``nan`` when undefined.

    Shapes:
        x, y: ``[n]``; controls: ``[n, k]`` or k tensors ``[n]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> c = torch.randn(200, generator=g)  # x and y only share c
        >>> x, y = c + 0.3 * torch.randn(200, generator=g), c + 0.3 * torch.randn(200, generator=g)
        >>> partial_spearman(x, y) > 0.85, abs(partial_spearman(x, y, c)) < 0.2
        (True, True)
    """
    rx, ry = rank(x), rank(y)
    n = rx.numel()
    if isinstance(controls, Tensor):
        cols = [controls] if controls.dim() == 1 else list(controls.T)
    else:
        cols = list(controls)
    design = torch.stack([torch.ones(n, dtype=torch.float64), *[rank(c) for c in cols]], dim=1)
    if cols:
        beta = torch.linalg.lstsq(design, torch.stack([rx, ry], dim=1)).solution
        res = torch.stack([rx, ry], dim=1) - design @ beta
    else:
        res = torch.stack([rx - rx.mean(), ry - ry.mean()], dim=1)
    den = float(res[:, 0].norm() * res[:, 1].norm())
    return float(res[:, 0] @ res[:, 1]) / den if den > 1e-12 else float("nan")


def top_turnover(previous: Tensor | None, current: Tensor, k: int) -> int | None:
    """How many of the ``k`` largest entries of ``current`` were not among the ``k`` largest of
    ``previous`` (ties broken by position); None without ``previous``."""
    if previous is None:
        return None
    k = min(k, current.numel())
    now = set(torch.argsort(-current, stable=True)[:k].tolist())
    before = set(torch.argsort(-previous, stable=True)[:k].tolist())
    return len(now - before)


def neuron_ground_truth(
    state: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    probes: Tensor,
    radius: Tensor,
    targets: Tensor | None = None,
) -> dict[str, Any]:
    """Importance, weight norms and how the hidden neurons' radius relates to them.

    Args:
        radius: ``[sum of hidden widths]`` the hidden neurons' hyperbolic radius (node order).

    Returns:
        JSON-ready ``{"importance", "in_norm", "out_norm": lists per hidden neuron,
        "spearman_radius_importance", "partial_spearman_radius_importance" (given in and out
        norm), "spearman_norm_importance" (in * out norm vs importance),
        "spearman_radius_norm"}``.
    """
    imp = neuron_importance(state, architecture, probes, targets)
    norms = weight_norms(state, architecture)
    r = radius.detach().to(torch.float64).cpu()
    prod = norms[:, 0] * norms[:, 1]
    return {
        "importance": imp.tolist(),
        "in_norm": norms[:, 0].tolist(),
        "out_norm": norms[:, 1].tolist(),
        "spearman_radius_importance": partial_spearman(r, imp),
        "partial_spearman_radius_importance": partial_spearman(r, imp, norms),
        "spearman_norm_importance": partial_spearman(prod, imp),
        "spearman_radius_norm": partial_spearman(r, prod),
    }
