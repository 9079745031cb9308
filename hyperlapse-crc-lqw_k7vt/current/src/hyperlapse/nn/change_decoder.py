"""Change-aware decoder: a learned correction on top of a strong closed-form forecast.

For an edge ``e = (u, v)`` and each forecast target ``k`` (link, new link, sign flip)::

    logit_k(e) = exp(a_k) * ref_k(e) + g_k(z_u, z_v, f_e)

``ref_k`` is the reference baseline's score (the per-layer-normalised linear extrapolation of the
weight, :mod:`hyperlapse.train.forecast`), ``f_e`` the edge's recent history (normalised deltas,
horizon, time gap) and ``g`` a small MLP whose last layer starts at exactly zero, with
``a_k = 0``: an untrained decoder returns ``ref`` itself, so a model built on it starts at the
baseline and training can only move it where the data say so. ``g`` sees each endpoint through
its tangent vector at the origin, its radius and the geodesic distance between the two (per-node
and per-edge quantities: equivariant to permutations of hidden neurons).

Shapes:
    forward: z ``[N, d]``, pairs ``[2, E]``, features ``[E, F]``, reference ``[E, K]`` ->
    logits ``[E, K]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..geometry.ball import Manifold, dist, dist0, logmap0

__all__ = ["ChangeDecoder"]


class ChangeDecoder(nn.Module):
    """``logit = exp(a) * reference + g(z_u, z_v, features)``, ``g`` zero at initialisation.

    Args:
        dim: embedding dimension ``d`` (0: ``g`` sees the edge features only).
        num_features: columns of the edge features ``F``.
        num_targets: forecast targets ``K``.
        hidden: width of ``g``.
        manifold: the embeddings' geoopt manifold.

    Example:
        >>> from hyperlapse.geometry.ball import make_manifold
        >>> dec = ChangeDecoder(4, 3, 2, manifold=make_manifold())
        >>> z = torch.zeros(3, 4)
        >>> ref = torch.randn(2, 2)
        >>> out = dec(z, torch.tensor([[0, 1], [2, 2]]), torch.randn(2, 3), ref)
        >>> torch.equal(out, ref)
        True
    """

    def __init__(
        self,
        dim: int,
        num_features: int,
        num_targets: int = 3,
        *,
        hidden: int = 32,
        manifold: Manifold,
    ) -> None:
        super().__init__()
        self.manifold = manifold
        self.dim = dim
        self.log_scale = nn.Parameter(torch.zeros(num_targets))
        width = num_features + (2 * dim + 3 if dim > 0 else 0)
        self.g = nn.Sequential(
            nn.Linear(width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, num_targets),
        )
        nn.init.zeros_(self.g[-1].weight)
        nn.init.zeros_(self.g[-1].bias)
        # standardisation of the edge features (set from training data: set_feature_scale)
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))

    def set_feature_scale(self, features: Tensor) -> None:
        """Standardise the edge features with the mean and std of ``features`` ``[M, F]``."""
        with torch.no_grad():
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def correction(self, z: Tensor | None, pairs: Tensor, features: Tensor) -> Tensor:
        """``g`` alone, ``[E, K]``."""
        parts = [(features - self.feature_mean) / self.feature_std]
        if self.dim > 0:
            if z is None:
                raise ValueError("ChangeDecoder built with dim > 0 needs embeddings z.")
            m = self.manifold
            t = logmap0(z, manifold=m)
            zu, zv = z[pairs[0]], z[pairs[1]]
            parts += [
                t[pairs[0]],
                t[pairs[1]],
                dist(zu, zv, manifold=m).unsqueeze(-1),
                dist0(zu, manifold=m).unsqueeze(-1),
                dist0(zv, manifold=m).unsqueeze(-1),
            ]
        return self.g(torch.cat([p.to(features.dtype) for p in parts], dim=-1))

    def correction_is_zero(self) -> bool:
        """Whether ``g``'s last layer is exactly zero (untrained): then ``g == 0`` everywhere."""
        last = self.g[-1]
        return not bool(last.weight.any()) and not bool(last.bias.any())

    def forward(
        self, z: Tensor | None, pairs: Tensor, features: Tensor, reference: Tensor
    ) -> Tensor:
        scaled = self.log_scale.exp() * reference
        if not torch.is_grad_enabled() and self.correction_is_zero():
            return scaled  # skip the MLP over every edge: its output is exactly 0
        return scaled + self.correction(z, pairs, features)
