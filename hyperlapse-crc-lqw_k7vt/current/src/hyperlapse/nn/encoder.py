"""The hyperbolic temporal encoder: snapshots of a parameter graph -> node embeddings on the ball.

Per snapshot ``t`` (see ``docs/encoder.md`` for the formulas)::

    h0 = exp0(MLP(x) + E_id[identity])                  input (hidden neurons share E_id per layer)
    h  = HypGraphAttention_l(h; W_t^l) for each layer   kernels W_t^l from KernelEvolution_l
    s  = WindowAttention(S_{t-1}, ..., S_{t-w})         order-free attention over the window
    S_t = GRUCell(log0 h, s),  z_t = exp0(gamma S_t)

The stateful single-step API (:meth:`TemporalEncoder.init_state`, :meth:`TemporalEncoder.step`)
keeps only the last ``w`` states and one GRU state per layer, so the cost per snapshot does not
grow with ``t``. :meth:`TemporalEncoder.embed` runs it over a whole run; the Riemannian
refinement of the coordinates lives with training (:mod:`hyperlapse.train.embed`), so this
package never imports :mod:`hyperlapse.train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..geometry.ball import KINDS, dist0, expmap0, logmap0, make_manifold
from ..progress import progress_bar
from ..scatter import scatter
from .batch import GraphBatch
from .fermi_dirac import FermiDiracDecoder
from .hyp_attention import AGGREGATIONS, HypGraphAttention
from .kernel_evolution import KernelEvolution, layer_summary
from .signed_weight import SignedWeightHead
from .snapshot import Snapshot, prepare_snapshot
from .window_attention import TangentGRU, WindowAttention, stack_window

__all__ = [
    "EncoderConfig",
    "EncoderState",
    "Embeddings",
    "TemporalEncoder",
    "as_graph_sequence",
    "change_features",
    "VELOCITY_FEATURES",
]

_FORMAT_VERSION = 2
#: Columns of :func:`change_features`.
VELOCITY_FEATURES = 3


@dataclass
class EncoderConfig:
    """Hyper-parameters of :class:`TemporalEncoder` (everything needed to rebuild it).

    Attributes:
        in_features: node feature dimension F (``ParameterGraph.x.shape[1]``).
        num_identities: size of the identity table; at least the graphs' ``num_identities``.
        d: embedding dimension.
        heads: attention heads per layer.
        layers: attention layers.
        window: number of past snapshots the window attention sees (``w``).
        c: curvature magnitude of the ball (ignored for ``manifold="euclidean"``).
        manifold: ``"poincare"`` or ``"euclidean"`` (same model, flat space).
        learnable_c: learn the curvature.
        sparsify_k: incoming edges kept per neuron for message passing (None: all).
        aggregation: ``"midpoint"`` (gyromidpoint) or ``"tangent"``.
        hidden: width of the input MLP and of the kernel generators.
        kernel_state: GRU state size of the kernel evolution.
        link_q: fraction of ``|w|`` per layer that counts as a link.
        velocity: append per-node change features to the node features
            (:func:`change_features`: mean signed and absolute change of the incident weights
            since the previous snapshot, per optimizer step, and the log time gap).

    ``manifold="euclidean"`` is the same model in flat space, like for like: the flat metric is
    the ball's at the origin (``4 |dx|^2``, see :mod:`hyperlapse.geometry.ball`), so with the same
    seed both geometries build identical parameters, and every distance the model reads
    (attention scores, the Fermi-Dirac ``R`` and ``T``, the smoothness term, the sign logit)
    agrees to first order near the origin: only the curvature differs.
    """

    in_features: int
    num_identities: int
    d: int = 8
    heads: int = 2
    layers: int = 2
    window: int = 4
    c: float = 1.0
    manifold: str = "poincare"
    learnable_c: bool = False
    sparsify_k: int | None = 32
    aggregation: str = "midpoint"
    hidden: int = 32
    kernel_state: int = 16
    link_q: float = 0.2
    velocity: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.in_features >= 1, "in_features >= 1"),
            (self.num_identities >= 1, "num_identities >= 1"),
            (self.d >= 1, "d >= 1"),
            (self.heads >= 1, "heads >= 1"),
            (self.layers >= 0, "layers >= 0"),
            (self.window >= 0, "window >= 0"),
            (self.c > 0, "c > 0"),
            (self.manifold in KINDS, f"manifold in {KINDS}"),
            (self.sparsify_k is None or self.sparsify_k >= 1, "sparsify_k None or >= 1"),
            (self.aggregation in AGGREGATIONS, f"aggregation in {AGGREGATIONS}"),
            (0.0 < self.link_q < 1.0, "0 < link_q < 1"),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"Invalid encoder config: expected {what}, got {self}.")


@dataclass
class EncoderState:
    """The recurrent state of the encoder between snapshots.

    Attributes:
        t: number of snapshots seen.
        summaries: per attention layer, ``p_{t-1}`` ``[d]`` (node-mean of log0 of its input).
        kernel_states: per attention layer, the kernel GRU state ``u_{t-1}`` ``[kernel_state]``.
        history: the tangent states ``S`` of the last ``<= w`` snapshots, oldest first,
            each ``[N, d]``.
        z: the last embedding ``[N, d]`` (None before the first snapshot).
        attention: per layer, the attention weights ``[2E', heads]`` of the last step when
            asked for (forward edges first, then reversed).
        edge_weight: the last snapshot's full edge weights ``[E]`` (for the change features).
    """

    t: int = 0
    summaries: list[Tensor] = field(default_factory=list)
    kernel_states: list[Tensor] = field(default_factory=list)
    history: list[Tensor] = field(default_factory=list)
    z: Tensor | None = None
    attention: list[Tensor] | None = None
    edge_weight: Tensor | None = None

    def detach(self) -> EncoderState:
        """A copy cut from the autograd graph (truncated back-propagation through time)."""
        return EncoderState(
            t=self.t,
            summaries=[s.detach() for s in self.summaries],
            kernel_states=[u.detach() for u in self.kernel_states],
            history=[h.detach() for h in self.history],
            z=None if self.z is None else self.z.detach(),
            attention=None if self.attention is None else [a.detach() for a in self.attention],
            edge_weight=None if self.edge_weight is None else self.edge_weight.detach(),
        )


@dataclass
class Embeddings:
    """Node embeddings of a run.

    Attributes:
        z: ``[T, N, d]`` points on the manifold (refined when refinement ran).
        steps: ``[T]`` optimizer steps of the snapshots.
        node_layer, node_index, node_type: ``[N]`` int64 node table (type 0 input, 1 hidden,
            2 output).
        manifold: ``"poincare"`` or ``"euclidean"``; c: curvature magnitude.
        z_encoder: ``[T, N, d]`` the encoder's output before refinement (None if not refined).
        attention: per snapshot, per layer ``[2E', heads]`` attention weights (if asked for).
        losses: per snapshot, the refinement loss terms after refinement (if refined).
    """

    z: Tensor
    steps: np.ndarray
    node_layer: Tensor
    node_index: Tensor
    node_type: Tensor
    manifold: str
    c: float
    z_encoder: Tensor | None = None
    attention: list[list[Tensor]] | None = None
    losses: list[dict[str, float]] | None = None

    def radius(self) -> Tensor:
        """``[T, N]`` distance of every node to the origin (smaller: more central)."""
        return dist0(self.z, manifold=make_manifold(self.manifold, self.c))

    def layer_stats(self) -> dict[str, Tensor]:
        """Per MLP layer and snapshot: mean and standard deviation of the radius, ``[T, L+1]``."""
        r = self.radius()
        layers = int(self.node_layer.max()) + 1
        mean = torch.stack([r[:, self.node_layer == l].mean(1) for l in range(layers)], 1)
        std = torch.stack(
            [r[:, self.node_layer == l].std(1, unbiased=False) for l in range(layers)], 1
        )
        return {"radius_mean": mean, "radius_std": std}


def as_graph_sequence(data: Any) -> tuple[Sequence[Any], np.ndarray]:
    """``(graphs, steps)`` from a TemporalParameterGraph, a Trajectory or a list of graphs."""
    from ..graph.temporal import TemporalParameterGraph

    if isinstance(data, TemporalParameterGraph):
        return data, np.asarray(data.steps)
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise ConfigError("Expected at least one snapshot, got an empty sequence.")
        return data, np.arange(len(data), dtype=np.int64)
    if hasattr(data, "architecture") and hasattr(data, "__getitem__"):
        tg = TemporalParameterGraph.from_trajectory(data)
        return tg, np.asarray(tg.steps)
    raise ConfigError(
        f"Expected a Trajectory, a TemporalParameterGraph or a list of ParameterGraphs, got "
        f"{type(data).__name__}."
    )


class TemporalEncoder(nn.Module):
    """Hyperbolic temporal graph encoder of MLP training runs.

    Args:
        config: an :class:`EncoderConfig`, or None to build one from ``overrides``.
        **overrides: fields of :class:`EncoderConfig` (replace those of ``config``).

    Example:
        >>> from torch import nn
        >>> from hyperlapse import ParameterGraph
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        >>> g = ParameterGraph.from_module(net)
        >>> enc = TemporalEncoder(in_features=g.x.shape[1], num_identities=g.num_identities, d=4)
        >>> state = enc.init_state()
        >>> z, state = enc.step(g, state)
        >>> tuple(z.shape), bool(z.norm(dim=-1).max() < 1)
        ((10, 4), True)
    """

    def __init__(self, config: EncoderConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = EncoderConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = cfg = config
        self.manifold = make_manifold(cfg.manifold, cfg.c, learnable=cfg.learnable_c)
        m = self.manifold
        extra = VELOCITY_FEATURES if cfg.velocity else 0
        self.feature_mlp = nn.Sequential(
            nn.Linear(cfg.in_features + extra, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.d)
        )
        self.identity = nn.Embedding(cfg.num_identities, cfg.d)
        nn.init.normal_(self.identity.weight, std=0.1)
        self.attention = nn.ModuleList(
            HypGraphAttention(cfg.d, cfg.heads, manifold=m, aggregation=cfg.aggregation)
            for _ in range(cfg.layers)
        )
        self.evolution = nn.ModuleList(
            KernelEvolution(
                cfg.d, layer.kernel_numel(), state_dim=cfg.kernel_state, hidden=cfg.hidden
            )
            for layer in self.attention
        )
        self.window = WindowAttention(cfg.d)
        self.cell = TangentGRU(cfg.d, manifold=m)
        self.link_head = FermiDiracDecoder(manifold=m)
        self.weight_head = SignedWeightHead(cfg.d, cfg.num_identities, manifold=m)

    # ----------------------------------------------------------------------------- inputs
    @property
    def dtype(self) -> torch.dtype:
        return self.identity.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.identity.weight.device

    def prepare(self, graph: Any) -> Snapshot:
        """The encoder's view of a graph (sparsified, on the encoder's dtype and device)."""
        snap = prepare_snapshot(
            graph, sparsify_k=self.config.sparsify_k, dtype=self.dtype, device=self.device
        )
        if int(snap.node_identity.max()) >= self.config.num_identities:
            raise ConfigError(
                f"The graph needs {int(snap.node_identity.max()) + 1} identities but the encoder "
                f"was built with num_identities={self.config.num_identities}. Build the encoder "
                f"with num_identities >= graph.num_identities (fit_encoder does this)."
            )
        if snap.x.shape[1] != self.config.in_features:
            raise ConfigError(
                f"Expected node features of dimension {self.config.in_features}, got "
                f"{snap.x.shape[1]}."
            )
        return snap

    # ----------------------------------------------------------------------------- step API
    def init_state(self) -> EncoderState:
        """The state before the first snapshot (zero summaries and kernel GRU states)."""
        dt, dev = self.dtype, self.device
        return EncoderState(
            t=0,
            summaries=[torch.zeros(self.config.d, dtype=dt, device=dev) for _ in self.attention],
            kernel_states=[ev.init_state(dtype=dt, device=dev) for ev in self.evolution],
        )

    def input_embedding(self, snap: Snapshot, change: Tensor | None = None) -> Tensor:
        """``h0 = exp0(MLP([x, change]) + E_id[identity])``.

        Shapes:
            change: ``[N, VELOCITY_FEATURES]`` (zeros when None and velocity is on);
            returns ``[N, d]``.
        """
        x = snap.x
        if self.config.velocity:
            if change is None:
                change = x.new_zeros(x.shape[0], VELOCITY_FEATURES)
            x = torch.cat([x, change.to(x)], dim=-1)
        u = self.feature_mlp(x) + self.identity(snap.node_identity)
        return expmap0(u, manifold=self.manifold)

    def step(
        self,
        graph: Any,
        state: EncoderState,
        *,
        detach: bool = False,
        return_attention: bool = False,
        gap: float | None = None,
    ) -> tuple[Tensor, EncoderState]:
        """Encode one snapshot given the state after the previous ones.

        Args:
            graph: a ParameterGraph (or a :class:`Snapshot` from :meth:`prepare`).
            state: from :meth:`init_state` or the previous ``step``; not modified.
            gap: optimizer steps since the previous snapshot (None: 1).
            detach: cut the returned state from the autograd graph (bounded memory and cost).
            return_attention: keep the attention weights in ``new_state.attention``.

        Returns:
            ``(z_t [N, d], new_state)``.
        """
        snap = self.prepare(graph)
        change = None
        if self.config.velocity:
            change = change_features(snap, state.edge_weight, 1.0 if gap is None else gap)
        return self._advance(snap, state, change, None, return_attention, detach)

    def _advance(
        self,
        snap: Snapshot,
        state: EncoderState,
        change: Tensor | None,
        batch: GraphBatch | None,
        return_attention: bool,
        detach: bool,
    ) -> tuple[Tensor, EncoderState]:
        """The body shared by :meth:`step` and :meth:`step_batch`: attention layers with evolved
        kernels, window attention, the GRU cell and the new state. With ``batch``, the layer
        summaries (and so the kernels) are per graph."""
        m = self.manifold
        h = self.input_embedding(snap, change)
        summaries, kernel_states, attention = [], [], []
        for l, (layer, evolve) in enumerate(zip(self.attention, self.evolution, strict=True)):
            delta, u = evolve(state.summaries[l], state.kernel_states[l])
            if batch is None:
                summaries.append(layer_summary(h, manifold=m))
            else:
                summaries.append(
                    scatter(logmap0(h, manifold=m), batch.batch, batch.num_graphs, "mean")
                )
            kernel_states.append(u)
            h, alpha = layer(h, snap.msg_edge_index, snap.msg_edge_attr, delta, batch=batch)
            attention.append(alpha)
        window = stack_window(state.history[-self.config.window :], like=h)
        if self.config.window == 0:
            window = window[:0]
        s, _ = self.window(window)
        z, hidden = self.cell(h, s)
        history = (state.history + [hidden])[-self.config.window :] if self.config.window else []
        new = EncoderState(
            t=state.t + 1,
            summaries=summaries,
            kernel_states=kernel_states,
            history=history,
            z=z,
            attention=attention if return_attention else None,
            edge_weight=snap.edge_weight if self.config.velocity else None,
        )
        return z, (new.detach() if detach else new)

    def forward(
        self,
        graphs: Sequence[Any],
        state: EncoderState | None = None,
        steps: Sequence[int] | None = None,
    ) -> tuple[list[Tensor], EncoderState]:
        """Encode a sequence of snapshots, keeping the autograd graph through time.

        Args:
            steps: optimizer steps of the snapshots (time gaps for the change features;
                None: one step apart).

        Returns:
            ``([z_0, ..., z_{T-1}], final_state)``, each ``z_t`` ``[N, d]``.
        """
        state = self.init_state() if state is None else state
        zs = []
        for t, graph in enumerate(graphs):
            gap = None if steps is None or t == 0 else float(steps[t] - steps[t - 1])
            z, state = self.step(graph, state, gap=gap)
            zs.append(z)
        return zs, state

    # ----------------------------------------------------------------------------- batches
    def init_batch_state(self, num_graphs: int) -> EncoderState:
        """The state of a batch of ``num_graphs`` runs before their first snapshots.

        ``summaries`` and ``kernel_states`` then hold one row per graph (``[B, d]``,
        ``[B, kernel_state]``): every run's kernels evolve with its own snapshots.
        """
        dt, dev = self.dtype, self.device
        return EncoderState(
            t=0,
            summaries=[
                torch.zeros(num_graphs, self.config.d, dtype=dt, device=dev)
                for _ in self.attention
            ],
            kernel_states=[
                torch.zeros(num_graphs, ev.state_dim, dtype=dt, device=dev)
                for ev in self.evolution
            ],
        )

    def step_batch(
        self,
        batch: GraphBatch,
        state: EncoderState,
        *,
        gaps: Tensor | None = None,
        detach: bool = False,
    ) -> tuple[Tensor, EncoderState]:
        """Encode one snapshot of each of ``B`` runs, batched as a disjoint union.

        The same computation as :meth:`step` on each graph alone (up to float rounding): message
        passing and the attention softmax never cross graphs, and the layer summaries and kernel
        evolution are per graph. The runs of consecutive calls must come in the same order.

        Args:
            batch: from :func:`hyperlapse.nn.batch.collate` (graphs of any MLP architectures).
            state: from :meth:`init_batch_state` or the previous ``step_batch``.
            gaps: ``[B]`` optimizer steps since each run's previous snapshot (None: 1).
            detach: cut the returned state from the autograd graph.

        Returns:
            ``(z [N, d], new_state)`` with the nodes in the batch's order.
        """
        if not isinstance(batch, GraphBatch):
            raise ConfigError(
                f"Expected a GraphBatch (hyperlapse.nn.batch.collate), got "
                f"{type(batch).__name__}. Use step() for a single graph."
            )
        if batch.x.dtype != self.dtype or batch.x.device != self.device:
            batch = batch.to(self.dtype, self.device)
        snap = self.prepare(batch)
        rows = state.summaries[0].shape[0] if state.summaries else batch.num_graphs
        if rows != batch.num_graphs:
            raise ConfigError(
                f"Expected a state of {batch.num_graphs} runs (init_batch_state), but it holds "
                f"{rows}."
            )
        change = None
        if self.config.velocity:
            change = change_features(
                snap, state.edge_weight, 1.0 if gaps is None else gaps.to(snap.x)
            )
        return self._advance(snap, state, change, batch, False, detach)

    # ----------------------------------------------------------------------------- embed
    def embed(
        self,
        data: Any,
        *,
        return_attention: bool = False,
        progress: bool = False,
    ) -> Embeddings:
        """Embed every snapshot of a run with the encoder alone (no gradients, deterministic).

        Refined coordinates (Riemannian Adam on each snapshot's links and signs) come from
        :func:`hyperlapse.train.embed.embed_refined`, which builds on this.

        Args:
            data: a Trajectory, a TemporalParameterGraph or a list of ParameterGraphs.
            return_attention: keep per-layer attention weights of every snapshot.
            progress: show a progress bar on stderr (:mod:`hyperlapse.progress`; silent off a
                terminal).

        Returns:
            :class:`Embeddings` with ``z`` of shape ``[T, N, d]``.
        """
        graphs, steps = as_graph_sequence(data)
        state = self.init_state()
        zs, attn = [], []
        first = None
        for t in progress_bar(range(len(graphs)), progress, "embed"):
            snap = self.prepare(graphs[t])
            first = first or snap
            gap = float(steps[t] - steps[t - 1]) if t > 0 else None
            with torch.no_grad():
                z, state = self.step(snap, state, return_attention=return_attention, gap=gap)
            if return_attention:
                attn.append(state.attention)
                state.attention = None
            zs.append(z.detach())
        return Embeddings(
            z=torch.stack(zs),
            steps=np.asarray(steps),
            node_layer=first.node_layer.cpu(),
            node_index=first.graph.node_index.cpu()
            if first.graph is not None
            else torch.zeros_like(first.node_layer.cpu()),
            node_type=first.node_type.cpu(),
            manifold=self.config.manifold,
            c=float(self.manifold.c.detach()) if self.config.manifold == "poincare" else 0.0,
            attention=attn if return_attention else None,
        )

    # ----------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Save the configuration and the weights (a ``torch.save`` file)."""
        torch.save(
            {
                "format": "hyperlapse.TemporalEncoder",
                "version": _FORMAT_VERSION,
                "config": dataclasses.asdict(self.config),
                "state_dict": self.state_dict(),
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | Path, map_location: str | torch.device | None = "cpu"
    ) -> TemporalEncoder:
        """Load an encoder written by :meth:`save`.

        Raises:
            ConfigError: the file is not a saved TemporalEncoder.
        """
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "hyperlapse.TemporalEncoder":
            raise ConfigError(
                f"Expected a file written by TemporalEncoder.save, got {path!s} without the "
                f"'hyperlapse.TemporalEncoder' format tag."
            )
        config = dict(blob["config"])
        config.setdefault("velocity", False)  # files of version 1 predate the change features
        encoder = cls(EncoderConfig(**config))
        sd = blob["state_dict"]
        encoder.to(sd["identity.weight"].dtype)
        encoder.load_state_dict(sd)
        return encoder


def change_features(
    snap: Snapshot, previous: Tensor | None, gap: float | Tensor = 1.0
) -> Tensor:
    """Per node: what changed in its incident weights since the previous snapshot.

    With ``dw = (w_t - w_{t-1}) / rms_l(w_t)`` per edge (``rms_l`` over the edge's layer), a
    node's features are the mean of ``dw / gap`` and of ``|dw| / gap`` over its incident edges
    (incoming and outgoing) and ``log(gap)``, the optimizer steps between the snapshots. Zeros
    at the first snapshot. Sums over incident edges: equivariant to hidden-neuron permutations.
    On a :class:`~hyperlapse.nn.batch.GraphBatch`, ``gap`` may be a ``[B]`` tensor (one gap per
    run; its layer groups keep ``rms_l`` per graph).

    Shapes:
        previous: ``[E]`` or None; returns ``[N, VELOCITY_FEATURES]``.
    """
    w = snap.edge_weight
    n = snap.num_nodes
    if previous is None:
        return w.new_zeros(n, VELOCITY_FEATURES)
    per_graph = isinstance(gap, Tensor)
    if not (bool((gap > 0).all()) if per_graph else gap > 0):
        raise ConfigError(f"Expected a positive gap between snapshots, got {gap!r}.")
    layers = int(snap.edge_layer.max()) + 1
    rms = scatter(w.pow(2), snap.edge_layer, layers, "mean").sqrt()
    rms = rms.clamp_min(torch.finfo(w.dtype).tiny)[snap.edge_layer]
    if per_graph:
        if not isinstance(snap, GraphBatch):
            raise ConfigError("Expected a GraphBatch for per-graph gaps, got one graph.")
        dw = (w - previous.to(w)) / rms / gap[snap.edge_batch]
        logg = gap.log()[snap.batch]
    else:
        dw = (w - previous.to(w)) / rms / gap
        logg = w.new_full((n,), float(np.log(gap)))
    ends = torch.cat([snap.edge_index[0], snap.edge_index[1]])
    both = torch.cat([dw, dw])
    signed = scatter(both, ends, n, "mean")
    absolute = scatter(both.abs(), ends, n, "mean")
    return torch.stack([signed, absolute, logg], dim=-1)
