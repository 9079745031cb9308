"""Signed-weight head: magnitude as a power law of distance, sign from a tangent direction.

For an edge from ``u`` (layer l) to ``v`` (layer l + 1)::

    log|w_uv| = a + s_u + s_v - alpha * log d_c(z_u, z_v)
    sign logit = < log_{z_u}(z_v), xi_u >_{z_u} / 4 = (lambda_{z_u} / 2) * (log_{z_u}(z_v) . xi0_u)

where ``xi_u`` is the parallel transport to ``z_u`` of ``xi0_u``, a vector in the tangent space at
the origin, and ``lambda_x = 2 / (1 - c |x|^2)`` the conformal factor (so both vectors are compared
in one frame and the logit does not shrink near the boundary). In flat space ``lambda = 2`` and
the logit is ``(z_v - z_u) . xi0_u``.

The per-node scale ``s_u`` and vector ``xi_u`` are functions of the node's representation
(``log0 z_u``) and of its identity embedding (shared by the hidden neurons of a layer), never free
per-index parameters, so the head is equivariant to permutations of hidden neurons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry.ball import Manifold, curvature, dist, eps, logmap, logmap0

__all__ = ["SignedWeightHead"]


class SignedWeightHead(nn.Module):
    """Predict ``log|w|`` and the sign logit of weights from node embeddings.

    Args:
        dim: embedding dimension.
        num_identities: size of the identity table (inputs and outputs unique, hidden per layer).
        manifold: the geoopt manifold.

    Shapes:
        forward: z ``[N, d]``, node_identity ``[N]``, pairs ``[2, P]`` (source, target) ->
        ``(log_magnitude [P], sign_logit [P])``.
    """

    def __init__(self, dim: int, num_identities: int, *, manifold: Manifold):
        super().__init__()
        self.manifold = manifold
        self.offset = nn.Parameter(torch.tensor(-2.0))
        self.raw_alpha = nn.Parameter(torch.tensor(0.0))
        self.scale = nn.Linear(dim, 1)
        self.scale_identity = nn.Embedding(num_identities, 1)
        nn.init.zeros_(self.scale_identity.weight)
        self.direction = nn.Linear(dim, dim)
        self.direction_identity = nn.Embedding(num_identities, dim)
        nn.init.normal_(self.direction_identity.weight, std=0.1)

    @property
    def alpha(self) -> Tensor:
        """The power-law exponent (> 0)."""
        return F.softplus(self.raw_alpha)

    def forward(self, z: Tensor, node_identity: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
        m = self.manifold
        t = logmap0(z, manifold=m)
        s = self.scale(t).squeeze(-1) + self.scale_identity(node_identity).squeeze(-1)
        zu, zv = z[pairs[0]], z[pairs[1]]
        d = dist(zu, zv, manifold=m).clamp_min(eps(z.dtype))  # log d: d >= the ball's EPS
        log_mag = self.offset + s[pairs[0]] + s[pairs[1]] - self.alpha * d.log()
        xi = self.direction(t) + self.direction_identity(node_identity)
        k = curvature(m, z)
        half_lam = 1.0 / (1.0 + k * zu.pow(2).sum(-1)).clamp_min(eps(z.dtype))  # lambda_u / 2
        sign_logit = half_lam * (logmap(zu, zv, manifold=m) * xi[pairs[0]]).sum(-1)
        return log_mag, sign_logit
