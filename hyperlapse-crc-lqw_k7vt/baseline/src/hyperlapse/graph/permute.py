"""Permute the hidden neurons of an MLP without changing the function it computes.

Convention (torch's gather convention, used everywhere here): a permutation ``p`` is
*new -> old*: new neuron ``j`` of a layer is old neuron ``p[j]``, so ``new = old[p]``.
:func:`node_permutation` and :func:`edge_permutation` follow it for whole graphs
(``new_graph.x == old_graph.x[node_perm]``, ``new_graph.edge_weight ==
old_graph.edge_weight[edge_perm]``); :func:`invert_permutation` turns an id of the old graph into
the id of the same neuron or edge in the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .state import check_state

__all__ = ["permute_hidden", "node_permutation", "edge_permutation", "invert_permutation"]


def invert_permutation(perm: Tensor) -> Tensor:
    """Inverse of a permutation: ``inv[perm[j]] = j`` (maps old ids to new ids).

    Shapes:
        perm: ``[n]`` int64, returns ``[n]`` int64.

    Example:
        >>> invert_permutation(torch.tensor([2, 0, 1]))
        tensor([1, 2, 0])
    """
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def _check_perms(widths: Sequence[int], perms: Sequence[Tensor]) -> None:
    hidden = list(widths[1:-1])
    if len(perms) != len(hidden):
        raise ConfigError(
            f"Expected one permutation per hidden layer ({len(hidden)} for widths "
            f"{list(widths)}), got {len(perms)}."
        )
    for l, (p, n) in enumerate(zip(perms, hidden, strict=True), start=1):
        p = torch.as_tensor(p)
        if p.shape != (n,) or not torch.equal(torch.sort(p.cpu()).values, torch.arange(n)):
            raise ConfigError(
                f"Expected the permutation of hidden layer {l} to hold each of 0..{n - 1} once, "
                f"got a tensor of shape {tuple(p.shape)}: {p.tolist()[:10]}..."
            )


def node_permutation(widths: Sequence[int], perms: Sequence[Tensor]) -> Tensor:
    """Node permutation (new -> old) of the parameter graph for per-hidden-layer permutations.

    Inputs and outputs stay in place.

    Shapes:
        perms: ``L - 1`` tensors ``[n_l]``; returns ``[N]`` int64 with ``new = old[result]``.

    Example:
        >>> node_permutation([2, 3, 1], [torch.tensor([2, 0, 1])])
        tensor([0, 1, 4, 2, 3, 5])
    """
    _check_perms(widths, perms)
    parts, offset = [], 0
    for l, n in enumerate(widths):
        if 0 < l < len(widths) - 1:
            parts.append(offset + torch.as_tensor(perms[l - 1]).long().cpu())
        else:
            parts.append(offset + torch.arange(n))
        offset += n
    return torch.cat(parts)


def edge_permutation(widths: Sequence[int], perms: Sequence[Tensor]) -> Tensor:
    """Edge permutation (new -> old) matching :func:`node_permutation`.

    Edges are laid out layer by layer, row-major over ``W_l[j, i]``; new edge ``(j, i)`` of layer
    ``l`` is old edge ``(rows[j], cols[i])`` where ``rows``/``cols`` are the permutations of
    layers ``l + 1`` and ``l`` (identity for inputs and outputs).

    Shapes:
        returns ``[E]`` int64 with ``new_edge_weight = old_edge_weight[result]``.
    """
    _check_perms(widths, perms)
    L = len(widths) - 1

    def layer_perm(l: int) -> Tensor:
        if 0 < l < L:
            return torch.as_tensor(perms[l - 1]).long().cpu()
        return torch.arange(widths[l])

    parts, base = [], 0
    for l in range(L):
        rows, cols = layer_perm(l + 1), layer_perm(l)
        parts.append(base + (rows[:, None] * widths[l] + cols[None, :]).reshape(-1))
        base += widths[l] * widths[l + 1]
    return torch.cat(parts)


def permute_hidden(
    state: dict[str, Tensor],
    architecture: dict[str, Any],
    perms: Sequence[Tensor] | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Permute the hidden neurons of every hidden layer; the network computes the same function.

    Hidden layer ``l`` (``1 <= l <= L - 1``) is permuted by reordering the rows of ``W_{l-1}`` and
    ``b_{l-1}`` and the columns of ``W_l``. Other entries of ``state`` are copied unchanged. The
    input ``state`` is not modified.

    Args:
        state: parameter name -> tensor, names as in ``architecture["layers"]``.
        architecture: from :func:`hyperlapse.arch.describe_mlp`.
        perms: one new -> old permutation per hidden layer; random (from ``generator``) if None.
        generator: torch generator for the random permutations.

    Returns:
        ``(new_state, perms)``; ``perms[l - 1]`` is the permutation of hidden layer ``l``.

    Example:
        >>> from torch import nn
        >>> from hyperlapse import describe_mlp
        >>> net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        >>> new, perms = permute_hidden(net.state_dict(), describe_mlp(net),
        ...                             generator=torch.Generator().manual_seed(0))
        >>> twin = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        >>> _ = twin.load_state_dict(new)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(net(x), twin(x), atol=1e-6)
        True
    """
    check_state(state, architecture)
    widths = list(architecture["widths"])
    layers = architecture["layers"]
    if perms is None:
        perms = [torch.randperm(n, generator=generator) for n in widths[1:-1]]
    perms = [torch.as_tensor(p).long() for p in perms]
    _check_perms(widths, perms)
    new = dict(state)
    for l in range(1, len(widths) - 1):
        before, after = layers[l - 1], layers[l]
        p = perms[l - 1]
        w = new[before["weight"]]
        new[before["weight"]] = w[p.to(w.device)]
        if before["bias"] is not None:
            b = new[before["bias"]]
            new[before["bias"]] = b[p.to(b.device)]
        w = new[after["weight"]]
        new[after["weight"]] = w[:, p.to(w.device)]
    return new, perms
