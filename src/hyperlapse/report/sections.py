"""A snapshot's report as named sections, each a function over one :class:`SnapshotContext`.

The analyzer (:class:`hyperlapse.online.OnlineEncoder`) fills the context with what it computed
for snapshot ``t`` (graph, embedding, radius, drift, forecast scores) and what it remembers of
``t - 1``; :func:`build_report` then calls every section of :data:`SECTIONS` in order and puts
each result under its name (the field of the report, see ``docs/reports.md``). A new section is
one function here and one entry in :data:`SECTIONS`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .metrics import hub_neurons, layer_stats, weight_stats
from .schema import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, Report, jsonable

__all__ = ["SnapshotContext", "SECTIONS", "build_report", "drift_above_noise"]


@dataclass
class SnapshotContext:
    """Everything the sections of snapshot ``t``'s report read.

    Attributes:
        index, step, metrics: the snapshot (metrics: logged scalars, no NaN).
        state, architecture, widths: its parameters and the MLP they belong to.
        graph: its :class:`~hyperlapse.graph.parameter_graph.ParameterGraph`; ``links`` ``[E]``
            bool its links.
        node_layer, node_type, node_index: ``[N]`` the node table.
        radius, drift: ``[N]`` hyperbolic radius of ``z_t`` and ``d(z_t, z_{t-1})`` (None at 0).
        gap: optimizer steps since the previous snapshot (None at 0).
        noise: ``[L + 1]`` per node layer, the drift of an unchanged snapshot (None: unknown).
        scores: the forecast scores (computed by the analyzer, which holds the decoder).
        previous: what the analyzer remembers of ``t - 1`` (``weight``, ``links``, ``hubs``,
            ``importance``); sections put what ``t + 1`` needs into ``remember``.
        num_hubs: hidden neurons of smallest radius to report.
        probes, probe_kind, data_probes, geometry_k: the input-space geometry's probes.
        geometry_due: whether the geometry and the importances are computed at this snapshot.
        activations_known: False when an activation of the MLP could not be determined: the
            sections that need the map (geometry, ablations) are then skipped.
        encoder: the ``encoder`` field (mode, manifold, refinement and training losses).
    """

    index: int
    step: int
    metrics: Mapping[str, float]
    state: Mapping[str, Tensor]
    architecture: Mapping[str, Any]
    widths: list[int]
    graph: Any
    links: Tensor
    node_layer: Tensor
    node_type: Tensor
    node_index: Tensor
    radius: Tensor
    drift: Tensor | None
    gap: int | None
    noise: Tensor | None
    scores: dict[str, Any]
    previous: dict[str, Any]
    num_hubs: int
    probes: Tensor | None
    probe_kind: str
    data_probes: Tensor | None
    geometry_k: int | None
    geometry_due: bool
    activations_known: bool
    encoder: dict[str, Any]
    remember: dict[str, Any] = field(default_factory=dict)


def drift_above_noise(drift: float | None, noise: float | None) -> float | None:
    """The part of a drift that the noise floor does not explain, ``sqrt(max(d^2 - n^2, 0))``
    (jitter of the embedding and real motion add like independent displacements).

    Example:
        >>> drift_above_noise(0.5, 0.3), drift_above_noise(0.2, 0.3), drift_above_noise(0.2, None)
        (0.4, 0.0, None)
    """
    if drift is None or noise is None:
        return None
    return math.sqrt(max(drift * drift - noise * noise, 0.0))


def layers_section(ctx: SnapshotContext) -> list[dict[str, Any]]:
    """Per node layer: radius, drift, drift per optimizer step and the drift's noise floor."""
    layers = layer_stats(ctx.radius, ctx.node_layer, ctx.widths, ctx.drift)
    for l, entry in enumerate(layers):
        drift = entry["drift_mean"]
        noise = None if ctx.noise is None else float(ctx.noise[l])
        entry["drift_per_step"] = None if drift is None else drift / ctx.gap
        entry["drift_noise"] = noise
        # the motion above the jitter, per step (jitter does not grow with the interval)
        above = drift_above_noise(drift, noise)
        entry["drift_above_noise"] = above
        entry["drift_rate"] = None if above is None else above / ctx.gap
    return layers


