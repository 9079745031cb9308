"""Hyperbolic graph attention over the parameter graph, in both directions of the MLP.

For a node ``u`` with incoming neighbours ``v`` (forward edges ``i -> j`` of the MLP and the same
edges reversed), per head ``h``::

    q_u = exp0(W_q log0 x_u),  k_v = exp0(W_k^dir log0 x_v),  v_v = exp0(W_v^dir log0 x_v)
    s_uv = -d_c(q_u, k_v) + e_h(w_uv, dir)
    alpha_uv = softmax_v(s_uv)                         (scatter softmax over u's incoming edges)
    m_u = gyromidpoint_v(v_v; alpha_uv)                (or exp0(sum_v alpha_uv log0 v_v))
    out_u = exp0(tanh(mean_h log0 m_u) + log0 x_u)     (tangent nonlinearity, residual)

``dir`` is forward or backward: keys and values have a kernel per direction. The kernels may be
shifted by ``delta`` (from :class:`~hyperlapse.nn.kernel_evolution.KernelEvolution`), so they can
evolve over the snapshots of a run. Nothing depends on a node's index: permuting the nodes permutes
the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..geometry.ball import Manifold, dist, expmap0, logmap0, scatter_midpoint
from ..scatter import scatter, scatter_softmax
from .batch import GraphBatch, from_dense, to_dense
from .hyp_linear import hyp_linear
from .snapshot import EDGE_ATTR_DIM

__all__ = ["HypGraphAttention", "AGGREGATIONS", "NUM_KERNELS"]

AGGREGATIONS = ("midpoint", "tangent")
# q, k_forward, v_forward, k_backward, v_backward
NUM_KERNELS = 5


class HypGraphAttention(nn.Module):
    """One layer of multi-head hyperbolic graph attention.

    Args:
        dim: embedding dimension ``d`` (every head maps ``d -> d``).
        heads: number of attention heads.
        manifold: the geoopt manifold (ball or flat), passed explicitly.
        aggregation: ``"midpoint"`` (weighted gyromidpoint) or ``"tangent"`` (weighted sum of
            ``log0`` at the origin).
        edge_hidden: width of the MLP embedding the signed edge weight into a score per head.

    Shapes:
        forward: x ``[N, d]`` on the manifold, edge_index ``[2, E]`` (forward direction),
        edge_attr ``[E, 2]``, delta ``[NUM_KERNELS, heads, d, d]`` or None (with ``batch``, a
        :class:`~hyperlapse.nn.batch.GraphBatch`: ``[B, NUM_KERNELS * heads * d * d]``, one
        kernel offset per graph); returns
        ``([N, d], alpha [2E, heads])`` with the first ``E`` rows of alpha for the forward edges.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        manifold: Manifold,
        aggregation: str = "midpoint",
        edge_hidden: int = 16,
    ):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"Expected aggregation to be one of {AGGREGATIONS}, got {aggregation!r}."
            )
        self.dim, self.heads, self.aggregation = dim, heads, aggregation
        self.manifold = manifold
        self.kernel = nn.Parameter(torch.empty(NUM_KERNELS, heads, dim, dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.kernel, -bound, bound)
        # e(w, dir): signed edge weight (normalised per layer) and direction -> a score per head.
        self.edge_mlp = nn.Sequential(
            nn.Linear(EDGE_ATTR_DIM + 1, edge_hidden), nn.Tanh(), nn.Linear(edge_hidden, heads)
        )

    def kernel_numel(self) -> int:
        """Number of kernel entries (what an evolving-kernel generator must produce)."""
        return self.kernel.numel()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        delta: Tensor | None = None,
        batch: GraphBatch | None = None,
    ) -> tuple[Tensor, Tensor]:
        m = self.manifold
        if batch is not None and delta is not None:
            # one kernel per graph of the batch: [B, NUM_KERNELS, heads, d, d]
            kernel = self.kernel + delta.view(-1, *self.kernel.shape)
            q, k_f, v_f, k_b, v_b = _per_graph_hyp_linear(x, kernel, batch, manifold=m)
            return self._attend(x, edge_index, edge_attr, q, (k_f, k_b), (v_f, v_b))
        kernel = self.kernel if delta is None else self.kernel + delta.view_as(self.kernel)
        q = hyp_linear(x, kernel[0], manifold=m)  # [N, H, d]
        keys = [hyp_linear(x, kernel[1 + 2 * r], manifold=m) for r in range(2)]
        vals = [hyp_linear(x, kernel[2 + 2 * r], manifold=m) for r in range(2)]
        return self._attend(x, edge_index, edge_attr, q, keys, vals)

    def _attend(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        q: Tensor,
        keys: Sequence[Tensor],
        vals: Sequence[Tensor],
    ) -> tuple[Tensor, Tensor]:
        m = self.manifold
        n = x.shape[0]
        dst = torch.cat([edge_index[1], edge_index[0]])  # receiver (softmax group)
        num_e = edge_index.shape[1]
        direction = torch.cat(
            [x.new_zeros(num_e, 1), x.new_ones(num_e, 1)]
        )  # 0 forward, 1 backward
        k_e = torch.cat([keys[0][edge_index[0]], keys[1][edge_index[1]]])  # [2E, H, d]
        v_e = torch.cat([vals[0][edge_index[0]], vals[1][edge_index[1]]])
        e = self.edge_mlp(torch.cat([edge_attr.repeat(2, 1), direction], dim=-1))  # [2E, H]
        score = -dist(q[dst], k_e, manifold=m) + e
        alpha = scatter_softmax(score, dst, n)
        if self.aggregation == "midpoint":
            agg = scatter_midpoint(v_e, alpha, dst, n, manifold=m)  # [N, H, d]
            t = logmap0(agg, manifold=m)
        else:
            t = scatter(alpha.unsqueeze(-1) * logmap0(v_e, manifold=m), dst, n, "sum")
        out = torch.tanh(t.mean(dim=1)) + logmap0(x, manifold=m)
        return expmap0(out, manifold=m), alpha


def _per_graph_hyp_linear(
    x: Tensor, kernel: Tensor, batch: GraphBatch, *, manifold: Manifold
) -> list[Tensor]:
    """``exp0(W_b log0 x_n)`` with the kernels ``W_b`` of each node's graph ``b``.

    Shapes:
        x: ``[N, d]``; kernel: ``[B, K, H, d, d]``; returns ``K`` tensors ``[N, H, d]``.
    """
    t = to_dense(logmap0(x, manifold=manifold), batch)  # [B, n, d]
    u = from_dense(torch.einsum("bni,bkhoi->bnkho", t, kernel), batch)  # [N, K, H, d]
    return list(expmap0(u, manifold=manifold).unbind(1))
