"""Riemannian refinement of node coordinates with geoopt's Riemannian Adam.

The coordinates of one snapshot become a ``geoopt.ManifoldParameter`` on the exact Poincare ball
(``PoincareBallExact``: the update follows the exponential map, not a retraction) -- or on the
flat ``StereographicExact(k=0)`` for the Euclidean baseline -- and are optimised by
``RiemannianAdam(amsgrad=True, stabilize=...)`` in their own parameter group with weight decay 0.
The encoder's heads are frozen; the loss is that of :func:`~hyperlapse.train.losses.loss_terms`
with the smoothness term anchoring the coordinates to the previous snapshot's.

Deterministic and permutation-equivariant: the loss is a sum over nodes and pairs chosen from the
weights only, and Adam acts coordinate-wise.
"""

from __future__ import annotations

import geoopt
import torch
from torch import Tensor

from ..geometry.ball import make_manifold, project
from .losses import TERMS, LossWeights, loss_terms
from .targets import Targets

__all__ = ["refine_snapshot", "coordinates", "riemannian_adam"]


def coordinates(z: Tensor, *, kind: str, c: float = 1.0) -> geoopt.ManifoldParameter:
    """A ``ManifoldParameter`` holding a copy of ``z`` on the exact manifold of ``kind``.

    Shapes:
        z: ``[N, d]``; returns ``[N, d]``.
    """
    manifold = make_manifold(kind, c, exact=True).to(dtype=z.dtype, device=z.device)
    return geoopt.ManifoldParameter(
        project(z.detach().clone(), manifold=manifold), manifold=manifold
    )


def riemannian_adam(
    params: list[geoopt.ManifoldParameter], *, lr: float, stabilize: int | None = 10
) -> geoopt.optim.RiemannianAdam:
    """``RiemannianAdam(amsgrad=True)`` with the coordinates in their own group, weight decay 0."""
    return geoopt.optim.RiemannianAdam(
        [{"params": params, "weight_decay": 0.0}], lr=lr, amsgrad=True, stabilize=stabilize
    )


def refine_snapshot(
    encoder,
    z: Tensor,
    targets: Targets,
    *,
    anchor: Tensor | None = None,
    steps: int = 20,
    lr: float = 0.02,
    weights: LossWeights | None = None,
    stabilize: int | None = 10,
) -> tuple[Tensor, dict[str, float]]:
    """Refine one snapshot's coordinates ``z`` with ``steps`` Riemannian Adam steps.

    Args:
        encoder: a TemporalEncoder (its heads and manifold; its weights are not changed).
        z: the encoder's ``[N, d]`` embedding of the snapshot.
        targets: the snapshot's targets (:func:`~hyperlapse.train.targets.snapshot_targets`).
        anchor: the previous snapshot's refined coordinates (the smoothness term pulls towards
            them); None: anchored to ``z`` itself.
        steps, lr, stabilize: of the optimiser.
        weights: loss weights.

    Returns:
        ``(refined z [N, d] detached, loss terms after refinement as floats)``.
    """
    kind = encoder.config.manifold
    c = float(encoder.manifold.c.detach()) if kind == "poincare" else 1.0
    x = coordinates(z, kind=kind, c=c)
    anchor = (z if anchor is None else anchor).detach()
    opt = riemannian_adam([x], lr=lr, stabilize=stabilize)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_terms(encoder, x, targets, anchor, weights)["total"]
            (grad,) = torch.autograd.grad(loss, [x])
            x.grad = grad
            opt.step()
        with torch.no_grad():
            terms = loss_terms(encoder, x, targets, anchor, weights)
    return x.detach().clone(), {name: float(terms[name]) for name in (*TERMS, "total")}
