"""One snapshot of an MLP as a graph whose nodes are neurons and whose edges are weights.

An MLP with widths ``n_0..n_L`` has ``N = sum(n_l)`` nodes (inputs included). Node ids run layer
by layer: the neurons of layer ``l`` are ``layer_offsets[l]:layer_offsets[l + 1]``. Weight
``W_l[j, i]`` (torch ``Linear`` stores ``(out, in)``) is the edge ``j <- i`` from node
``offsets[l] + i`` to node ``offsets[l + 1] + j``; edges run layer by layer and, within a layer,
row-major over ``W_l`` (all inputs of neuron ``j`` before those of ``j + 1``), so edge
``base_l + j * n_l + i`` is ``W_l[j, i]`` and ``edge_weight`` is the concatenation of the
flattened weight matrices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..arch import describe_mlp, unwrap_model
from ..errors import ConfigError
from .links import non_link_quantiles, top_fraction, top_k_incoming
from .permute import edge_permutation, invert_permutation, node_permutation, permute_hidden
from .state import check_architecture, check_state, layer_tensors

__all__ = [
    "ParameterGraph",
    "NODE_FEATURES",
    "NODE_FEATURE_NAMES",
    "NODE_TYPES",
    "mlp_topology",
    "node_features",
    "sample_non_links",
    "permute_hidden",
    "node_permutation",
    "edge_permutation",
    "invert_permutation",
    "check_state",
]

#: Order of the columns of ``ParameterGraph.x``. ``*_abs``/``*_sum`` are the sums of ``|w|`` and
#: of signed ``w`` over a neuron's incoming (``in``) or outgoing (``out``) edges, z-scored within
#: the neuron's layer (0 for a layer where the value is constant, e.g. ``in_*`` of inputs).
NODE_FEATURE_NAMES: tuple[str, ...] = (
    "layer",  # layer index / L, in [0, 1]
    "is_input",
    "is_hidden",
    "is_output",
    "bias",  # raw bias (0 for inputs)
    "in_abs",
    "in_sum",
    "out_abs",
    "out_sum",
)
#: Number of node features F (columns of ``ParameterGraph.x``).
NODE_FEATURES: int = len(NODE_FEATURE_NAMES)
#: Names of the values of ``ParameterGraph.node_type``.
NODE_TYPES: tuple[str, ...] = ("input", "hidden", "output")

# A layer whose std is below this fraction of its largest |value| counts as constant (z = 0),
# so float rounding of the sums does not turn into +-1 features.
_CONSTANT_RTOL = 1e-6


def mlp_topology(widths: list[int], device: torch.device | str | None = None) -> dict[str, Any]:
    """Fixed structure of the parameter graph of an MLP with these widths.

    Returns:
        dict with ``edge_index``, ``edge_layer``, ``node_layer``, ``node_index``, ``node_type``,
        ``node_identity``, ``num_identities``, ``layer_offsets`` (see :class:`ParameterGraph`).

    Example:
        >>> t = mlp_topology([2, 3, 1])
        >>> t["edge_index"][:, :3].tolist(), t["node_identity"].tolist()
        ([[0, 1, 0], [2, 2, 3]], [0, 1, 3, 3, 3, 2])
    """
    widths = [int(n) for n in widths]
    L = len(widths) - 1
    sizes = torch.tensor(widths, dtype=torch.long)
    offsets = torch.zeros(L + 2, dtype=torch.long)
    offsets[1:] = torch.cumsum(sizes, 0)
    node_layer = torch.repeat_interleave(torch.arange(L + 1), sizes)
    node_index = torch.cat([torch.arange(n) for n in widths])
    node_type = torch.ones_like(node_layer)
    node_type[node_layer == 0] = 0
    node_type[node_layer == L] = 2
    n_in, n_out = widths[0], widths[-1]
    # Inputs 0..n_in-1, outputs n_in..n_in+n_out-1, hidden layer l shares n_in+n_out+l-1.
    node_identity = node_layer + (n_in + n_out - 1)
    node_identity[node_type == 0] = torch.arange(n_in)
    node_identity[node_type == 2] = n_in + torch.arange(n_out)
    sources, targets, layers = [], [], []
    for l in range(L):
        j = torch.arange(widths[l + 1]).repeat_interleave(widths[l])
        i = torch.arange(widths[l]).repeat(widths[l + 1])
        sources.append(offsets[l] + i)
        targets.append(offsets[l + 1] + j)
        layers.append(torch.full((j.numel(),), l, dtype=torch.long))
    topo = {
        "edge_index": torch.stack([torch.cat(sources), torch.cat(targets)]),
        "edge_layer": torch.cat(layers),
        "node_layer": node_layer,
        "node_index": node_index,
        "node_type": node_type,
        "node_identity": node_identity,
        "layer_offsets": offsets,
    }
    topo = {k: v.to(device) for k, v in topo.items()}
    topo["num_identities"] = n_in + n_out + max(L - 1, 0)
    return topo


def _zscore(v: Tensor) -> Tensor:
    centred = v - v.mean()
    std = centred.pow(2).mean().sqrt()
    scale = v.abs().max()
    if v.numel() < 2 or std <= _CONSTANT_RTOL * scale or std == 0:
        return torch.zeros_like(v)
    return centred / std


def node_features(weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """Node features in the order of :data:`NODE_FEATURE_NAMES`.

    Shapes:
        weights: ``L`` tensors ``[n_{l+1}, n_l]``, biases: ``L`` tensors ``[n_{l+1}]``;
        returns ``[N, NODE_FEATURES]`` float32.
    """
    L = len(weights)
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    device = weights[0].device
    cols = []
    for l, n in enumerate(widths):
        zero = torch.zeros(n, device=device)
        w_in = weights[l - 1] if l > 0 else None
        w_out = weights[l] if l < L else None
        kind = 0 if l == 0 else (2 if l == L else 1)
        layer_cols = [
            torch.full((n,), l / L, device=device),
            *[torch.full((n,), float(kind == t), device=device) for t in range(3)],
            biases[l - 1] if l > 0 else zero,
            _zscore(w_in.abs().sum(1)) if w_in is not None else zero,
            _zscore(w_in.sum(1)) if w_in is not None else zero,
            _zscore(w_out.abs().sum(0)) if w_out is not None else zero,
            _zscore(w_out.sum(0)) if w_out is not None else zero,
        ]
        cols.append(torch.stack(layer_cols, 1))
    return torch.cat(cols).to(torch.float32)


@dataclass(frozen=True, eq=False)
class ParameterGraph:
    """One snapshot of an MLP as a graph (see the module docstring for the layout).

    Attributes:
        architecture: from :func:`hyperlapse.arch.describe_mlp`.
        widths: ``[n_0, ..., n_L]``.
        num_nodes: ``N = sum(widths)``.
        edge_index: ``[2, E]`` int64, row 0 source (layer ``l``), row 1 target (layer ``l + 1``).
        edge_weight: ``[E]`` float32, ``W_l[j, i]``.
        edge_layer: ``[E]`` int64 weight-layer index ``0..L-1``.
        node_layer: ``[N]`` int64 ``0..L``.
        node_index: ``[N]`` int64 index within the layer.
        node_type: ``[N]`` int64, 0 input, 1 hidden, 2 output (:data:`NODE_TYPES`).
        node_bias: ``[N]`` float32 (0 for inputs).
        node_identity: ``[N]`` int64 embedding-table ids: each input and output neuron has its
            own; all hidden neurons of a layer share their layer's.
        num_identities: ``n_0 + n_L + (L - 1)``.
        layer_offsets: ``[L + 2]`` int64 cumulative widths.
        x: ``[N, NODE_FEATURES]`` float32 node features (:data:`NODE_FEATURE_NAMES`).
        edge_id: ``[E]`` int64 ids of these edges in the full graph after :meth:`sparsify`;
            None for a full graph (edge ``e`` is full edge ``e``).

    Example:
        >>> from torch import nn
        >>> g = ParameterGraph.from_module(nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
        ...                                              nn.Linear(8, 3)))
        >>> g.num_nodes, g.num_edges, tuple(g.x.shape), g.num_identities
        (15, 56, (15, 9), 8)
        >>> int(g.links(0.25).sum()), g.sparsify(2).num_edges
        (14, 22)
    """

    architecture: dict[str, Any]
    widths: list[int]
    num_nodes: int
    edge_index: Tensor
    edge_weight: Tensor
    edge_layer: Tensor
    node_layer: Tensor
    node_index: Tensor
    node_type: Tensor
    node_bias: Tensor
    node_identity: Tensor
    num_identities: int
    layer_offsets: Tensor
    x: Tensor
    edge_id: Tensor | None = None

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Tensor],
        architecture: dict[str, Any],
        *,
        topology: dict[str, Any] | None = None,
    ) -> ParameterGraph:
        """Build the graph of a state dict (parameter name -> tensor).

        Args:
            state: parameters by qualified name, as in ``architecture["layers"]``; extra
                entries (buffers, ...) are ignored.
            architecture: from :func:`hyperlapse.arch.describe_mlp` (or a trajectory's).
            topology: a cached :func:`mlp_topology` for these widths and device (optional).

        Raises:
            ArchitectureError: ``architecture`` is None / not an MLP, or a parameter is missing
                or has the wrong shape (the message names it, with expected and got shapes).
        """
        widths, _ = check_architecture(architecture)
        weights, biases = layer_tensors(state, architecture)
        device = weights[0].device
        if topology is None:
            topology = mlp_topology(widths, device)
        return cls(
            architecture=architecture,
            widths=widths,
            num_nodes=sum(widths),
            edge_index=topology["edge_index"],
            edge_weight=torch.cat([w.reshape(-1) for w in weights]),
            edge_layer=topology["edge_layer"],
            node_layer=topology["node_layer"],
            node_index=topology["node_index"],
            node_type=topology["node_type"],
            node_bias=torch.cat([weights[0].new_zeros(widths[0]), *biases]),
            node_identity=topology["node_identity"],
            num_identities=topology["num_identities"],
            layer_offsets=topology["layer_offsets"],
            x=node_features(weights, biases),
        )

    @classmethod
    def from_module(cls, module: nn.Module) -> ParameterGraph:
        """Build the graph of an MLP module's current parameters.

        Raises:
            ArchitectureError: the module is not a supported MLP (names the first unsupported
                submodule; see :func:`hyperlapse.arch.describe_mlp`).
        """
        architecture = describe_mlp(module)
        state = {k: v.detach() for k, v in unwrap_model(module).named_parameters()}
        return cls.from_state_dict(state, architecture)

    # ----------------------------------------------------------------------------- views
    @property
    def num_edges(self) -> int:
        """Number of edges E."""
        return int(self.edge_weight.numel())

    @property
    def num_layers(self) -> int:
        """Number of weight layers L."""
        return len(self.widths) - 1

    @property
    def full_edge_id(self) -> Tensor:
        """``[E]`` ids of these edges in the full graph (``arange(E)`` for a full graph)."""
        if self.edge_id is not None:
            return self.edge_id
        return torch.arange(self.num_edges, device=self.edge_weight.device)

    def links(self, q: float = 0.2) -> Tensor:
        """``[E]`` bool: the top ``q`` fraction of ``|w|`` within each weight layer.

        ``max(1, round(q * E_l))`` edges per layer, plus any that tie exactly with the smallest
        of them; weights that are exactly 0 are never links (see
        :func:`hyperlapse.graph.links.top_fraction`). On a sparsified graph the fraction is taken
        over the kept edges; use the full graph for link targets.
        """
        return top_fraction(self.edge_weight, self.edge_layer, self.num_layers, q)

    def signs(self) -> Tensor:
        """``[E]`` float32 sign of each weight: -1, 0 or +1."""
        return torch.sign(self.edge_weight)

    def sparsify(self, k: int) -> ParameterGraph:
        """Keep the ``k`` incoming edges of largest ``|w|`` of every neuron.

        Edge order is preserved (layer blocks stay contiguous); ``edge_id`` maps each kept edge
        to its id in the full graph. Node features stay those of the full graph. Ties with a
        neuron's ``k``-th largest ``|w|`` are all kept.

        Shapes:
            returns a graph with ``E' = sum_l n_{l+1} * min(k, n_l)`` edges (without ties).
        """
        if self.edge_id is None and k >= 1:
            # Full layout: the inputs of neuron j of layer l + 1 are row j of W_l.
            keep = torch.cat([_top_k_rows(w, k) for w in self.weights()])
        else:
            keep = top_k_incoming(self.edge_weight, self.edge_index[1], self.num_nodes, k)
        return dataclasses.replace(
            self,
            edge_index=self.edge_index[:, keep],
            edge_weight=self.edge_weight[keep],
            edge_layer=self.edge_layer[keep],
            edge_id=self.full_edge_id[keep],
        )

    def permuted(self, perms: list[Tensor]) -> ParameterGraph:
        """The graph of the network with its hidden neurons permuted by ``perms``.

        Equal to ``from_state_dict(permute_hidden(state, architecture, perms)[0], architecture)``
        (node features up to float rounding of the sums) without a state dict: the topology
        is unchanged, edge weights, biases and features are gathered with
        :func:`edge_permutation` / :func:`node_permutation` (new -> old). Full graphs only.

        Shapes:
            perms: ``L - 1`` tensors ``[n_l]``, new -> old within each hidden layer.
        """
        self.weights()  # raises on a sparsified graph
        device = self.edge_weight.device
        node_perm = node_permutation(self.widths, perms).to(device)
        edge_perm = edge_permutation(self.widths, perms).to(device)
        return dataclasses.replace(
            self,
            edge_weight=self.edge_weight[edge_perm],
            node_bias=self.node_bias[node_perm],
            x=self.x[node_perm],
        )

    def weights(self) -> list[Tensor]:
        """The weight matrices ``W_l`` ``[n_{l+1}, n_l]`` as views of ``edge_weight``.

        Only for a full graph (not after :meth:`sparsify`).
        """
        if self.edge_id is not None:
            raise ConfigError(
                "A sparsified graph has no dense weight matrices; call weights() on the full "
                "graph (scatter edge_weight into edge_id for a dense view)."
            )
        sizes = [self.widths[l] * self.widths[l + 1] for l in range(self.num_layers)]
        blocks = torch.split(self.edge_weight, sizes)
        return [b.view(self.widths[l + 1], self.widths[l]) for l, b in enumerate(blocks)]

    def node_table(self) -> list[dict[str, Any]]:
        """One dict per node: ``{"node", "layer", "index", "type"}`` (type: input/hidden/output).

        Example:
            >>> from torch import nn
            >>> ParameterGraph.from_module(nn.Linear(2, 1)).node_table()[2]
            {'node': 2, 'layer': 1, 'index': 0, 'type': 'output'}
        """
        layer, index = self.node_layer.tolist(), self.node_index.tolist()
        kind = self.node_type.tolist()
        return [
            {"node": n, "layer": layer[n], "index": index[n], "type": NODE_TYPES[kind[n]]}
            for n in range(self.num_nodes)
        ]

    def to(self, device: torch.device | str) -> ParameterGraph:
        """A copy with every tensor moved to ``device``."""
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        sparse = "" if self.edge_id is None else ", sparsified"
        return (
            f"ParameterGraph(widths={self.widths}, num_nodes={self.num_nodes}, "
            f"num_edges={self.num_edges}{sparse})"
        )


def _top_k_rows(w: Tensor, k: int) -> Tensor:
    """Flattened mask of the ``k`` largest ``|w|`` per row, ties at the threshold kept."""
    mag = w.detach().abs()
    if k >= mag.shape[1]:
        return torch.ones(mag.numel(), dtype=torch.bool, device=mag.device)
    threshold = torch.topk(mag, k, dim=1).values[:, -1:]
    return (mag >= threshold).reshape(-1)


def sample_non_links(graph: ParameterGraph, links: Tensor, num: int) -> Tensor:
    """Choose ``num`` non-links deterministically from the weights (no RNG, no node index).

    Non-links are the edges of ``graph`` (consecutive-layer pairs) not marked in ``links``.
    Each layer gets a share proportional to its non-links; within a layer the non-links at evenly
    spaced quantiles of ``|w|`` are taken, so permuting hidden neurons permutes the result the
    same way.

    Shapes:
        links: ``[E]`` bool; returns ``[min(num, #non-links)]`` int64 edge ids of ``graph``
        (map them with ``graph.full_edge_id`` on a sparsified graph).

    Example:
        >>> from torch import nn
        >>> g = ParameterGraph.from_module(nn.Linear(10, 10))
        >>> ids = sample_non_links(g, g.links(0.2), 8)
        >>> ids.shape, bool(g.links(0.2)[ids].any())
        (torch.Size([8]), False)
    """
    if not isinstance(num, int):
        raise ConfigError(f"Expected an int number of non-links, got {type(num).__name__}.")
    return non_link_quantiles(graph.edge_weight, graph.edge_layer, graph.num_layers, links, num)
