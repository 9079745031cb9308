"""Recurrent kernel evolution (EvolveGCN-style): the attention kernels follow the watched run.

For one attention layer, with ``p_t = mean_u log0 h_u^t`` the node-mean of the layer's input in the
tangent space at the origin (invariant to the order of the neurons)::

    u_t = GRUCell(p_{t-1}, u_{t-1})          (u_{-1} = 0, p_{-1} = 0)
    W_t = W_base + reshape(MLP(u_t))

so the kernels used on snapshot ``t`` depend on the snapshots before it only. The last layer of the
MLP starts small, so at initialisation ``W_t`` is close to ``W_base``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..geometry.ball import Manifold, logmap0

__all__ = ["KernelEvolution", "layer_summary"]


def layer_summary(h: Tensor, *, manifold: Manifold) -> Tensor:
    """``p = mean_u log0 h_u``: a summary of one snapshot that ignores the order of the nodes.

    Shapes:
        h: ``[N, d]``, returns ``[d]``.
    """
    return logmap0(h, manifold=manifold).mean(dim=0)


class KernelEvolution(nn.Module):
    """GRU over per-snapshot summaries that generates kernel offsets.

    Args:
        dim: summary dimension ``d``.
        kernel_numel: number of kernel entries to generate.
        state_dim: GRU state size.
        hidden: width of the generating MLP.
        init_scale: standard deviation of the MLP's last layer at initialisation.

    Shapes:
        forward: summary ``[d]``, state ``[state_dim]`` -> ``(delta [kernel_numel], new state)``;
        or, for a batch of graphs, ``[B, d]``, ``[B, state_dim]`` -> ``[B, kernel_numel]``,
        ``[B, state_dim]``.
    """

    def __init__(
        self,
        dim: int,
        kernel_numel: int,
        *,
        state_dim: int = 16,
        hidden: int = 32,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.state_dim = state_dim
        self.gru = nn.GRUCell(dim, state_dim)
        self.mlp = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.Tanh(), nn.Linear(hidden, kernel_numel)
        )
        nn.init.normal_(self.mlp[-1].weight, std=init_scale)
        nn.init.zeros_(self.mlp[-1].bias)

    def init_state(self, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The zero GRU state ``u_{-1}``."""
        return torch.zeros(self.state_dim, dtype=dtype, device=device)

    def forward(self, prev_summary: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if prev_summary.dim() == 2:
            u = self.gru(prev_summary, state)
            return self.mlp(u), u
        u = self.gru(prev_summary.unsqueeze(0), state.unsqueeze(0)).squeeze(0)
        return self.mlp(u), u
