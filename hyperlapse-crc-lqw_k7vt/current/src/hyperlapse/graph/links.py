"""Links, non-links and sparsification: pure functions of the edge weights.

Every selection here depends on the weights only, never on a neuron's index or on a random
generator, so permuting the hidden neurons of an MLP permutes the result the same way. Ties at a
threshold are all kept (the set of edges whose ``|w|`` equals the threshold does not depend on
neuron order, but a choice among them would).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["layer_edge_counts", "top_fraction", "top_k_incoming", "non_link_quantiles"]


def layer_edge_counts(edge_layer: Tensor, num_layers: int) -> Tensor:
    """Number of edges in each weight layer.

    Shapes:
        edge_layer: ``[E]`` int64, returns ``[num_layers]`` int64.
    """
    return torch.bincount(edge_layer, minlength=num_layers)


def _check_fraction(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"Expected the link fraction q to lie in [0, 1], got {q!r}.")


def _num_top(q: float, count: int) -> int:
    """``round(q * count)``, at least 1 when ``q > 0`` and the layer has edges."""
    if q <= 0.0 or count == 0:
        return 0
    return min(count, max(1, int(q * count + 0.5)))


def top_fraction(
    edge_weight: Tensor, edge_layer: Tensor, num_layers: int, q: float = 0.2
) -> Tensor:
    """Mark the top ``q`` fraction of ``|w|`` within each weight layer.

    In a layer with ``E_l`` edges, ``k = max(1, round(q * E_l))`` edges are marked when the
    ``k``-th and ``(k+1)``-th largest ``|w|`` differ. Ties at the threshold are all marked, and
    weights that are exactly 0 are never marked, so the result is a function of the weights alone
    (permutation-equivariant) and may hold a few more than ``k`` edges when weights tie.

    Shapes:
        edge_weight: ``[E]``, edge_layer: ``[E]`` int64, returns ``[E]`` bool.

    Example:
        >>> w = torch.tensor([0.1, -0.9, 0.5, 0.0, 2.0, -1.0])
        >>> top_fraction(w, torch.tensor([0, 0, 0, 0, 1, 1]), 2, q=0.5)
        tensor([False,  True,  True, False,  True, False])
    """
    _check_fraction(q)
    mag = edge_weight.detach().abs()
    out = torch.zeros(mag.shape, dtype=torch.bool, device=mag.device)
    for layer in range(num_layers):
        sel = (edge_layer == layer).nonzero().squeeze(1)
        k = _num_top(q, sel.numel())
        if k == 0:
            continue
        vals = mag[sel]
        threshold = torch.kthvalue(vals, vals.numel() - k + 1).values
        out[sel] = (vals >= threshold) & (vals > 0)
    return out


def top_k_incoming(edge_weight: Tensor, target: Tensor, num_nodes: int, k: int) -> Tensor:
    """Mark, for every target node, its ``k`` incoming edges of largest ``|w|``.

    A node with at most ``k`` incoming edges keeps them all. Ties at a node's ``k``-th largest
    ``|w|`` are all kept (so a node keeps more than ``k`` only when weights tie exactly).

    Shapes:
        edge_weight: ``[E]``, target: ``[E]`` int64, returns ``[E]`` bool.

    Example:
        >>> w = torch.tensor([0.1, -0.9, 0.5, 2.0, -1.0])
        >>> top_k_incoming(w, torch.tensor([3, 3, 3, 4, 4]), 5, k=2)
        tensor([False,  True,  True,  True,  True])
    """
    if k < 1:
        raise ConfigError(f"Expected k >= 1 incoming edges per node, got {k!r}.")
    mag = edge_weight.detach().abs()
    if mag.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=mag.device)
    # Lay each node's incoming |w| out in one row of a padded matrix (-1 pads), then take the
    # k-th largest per row. Edges of a parameter graph are already grouped by target.
    if bool((target[1:] >= target[:-1]).all()):
        order = torch.arange(mag.numel(), device=mag.device)
    else:
        order = torch.sort(target, stable=True).indices
    grouped = target[order]
    degree = torch.bincount(target, minlength=num_nodes)
    start = torch.cumsum(degree, 0) - degree
    position = torch.arange(mag.numel(), device=mag.device) - start[grouped]
    dense = mag.new_full((num_nodes, int(degree.max())), -1.0)
    dense[grouped, position] = mag[order]
    kth = torch.topk(dense, min(k, dense.shape[1]), dim=1).values[:, -1]
    threshold = torch.where(degree > k, kth, torch.full_like(kth, -1.0))
    return mag >= threshold[target]


def non_link_quantiles(
    edge_weight: Tensor, edge_layer: Tensor, num_layers: int, links: Tensor, num: int
) -> Tensor:
    """Pick ``num`` non-links at evenly spaced quantiles of ``|w|``, layer by layer.

    Each layer receives a share of ``num`` proportional to its number of non-links (largest
    remainder, ties to the lower layer). Within a layer the non-links are ordered by ``|w|``
    (stable) and the ones at positions ``floor((i + 0.5) * n / m)`` are taken. When ``num`` is at
    least the number of non-links, all of them are returned. Deterministic and permutation
    equivariant (up to exact ties in ``|w|``); no random generator is involved.

    Shapes:
        edge_weight, edge_layer, links: ``[E]``; returns ``[min(num, #non-links)]`` int64 edge
        ids, grouped by layer, ascending ``|w|`` within a layer.
    """
    if num < 0:
        raise ConfigError(f"Expected a non-negative number of non-links, got {num!r}.")
    if links.shape != edge_weight.shape or links.dtype != torch.bool:
        raise ConfigError(
            f"Expected 'links' to be a bool tensor of shape {tuple(edge_weight.shape)}, got "
            f"{links.dtype} of shape {tuple(links.shape)}. Pass graph.links(q)."
        )
    mag = edge_weight.detach().abs()
    candidates = [
        ((edge_layer == layer) & ~links).nonzero().squeeze(1) for layer in range(num_layers)
    ]
    counts = [int(c.numel()) for c in candidates]
    total = sum(counts)
    if num >= total:
        shares = counts
    else:
        exact = [num * c / total for c in counts]
        shares = [int(e) for e in exact]
        rest = num - sum(shares)
        by_remainder = sorted(range(num_layers), key=lambda i: (-(exact[i] - shares[i]), i))
        for i in by_remainder[:rest]:
            shares[i] += 1
    picked = []
    for cand, n, m in zip(candidates, counts, shares, strict=True):
        if m == 0:
            continue
        ordered = cand[torch.sort(mag[cand], stable=True).indices]
        pos = ((torch.arange(m, dtype=torch.float64) + 0.5) * (n / m)).floor().long()
        picked.append(ordered[pos.clamp_max(n - 1).to(ordered.device)])
    if not picked:
        return torch.zeros(0, dtype=torch.long, device=edge_weight.device)
    return torch.cat(picked)
