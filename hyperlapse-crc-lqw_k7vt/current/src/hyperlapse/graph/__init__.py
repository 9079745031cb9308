"""MLP -> parameter graph, temporal parameter graph, links and sparsification.

See ``docs/graph.md``. Public names: :class:`ParameterGraph`, :class:`TemporalParameterGraph`,
:func:`sample_non_links`, :func:`permute_hidden` and the permutation helpers.
"""

from __future__ import annotations

from .parameter_graph import (
    NODE_FEATURE_NAMES,
    NODE_FEATURES,
    NODE_TYPES,
    ParameterGraph,
    edge_permutation,
    invert_permutation,
    mlp_topology,
    node_features,
    node_permutation,
    permute_hidden,
    sample_non_links,
)
from .temporal import TemporalParameterGraph

__all__ = [
    "NODE_FEATURES",
    "NODE_FEATURE_NAMES",
    "NODE_TYPES",
    "ParameterGraph",
    "TemporalParameterGraph",
    "edge_permutation",
    "invert_permutation",
    "mlp_topology",
    "node_features",
    "node_permutation",
    "permute_hidden",
    "sample_non_links",
]
