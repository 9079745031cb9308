"""Many parameter graphs as one disjoint union, so the encoder runs them in one forward pass.

The layout follows PyG's batching: the graphs' nodes are concatenated (graph ``b`` owns nodes
``ptr[b]:ptr[b + 1]``), every edge index is shifted by its graph's node offset, and
``batch[n]`` / ``edge_batch[e]`` name the graph of a node / edge. No edge crosses two graphs,
so every message-passing scatter (and the per-receiver softmax of attention) stays within one
graph; per-graph reductions (layer summaries, readouts) scatter over ``batch``. Graphs of
different MLP architectures (widths, depths) mix freely: they only need the same node feature
dimension.

``edge_layer`` of a batch is a *global* layer group, ``layer + graph's layer offset``, so the
per-layer normalisations (``rms_l`` of the edge attributes and change features) stay per graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import ArchitectureError
from .snapshot import Snapshot, prepare_snapshot

__all__ = ["GraphBatch", "collate", "READOUT_SLOTS", "readout_slot", "to_dense", "from_dense"]

#: Readout slots of a node: its MLP's input layer, first hidden layer, later hidden layers
#: (pooled), output layer. MLPs of any depth map to these four, and pooling within a slot is
#: invariant to permuting hidden neurons.
READOUT_SLOTS: tuple[str, ...] = ("input", "first_hidden", "later_hidden", "output")


def readout_slot(node_layer: Tensor, node_type: Tensor) -> Tensor:
    """``[N]`` slot of each node (index into :data:`READOUT_SLOTS`)."""
    hidden = torch.where(node_layer == 1, 1, 2)
    return torch.where(node_type == 0, 0, torch.where(node_type == 2, 3, hidden)).long()


@dataclass
class GraphBatch(Snapshot):
    """A disjoint union of snapshots (a :class:`Snapshot` the encoder reads like one graph).

    Attributes (beyond :class:`Snapshot`'s, which hold the concatenation):
        num_graphs: ``B``.
        ptr: ``[B + 1]`` node offsets (graph ``b`` owns nodes ``ptr[b]:ptr[b + 1]``).
        batch: ``[N]`` graph of each node; edge_batch: ``[E]`` graph of each edge.
        slot: ``[N]`` readout slot of each node (:data:`READOUT_SLOTS`).
        sizes: ``B`` node counts (Python ints, for padding to a dense ``[B, N_max, *]``).
    """

    num_graphs: int = 0
    ptr: Tensor | None = None
    batch: Tensor | None = None
    edge_batch: Tensor | None = None
    slot: Tensor | None = None
    sizes: tuple[int, ...] = ()

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> GraphBatch:
        """A copy on ``dtype`` (floating-point tensors) and ``device``."""
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = v.to(device=device, dtype=dtype if v.is_floating_point()
                                       else None)
        return replace(self, **changes)


def collate(
    graphs: Sequence[Any],
    *,
    sparsify_k: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> GraphBatch:
    """Concatenate graphs (ParameterGraphs or prepared :class:`Snapshot`\\ s) into one batch.

    Args:
        graphs: the graphs, in batch order (their order is the order of the outputs).
        sparsify_k, dtype, device: as for :func:`~hyperlapse.nn.snapshot.prepare_snapshot`
            (applied per graph, so the kept edges are those of each graph alone).

    Raises:
        ArchitectureError: no graphs, or graphs whose node features differ in dimension (the
            message names the first mismatching graph and both dimensions).

    Example:
        >>> from torch import nn
        >>> from hyperlapse import ParameterGraph
        >>> a = ParameterGraph.from_module(nn.Sequential(nn.Linear(2, 3), nn.Tanh(),
        ...                                              nn.Linear(3, 1)))
        >>> b = ParameterGraph.from_module(nn.Linear(4, 2))
        >>> batch = collate([a, b])
        >>> batch.num_graphs, batch.ptr.tolist(), batch.num_nodes
        (2, [0, 6, 12], 12)
    """
    if len(graphs) == 0:
        raise ArchitectureError("Expected at least one graph to batch, got none.")
    snaps = [
        prepare_snapshot(g, sparsify_k=sparsify_k, dtype=dtype, device=device) for g in graphs
    ]
    f0 = snaps[0].x.shape[1]
    for i, s in enumerate(snaps):
        if s.x.shape[1] != f0:
            raise ArchitectureError(
                f"Expected every graph in a batch to have node features of one dimension, but "
                f"graph 0 has {f0} and graph {i} has {s.x.shape[1]}. Build every graph with the "
                f"same ParameterGraph version."
            )
    sizes = [s.num_nodes for s in snaps]
    dev = snaps[0].x.device
    ptr = torch.zeros(len(snaps) + 1, dtype=torch.long, device=dev)
    ptr[1:] = torch.cumsum(torch.tensor(sizes, device=dev), 0)
    layer_offsets, edges_offset, msg_offsets = [], 0, []
    lo = 0
    for s in snaps:
        layer_offsets.append(lo)
        lo += int(s.edge_layer.max()) + 1 if s.edge_layer.numel() else 0
        msg_offsets.append(edges_offset)
        edges_offset += s.edge_weight.numel()

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(s, name) for s in snaps])

    def shifted(name: str, offsets: Sequence[int]) -> Tensor:
        return torch.cat([getattr(s, name) + o for s, o in zip(snaps, offsets, strict=True)], -1)

    node_off = ptr[:-1].tolist()
    n_edges = torch.tensor([s.edge_weight.numel() for s in snaps], device=dev)
    node_layer, node_type = cat("node_layer"), cat("node_type")
    return GraphBatch(
        num_nodes=int(ptr[-1]),
        x=cat("x"),
        node_identity=cat("node_identity"),
        node_layer=node_layer,
        node_type=node_type,
        edge_index=shifted("edge_index", node_off),
        edge_weight=cat("edge_weight"),
        edge_layer=shifted("edge_layer", layer_offsets),
        msg_edge_index=shifted("msg_edge_index", node_off),
        msg_edge_attr=cat("msg_edge_attr"),
        msg_edge_id=shifted("msg_edge_id", msg_offsets),
        graph=None,
        num_graphs=len(snaps),
        ptr=ptr,
        batch=torch.repeat_interleave(torch.arange(len(snaps), device=dev), ptr.diff()),
        edge_batch=torch.repeat_interleave(torch.arange(len(snaps), device=dev), n_edges),
        slot=readout_slot(node_layer, node_type),
        sizes=tuple(sizes),
    )


def _dense_index(batch: GraphBatch) -> Tensor:
    return torch.arange(batch.num_nodes, device=batch.ptr.device) - batch.ptr[batch.batch]


def to_dense(x: Tensor, batch: GraphBatch) -> Tensor:
    """``[N, *] -> [B, N_max, *]``, zero-padded (a view when every graph has the same size)."""
    n_max = max(batch.sizes)
    if min(batch.sizes) == n_max:
        return x.view(batch.num_graphs, n_max, *x.shape[1:])
    out = x.new_zeros(batch.num_graphs, n_max, *x.shape[1:])
    out[batch.batch, _dense_index(batch)] = x
    return out


def from_dense(x: Tensor, batch: GraphBatch) -> Tensor:
    """Inverse of :func:`to_dense`: ``[B, N_max, *] -> [N, *]``."""
    if min(batch.sizes) == max(batch.sizes):
        return x.reshape(batch.num_nodes, *x.shape[2:])
    return x[batch.batch, _dense_index(batch)]
