"""Hyperbolic linear map ``exp0(W log0 h)``: a linear map in the tangent space at the origin."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..geometry.ball import Manifold, expmap0, logmap0

__all__ = ["hyp_linear", "HypLinear"]


def hyp_linear(h: Tensor, weight: Tensor, *, manifold: Manifold) -> Tensor:
    """``exp0(W log0 h)`` for one or several kernels.

    Shapes:
        h: ``[N, d_in]``; weight: ``[d_out, d_in]`` or ``[H, d_out, d_in]`` (one map per head);
        returns ``[N, d_out]`` or ``[N, H, d_out]``.

    Example:
        >>> from hyperlapse.geometry.ball import make_manifold
        >>> ball = make_manifold("poincare")
        >>> h = ball.expmap0(torch.tensor([[0.3, -0.2]]))
        >>> torch.allclose(hyp_linear(h, torch.eye(2), manifold=ball), h)
        True
    """
    t = logmap0(h, manifold=manifold)
    if weight.dim() == 2:
        u = t @ weight.transpose(0, 1)
    else:
        u = torch.einsum("ni,hoi->nho", t, weight)
    return expmap0(u, manifold=manifold)


class HypLinear(nn.Module):
    """A hyperbolic linear layer ``h -> exp0(W log0 h)`` (no bias: it would break the origin).

    Args:
        in_features, out_features: tangent dimensions.
        manifold: the geoopt manifold (passed explicitly, see :mod:`hyperlapse.geometry.ball`).
    """

    def __init__(self, in_features: int, out_features: int, *, manifold: Manifold):
        super().__init__()
        self.manifold = manifold
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, h: Tensor) -> Tensor:
        """Shapes: h ``[N, in_features]`` -> ``[N, out_features]``."""
        return hyp_linear(h, self.weight, manifold=self.manifold)
