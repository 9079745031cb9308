"""Fermi-Dirac link decoder: ``p(u ~ v) = 1 / (exp((d_c(z_u, z_v) - R) / T) + 1)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry.ball import Manifold, dist

__all__ = ["FermiDiracDecoder"]


class FermiDiracDecoder(nn.Module):
    """Link probability from the geodesic distance; ``R`` and ``T > 0`` are learned.

    ``forward`` returns logits ``(R - d) / T`` (``sigmoid`` of it is the probability), so losses
    can use ``binary_cross_entropy_with_logits``.

    Shapes:
        forward: z ``[N, d]``, pairs ``[2, P]`` (u, v) -> logits ``[P]``.
    """

    def __init__(self, *, manifold: Manifold, radius: float = 2.0, temperature: float = 1.0):
        super().__init__()
        self.manifold = manifold
        self.radius = nn.Parameter(torch.tensor(float(radius)))
        self.raw_temperature = nn.Parameter(torch.tensor(float(temperature)).expm1().log())

    @property
    def temperature(self) -> Tensor:
        return F.softplus(self.raw_temperature) + 1e-3

    def forward(self, z: Tensor, pairs: Tensor) -> Tensor:
        d = dist(z[pairs[0]], z[pairs[1]], manifold=self.manifold)
        return (self.radius - d) / self.temperature
