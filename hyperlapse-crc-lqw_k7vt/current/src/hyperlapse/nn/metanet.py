"""A metanetwork: the temporal encoder, a permutation-invariant readout and a small head.

For a batch of ``B`` runs, each given by ``T`` snapshots (:class:`~hyperlapse.nn.batch.GraphBatch`
per time step, the runs in the same order)::

    z_t = TemporalEncoder.step_batch(batch_t)                      node embeddings on the ball
    r_t[b, s] = [ mean_{n in (b, s)} log0 z_t[n],                 tangent-space (Frechet-like)
                  mean_{n in (b, s)} d(0, z_t[n]),                 mean at the origin, radius
                  std_{n in (b, s)} d(0, z_t[n]) ]                 mean and spread
    e[b] = [ r_{T-1}[b], mean_t r_t[b] ]                            last snapshot and the path
    y[b] = head(e[b])                                               BatchNorm (over the runs) -> MLP

with ``s`` the node's readout slot (input layer, first hidden layer, later hidden layers,
output layer: :data:`~hyperlapse.nn.batch.READOUT_SLOTS`). Pooling within a slot makes ``e``
invariant to permutations of hidden neurons (the encoder is equivariant to them), and the slots
give MLPs of any depth and width a readout of one length ``2 * 4 * (d + 2)``. Everything is
trained end to end (:mod:`hyperlapse.predict.encoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..geometry.ball import Manifold, dist0, logmap0
from ..scatter import scatter
from .batch import READOUT_SLOTS, GraphBatch
from .encoder import EncoderConfig, TemporalEncoder

__all__ = ["TrajectoryReadout", "MetaNetwork", "readout_dim"]


def readout_dim(d: int) -> int:
    """Length of the readout of embeddings of dimension ``d``."""
    return 2 * len(READOUT_SLOTS) * (d + 2)


class TrajectoryReadout(nn.Module):
    """Per graph and readout slot: tangent mean at the origin, mean and std of the radius.

    Shapes:
        forward: z ``[N, d]`` on the manifold, batch ``GraphBatch`` -> ``[B, 4 * (d + 2)]``.
    """

    def __init__(self, *, manifold: Manifold):
        super().__init__()
        self.manifold = manifold

    def forward(self, z: Tensor, batch: GraphBatch) -> Tensor:
        slots = len(READOUT_SLOTS)
        groups = batch.batch * slots + batch.slot
        size = batch.num_graphs * slots
        t = logmap0(z, manifold=self.manifold)
        r = dist0(z, manifold=self.manifold).unsqueeze(-1)
        mean_t = scatter(t, groups, size, "mean")
        mean_r = scatter(r, groups, size, "mean")
        var_r = (scatter(r.pow(2), groups, size, "mean") - mean_r.pow(2)).clamp_min(0.0)
        # sqrt has an infinite slope at 0 (one-node slots): keep the gradient finite
        std_r = (var_r + 1e-12).sqrt()
        return torch.cat([mean_t, mean_r, std_r], -1).view(batch.num_graphs, -1)


class MetaNetwork(nn.Module):
    """Temporal encoder + :class:`TrajectoryReadout` + MLP head, trained end to end.

    Args:
        encoder: an :class:`~hyperlapse.nn.encoder.EncoderConfig`.
        n_outputs: outputs of the head (classes, or regression targets).
        head_hidden: width of the head's hidden layer.

    Shapes:
        forward: ``T`` GraphBatches of ``B`` runs, ``gaps`` ``T`` entries ``[B]`` (or None) ->
        ``[B, n_outputs]``.
    """

    def __init__(self, encoder: EncoderConfig, n_outputs: int, *, head_hidden: int = 64):
        super().__init__()
        self.encoder = TemporalEncoder(encoder)
        self.readout = TrajectoryReadout(manifold=self.encoder.manifold)
        dim = readout_dim(encoder.d)
        self.head = nn.Sequential(
            nn.BatchNorm1d(dim), nn.Linear(dim, head_hidden), nn.SiLU(),
            nn.Linear(head_hidden, n_outputs),
        )

    def embed(
        self, batches: Sequence[GraphBatch], gaps: Sequence[Tensor | None] | None = None
    ) -> Tensor:
        """The readout ``e`` ``[B, readout_dim(d)]`` of the runs' snapshots."""
        enc = self.encoder
        state = enc.init_batch_state(batches[0].num_graphs)
        reads = []
        for t, batch in enumerate(batches):
            z, state = enc.step_batch(batch, state, gaps=None if gaps is None else gaps[t])
            reads.append(self.readout(z, batch))
        return torch.cat([reads[-1], torch.stack(reads).mean(0)], -1)

    def forward(
        self, batches: Sequence[GraphBatch], gaps: Sequence[Tensor | None] | None = None
    ) -> Tensor:
        return self.head(self.embed(batches, gaps))
