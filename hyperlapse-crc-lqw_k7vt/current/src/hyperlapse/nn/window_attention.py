"""Window attention over the last ``w`` snapshot states (HTGN's HTA) and the tangent GRU.

With ``S_j`` (``j = 1..w``) the tangent states of the ``w`` previous snapshots of a node::

    e_j = r^T tanh(Q S_j),  a = softmax_j(e),  s_t = sum_j a_j S_j
    S_t = GRUCell(log0 h_t, s_t),  z_t = exp0(gamma * S_t)

There is no positional term, so ``s_t`` does not depend on the order of the window.
``gamma > 0`` is a learned scale (the GRU state is bounded by 1 per coordinate).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry.ball import Manifold, expmap0, logmap0

__all__ = ["WindowAttention", "TangentGRU", "stack_window"]


class WindowAttention(nn.Module):
    """Order-free attention over a window of per-node tangent states.

    Shapes:
        forward: window ``[w, N, d]`` (``w`` may be 0) -> ``(s [N, d], a [w, N])``.
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.query = nn.Linear(dim, hidden, bias=False)
        self.r = nn.Parameter(torch.randn(hidden) / hidden**0.5)

    def forward(self, window: Tensor) -> tuple[Tensor, Tensor]:
        if window.shape[0] == 0:
            return window.new_zeros(window.shape[1:]), window.new_zeros(window.shape[:2])
        e = torch.tanh(self.query(window)) @ self.r  # [w, N]
        a = torch.softmax(e, dim=0)
        return (a.unsqueeze(-1) * window).sum(dim=0), a


class TangentGRU(nn.Module):
    """``S_t = GRUCell(log0 h_t, s_t)``, ``z_t = exp0(gamma * S_t)``.

    Shapes:
        forward: h ``[N, d]`` on the manifold, s ``[N, d]`` -> ``(z [N, d], S_t [N, d])``.
    """

    def __init__(self, dim: int, *, manifold: Manifold):
        super().__init__()
        self.manifold = manifold
        self.cell = nn.GRUCell(dim, dim)
        self.raw_gamma = nn.Parameter(torch.tensor(0.5413))  # softplus -> 1.0

    @property
    def gamma(self) -> Tensor:
        return F.softplus(self.raw_gamma)

    def forward(self, h: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        state = self.cell(logmap0(h, manifold=self.manifold), s)
        return expmap0(self.gamma * state, manifold=self.manifold), state


def stack_window(history: Sequence[Tensor], like: Tensor) -> Tensor:
    """Stack a (possibly empty) history into ``[w, N, d]``."""
    if len(history) == 0:
        return like.new_zeros((0, *like.shape))
    return torch.stack(list(history), dim=0)
