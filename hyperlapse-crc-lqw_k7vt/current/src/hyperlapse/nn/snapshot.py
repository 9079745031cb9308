"""The tensors the encoder reads from one parameter-graph snapshot.

The encoder does not depend on how a graph was built: anything with the attributes of
:class:`hyperlapse.graph.parameter_graph.ParameterGraph` (``num_nodes``, ``x``, ``edge_index``,
``edge_weight``, ``edge_layer``, ``node_layer``, ``node_index``, ``node_type``,
``node_identity``, ``num_identities``) works. :func:`prepare_snapshot` adds what message passing
needs: the sparsified edge set (top-k incoming edges per neuron by ``|w|``, a function of the
weights only, so permutation-equivariant) and normalised edge attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..scatter import scatter

__all__ = ["Snapshot", "prepare_snapshot", "EDGE_ATTR_DIM"]

EDGE_ATTR_DIM = 2

_REQUIRED = (
    "num_nodes",
    "x",
    "edge_index",
    "edge_weight",
    "edge_layer",
    "node_layer",
    "node_type",
    "node_identity",
)


@dataclass
class Snapshot:
    """One snapshot, ready for the encoder.

    Shapes:
        x: ``[N, F]``; node_identity, node_layer, node_type: ``[N]`` int64;
        edge_index: ``[2, E]`` (all weights, row 0 source in layer l, row 1 target in l + 1);
        edge_weight, edge_layer: ``[E]``; msg_edge_index: ``[2, E']`` (sparsified, forward
        direction); msg_edge_attr: ``[E', EDGE_ATTR_DIM]``; msg_edge_id: ``[E']`` ids into ``E``.
    """

    num_nodes: int
    x: Tensor
    node_identity: Tensor
    node_layer: Tensor
    node_type: Tensor
    edge_index: Tensor
    edge_weight: Tensor
    edge_layer: Tensor
    msg_edge_index: Tensor
    msg_edge_attr: Tensor
    msg_edge_id: Tensor
    graph: Any = None


def _edge_attr(edge_weight: Tensor, edge_layer: Tensor) -> Tensor:
    """``[w / rms_l, |w| / rms_l]`` with ``rms_l`` the root mean square of ``w`` in layer l."""
    num_layers = int(edge_layer.max()) + 1 if edge_layer.numel() else 0
    sq = scatter(edge_weight.pow(2), edge_layer, num_layers, "mean")
    rms = sq.sqrt().clamp_min(torch.finfo(edge_weight.dtype).tiny)[edge_layer]
    w = edge_weight / rms
    return torch.stack([w, w.abs()], dim=-1)


def prepare_snapshot(
    graph: Any,
    *,
    sparsify_k: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Snapshot:
    """Collect the encoder's inputs from a parameter graph.

    Args:
        graph: a :class:`~hyperlapse.graph.parameter_graph.ParameterGraph` (or a :class:`Snapshot`,
            returned as is when dtype and device already match).
        sparsify_k: keep the ``k`` incoming edges of largest ``|w|`` per neuron for message
            passing (None: keep all). Losses and metrics always use every edge.
        dtype, device: of the floating-point outputs.

    Raises:
        ConfigError: if ``graph`` lacks one of the attributes listed in the module docstring.
    """
    if isinstance(graph, Snapshot):
        if graph.x.dtype == dtype and (device is None or graph.x.device == torch.device(device)):
            return graph
        graph = graph.graph if graph.graph is not None else graph
    missing = [name for name in _REQUIRED if not hasattr(graph, name)]
    if missing:
        raise ConfigError(
            f"Expected a ParameterGraph (or an object with its attributes), got "
            f"{type(graph).__name__} without {missing}. Build one with "
            f"hyperlapse.ParameterGraph.from_state_dict(state, architecture)."
        )
    device = torch.device(device) if device is not None else graph.edge_weight.device
    edge_index = graph.edge_index.to(device=device, dtype=torch.long)
    edge_weight = graph.edge_weight.to(device=device, dtype=dtype)
    edge_layer = graph.edge_layer.to(device=device, dtype=torch.long)
    num_nodes = int(graph.num_nodes)
    if sparsify_k is not None:
        from ..graph.links import top_k_incoming

        keep = top_k_incoming(edge_weight, edge_index[1], num_nodes, int(sparsify_k))
        msg_id = keep.nonzero().squeeze(1)
    else:
        msg_id = torch.arange(edge_weight.numel(), device=device)
    attr = _edge_attr(edge_weight, edge_layer)
    return Snapshot(
        num_nodes=num_nodes,
        x=graph.x.to(device=device, dtype=dtype),
        node_identity=graph.node_identity.to(device=device, dtype=torch.long),
        node_layer=graph.node_layer.to(device=device, dtype=torch.long),
        node_type=graph.node_type.to(device=device, dtype=torch.long),
        edge_index=edge_index,
        edge_weight=edge_weight,
        edge_layer=edge_layer,
        msg_edge_index=edge_index[:, msg_id],
        msg_edge_attr=attr[msg_id],
        msg_edge_id=msg_id,
        graph=graph,
    )