def weights_section(ctx: SnapshotContext) -> list[dict[str, Any]]:
    """Per weight layer: norms, link turnover and sign flips since ``t - 1``."""
    g = ctx.graph
    return weight_stats(
        g.edge_weight, g.edge_layer, g.num_layers, ctx.previous.get("weight"), ctx.links,
        ctx.previous.get("links"),
    )


def scores_section(ctx: SnapshotContext) -> dict[str, Any]:
    """Forecasts of ``t`` from ``t - 1`` beside their baselines (computed by the analyzer)."""
    return ctx.scores


def hubs_section(ctx: SnapshotContext) -> dict[str, Any]:
    """The central hidden neurons (smallest radius) and how many changed."""
    hubs = hub_neurons(
        ctx.radius, ctx.node_type, ctx.node_layer, ctx.node_index, ctx.num_hubs,
        ctx.previous.get("hubs"),
    )
    ctx.remember["hubs"] = hubs["nodes"]
    return hubs


def geometry_section(ctx: SnapshotContext) -> dict[str, Any] | None:
    """Input-space geometry of every hidden layer on the probes (and on data probes)."""
    if not (ctx.geometry_due and ctx.activations_known and ctx.probes is not None):
        return None
    from ..geometry.pullback import input_geometry

    state = dict(ctx.state)
    geometry = input_geometry(state, ctx.architecture, ctx.probes, k=ctx.geometry_k)
    geometry["probes"] = ctx.probe_kind
    if ctx.data_probes is not None:
        geometry["data"] = input_geometry(state, ctx.architecture, ctx.data_probes,
                                          k=ctx.geometry_k)
    return geometry


def neurons_section(ctx: SnapshotContext) -> dict[str, Any] | None:
    """Ablation importance of the hidden neurons and how their radius relates to it."""
    probes = ctx.data_probes if ctx.data_probes is not None else ctx.probes
    if not (ctx.num_hubs and ctx.geometry_due and ctx.activations_known and probes is not None):
        return None
    from .neurons import neuron_ground_truth, top_turnover

    hidden = ctx.node_type == 1
    neurons = neuron_ground_truth(dict(ctx.state), ctx.architecture, probes, ctx.radius[hidden])
    imp = torch.tensor(neurons["importance"], dtype=torch.float64)
    neurons["importance_turnover"] = top_turnover(ctx.previous.get("importance"), imp,
                                                  ctx.num_hubs)
    neurons["probes"] = "data" if ctx.data_probes is not None else ctx.probe_kind
    ctx.remember["importance"] = imp
    return neurons


#: The report's sections, in the order they are computed: field name -> function.
SECTIONS: dict[str, Callable[[SnapshotContext], Any]] = {
    "layers": layers_section,
    "weights": weights_section,
    "scores": scores_section,
    "hubs": hubs_section,
    "geometry": geometry_section,
    "neurons": neurons_section,
}


def build_report(ctx: SnapshotContext, timing: dict[str, float]) -> Report:
    """Call every section on ``ctx`` (timing each under its name) and assemble the report."""
    report: Report = {
        "schema": REPORT_SCHEMA,
        "version": REPORT_SCHEMA_VERSION,
        "index": ctx.index,
        "step": ctx.step,
        "metrics": dict(ctx.metrics),
    }
    for name, section in SECTIONS.items():
        tick = time.perf_counter()
        report[name] = section(ctx)
        timing[name] = time.perf_counter() - tick
    report["activations_known"] = ctx.activations_known
    report["encoder"] = ctx.encoder
    report["timing"] = timing
    return jsonable(report)
