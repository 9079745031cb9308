"""Loss terms of the encoder: link BCE, magnitude regression, sign BCE, temporal smoothness.

Every term is returned separately (and weighted into ``total``) so each can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry.ball import dist
from .targets import Targets

__all__ = ["LossWeights", "loss_terms", "TERMS"]

TERMS = ("link", "magnitude", "sign", "smooth")


@dataclass
class LossWeights:
    """Weights of the loss terms."""

    link: float = 1.0
    magnitude: float = 0.5
    sign: float = 0.5
    smooth: float = 0.1


def loss_terms(
    encoder: nn.Module,
    z: Tensor,
    targets: Targets,
    z_prev: Tensor | None = None,
    weights: LossWeights | None = None,
) -> dict[str, Tensor]:
    """The loss terms of embedding ``z`` against one snapshot's targets.

    * link: BCE of the Fermi-Dirac logits, links vs the sampled non-links;
    * magnitude: mean squared error of the predicted ``log|w|``;
    * sign: BCE of the sign logits (positive weight = 1);
    * smooth: ``mean_u d_c(z_u, z_prev_u)^2`` (0 without ``z_prev``).

    Args:
        encoder: a :class:`~hyperlapse.nn.encoder.TemporalEncoder` (its heads are used).

    Shapes:
        z, z_prev: ``[N, d]``; returns scalars under :data:`TERMS` and ``"total"``.
    """
    weights = weights or LossWeights()
    logits = encoder.link_head(z, targets.pairs)
    log_mag, sign_logit = encoder.weight_head(z, targets.node_identity, targets.pairs)
    terms = {
        "link": F.binary_cross_entropy_with_logits(logits, targets.link),
        "magnitude": F.mse_loss(log_mag, targets.log_magnitude),
        "sign": F.binary_cross_entropy_with_logits(sign_logit, targets.sign),
    }
    if z_prev is None:
        terms["smooth"] = z.new_zeros(())
    else:
        terms["smooth"] = dist(z, z_prev, manifold=encoder.manifold).pow(2).mean()
    terms["total"] = sum(getattr(weights, name) * terms[name] for name in TERMS)
    return terms
