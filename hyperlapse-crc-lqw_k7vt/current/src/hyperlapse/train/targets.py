"""Training targets of one snapshot: links, deterministic non-links, magnitudes and signs.

Negatives are chosen from the weights only (:func:`hyperlapse.graph.links.non_link_quantiles`),
never from node indices or a random generator, so the whole pipeline stays equivariant to
permutations of hidden neurons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph.links import non_link_quantiles, top_fraction
from ..nn.snapshot import Snapshot

__all__ = ["Targets", "snapshot_targets", "MIN_MAGNITUDE"]

#: ``|w|`` below this is clamped before the logarithm of the magnitude target.
MIN_MAGNITUDE = 1e-6


@dataclass
class Targets:
    """Pairs to score for one snapshot and what they should score.

    Shapes:
        edge_ids: ``[P]`` ids into the snapshot's full edge list (links first);
        pairs: ``[2, P]`` (source, target) nodes; link, sign: ``[P]`` float 0/1;
        log_magnitude: ``[P]``; node_identity: ``[N]``.
    """

    edge_ids: Tensor
    pairs: Tensor
    link: Tensor
    log_magnitude: Tensor
    sign: Tensor
    node_identity: Tensor


def snapshot_targets(snap: Snapshot, *, q: float = 0.2, negatives: float = 1.0) -> Targets:
    """Links (top ``q`` of ``|w|`` per layer) and ``negatives`` times as many non-links.

    Args:
        snap: from :func:`hyperlapse.nn.snapshot.prepare_snapshot` (full edge list).
        q: link fraction.
        negatives: number of sampled non-links per link.
    """
    num_layers = int(snap.edge_layer.max()) + 1
    links = top_fraction(snap.edge_weight, snap.edge_layer, num_layers, q)
    pos = links.nonzero().squeeze(1)
    num_neg = int(math.ceil(negatives * pos.numel()))
    neg = non_link_quantiles(snap.edge_weight, snap.edge_layer, num_layers, links, num_neg)
    ids = torch.cat([pos, neg.to(pos.device)])
    w = snap.edge_weight[ids]
    label = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())]).to(w)
    return Targets(
        edge_ids=ids,
        pairs=snap.edge_index[:, ids],
        link=label,
        log_magnitude=w.abs().clamp_min(MIN_MAGNITUDE).log(),
        sign=(w > 0).to(w.dtype),
        node_identity=snap.node_identity,
    )
