"""The online encoder: snapshots in, one structure report per snapshot out, in bounded time.

For each snapshot ``t`` (:meth:`OnlineEncoder.update`):

1. score the forecasts for ``t`` made from the state at ``t - 1`` (before seeing ``t``), with the
   one definition of :mod:`hyperlapse.train.forecast` (the benchmark's): links, new links and
   sign flips of ``t``, every candidate edge scored, AUC and AP. The model is the change-aware
   decoder (:class:`~hyperlapse.nn.change_decoder.ChangeDecoder`: the per-layer-normalised
   extrapolation plus a learned correction from ``z_{t-1}``); beside it, on the same candidates,
   the baselines (persistence, extrapolation, EdgeBank, a logistic regression on recent deltas
   refitted on the 3 latest observed outcomes) and the base rates;
2. advance the encoder's recurrent kernels and encode ``t``;
3. refine ``z_t`` with a few Riemannian Adam steps on ``t``'s links, signs and magnitudes,
   anchored to ``z_{t-1}`` (:func:`hyperlapse.train.refine.refine_snapshot`);
4. optionally one Adam step on the encoder's weights (history detached: truncated BPTT of one);
5. build the report (:mod:`hyperlapse.report.schema`).

Everything the encoder keeps between snapshots is bounded: the encoder state (a window of ``w``
tangent states, one GRU state per layer), the previous embedding, weights, links and hubs.
No tensor keeps an autograd graph across snapshots, so the cost per snapshot is
``O((refine_steps + 2) * E)`` whatever ``t``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..arch import activations_known
from ..errors import ConfigError
from ..geometry.ball import dist, dist0
from ..graph.parameter_graph import NODE_FEATURES, ParameterGraph, mlp_topology
from ..graph.state import check_architecture
from ..nn.change_decoder import ChangeDecoder
from ..nn.encoder import EncoderConfig, TemporalEncoder
from ..report.metrics import auc_ap
from ..report.schema import Report
from ..report.sections import SnapshotContext, build_report
from ..train.forecast import EDGE_FEATURES, TARGETS, ForecastWindow, forecast_metrics
from ..train.losses import LossWeights, loss_terms
from ..train.refine import refine_snapshot
from ..train.targets import snapshot_targets

__all__ = ["OnlineEncoder", "default_probes"]


def default_probes(in_features: int, *, num: int = 256, seed: int = 0) -> Tensor:
    """Probe inputs when the user gives none: a 32x32 grid over ``[-3, 3]^2`` for 2-D inputs,
    otherwise ``num`` standard-normal points (inputs are assumed roughly standardised).

    Shapes:
        returns ``[B, in_features]`` float64.
    """
    from ..geometry.pullback import grid_probes

    if in_features == 2:
        return grid_probes((-3.0, -3.0), (3.0, 3.0), 32)[0]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, in_features, generator=g, dtype=torch.float64)


def _float_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


class _Clock:
    """Seconds spent in each named step of one update."""

    def __init__(self) -> None:
        self.timing: dict[str, float] = {}
        self.start = self.tick = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timing[name] = now - self.tick
        self.tick = now

    def total(self) -> float:
        return time.perf_counter() - self.start


class OnlineEncoder:
    """Encode a training run snapshot by snapshot and report on its structure.

    Args:
        architecture: :func:`hyperlapse.describe_mlp` of the recorded model (a trajectory's
            ``architecture``).
        encoder: None (a fresh :class:`~hyperlapse.nn.encoder.TemporalEncoder`, trained on the run
            itself: self-supervised), a TemporalEncoder (copied, not modified), or the path of one
            saved by ``TemporalEncoder.save`` / ``fit_encoder``.
        seed: seeds the fresh encoder's initialisation (the global RNG is restored afterwards).
        d, window, sparsify_k, link_q: of a fresh encoder (see
            :class:`~hyperlapse.nn.encoder.EncoderConfig`); a given encoder keeps its own.
        refine_steps, refine_lr: Riemannian Adam refinement of each snapshot's coordinates.
        train_encoder: one Adam step on the encoder per snapshot (default: True for a fresh
            encoder, False for a given one).
        lr: learning rate of that step.
        num_hubs: how many hidden neurons of smallest radius to report.
        probes: probe inputs ``[B, n_0]`` for the input-space geometry (default:
            :func:`default_probes`); ``geometry_every=0`` turns the geometry off.
        geometry_every: compute the geometry every this many snapshots (and at the first).
        noise_every: re-measure the drift noise floor (``layers[].drift_noise``: the drift
            when the weights do not change) every this many snapshots, and at the second;
            ``0`` turns it off. Each measurement costs one more encode and refinement.
        geometry_k: top-``k`` singular values for the log volume element (default: all).
        dtype: of the encoder (``torch.float64`` for bit-stable tests).
        loss_weights: of the refinement and training losses.
        decoder: a trained :class:`~hyperlapse.nn.change_decoder.ChangeDecoder` for the
            forecasts (default: an untrained one, i.e. the extrapolation baseline).
        data_probes: held-out data inputs ``[B, n_0]``: the geometry is also reported on them
            (``geometry["data"]``; the grid or random probes can disagree with data, see
            ``docs/reports.md``) and neuron importance is measured on them.

    Example:
        >>> from torch import nn
        >>> from hyperlapse import describe_mlp
        >>> net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))
        >>> online = OnlineEncoder(describe_mlp(net), d=4, refine_steps=2)
        >>> r0 = online.update(net.state_dict(), step=0)
        >>> with torch.no_grad():
        ...     _ = net[0].weight.mul_(1.1)
        >>> r1 = online.update(net.state_dict(), step=10)
        >>> r0["scores"]["link_auc"] is None, 0.0 <= r1["scores"]["link_auc"] <= 1.0
        (True, True)
        >>> tuple(online.z.shape), [l["type"] for l in r1["layers"]]
        ((10, 4), ['input', 'hidden', 'output'])
    """

    def __init__(
        self,
        architecture: Mapping[str, Any],
        *,
        encoder: TemporalEncoder | str | Path | None = None,
        seed: int = 0,
        d: int = 8,
        window: int = 4,
        sparsify_k: int | None = 32,
        link_q: float = 0.2,
        refine_steps: int = 6,
        refine_lr: float = 0.15,
        train_encoder: bool | None = None,
        lr: float = 1e-2,
        num_hubs: int = 10,
        probes: Tensor | None = None,
        geometry_every: int = 1,
        geometry_k: int | None = None,
        dtype: torch.dtype = torch.float32,
        loss_weights: LossWeights | None = None,
        decoder: ChangeDecoder | None = None,
        data_probes: Tensor | None = None,
        noise_every: int = 10,
    ) -> None:
        widths, _ = check_architecture(architecture)
        for name, value, low in (
            ("refine_steps", refine_steps, 0),
            ("num_hubs", num_hubs, 0),
            ("geometry_every", geometry_every, 0),
            ("noise_every", noise_every, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"Expected {name} to be an int >= {low}, got {value!r}.")
        self.architecture = dict(architecture)
        self.widths = widths
        #: False when an activation could not be determined at recording: the input-space
        #: geometry and the ablations are then skipped (never computed as if linear).
        self.activations_known = activations_known(architecture)
        self.seed = seed
        self._topology = mlp_topology(widths)
        num_identities = self._topology["num_identities"]
        if encoder is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                config = EncoderConfig(
                    in_features=NODE_FEATURES,
                    num_identities=num_identities,
                    d=d,
                    window=window,
                    sparsify_k=sparsify_k,
                    link_q=link_q,
                )
                self.encoder = TemporalEncoder(config).to(dtype)
            self.mode = "online"
            train_encoder = True if train_encoder is None else train_encoder
        else:
            if isinstance(encoder, (str, Path)):
                encoder = TemporalEncoder.load(encoder)
            elif not isinstance(encoder, TemporalEncoder):
                raise ConfigError(
                    f"Expected encoder to be None, a TemporalEncoder or a path to a saved one, "
                    f"got {type(encoder).__name__}."
                )
            else:
                encoder = copy.deepcopy(encoder)
            self.encoder = encoder.to(dtype)
            train_encoder = False if train_encoder is None else train_encoder
            self.mode = "pretrained+online" if train_encoder else "pretrained"
        self.encoder.eval()
        self.train_encoder = bool(train_encoder)
        self.refine_steps = refine_steps
        self.refine_lr = refine_lr
        self.loss_weights = loss_weights or LossWeights()
        self.num_hubs = num_hubs
        self.geometry_every = geometry_every
        self.noise_every = noise_every
        self._noise: Tensor | None = None  # per-layer drift of a re-encoded unchanged snapshot
        self.geometry_k = geometry_k
        given_probes = probes
        if probes is None and geometry_every:
            probes = default_probes(widths[0], seed=seed)
        if probes is not None and (probes.dim() != 2 or probes.shape[1] != widths[0]):
            raise ConfigError(
                f"Expected probe inputs of shape [B, {widths[0]}], got {tuple(probes.shape)}."
            )
        self.probe_kind = (
            "grid"
            if given_probes is None and widths[0] == 2
            else ("random" if given_probes is None else "given")
        )
        self.probes = None if probes is None else probes.detach().to(torch.float64).cpu()
        if data_probes is not None and (
            data_probes.dim() != 2 or data_probes.shape[1] != widths[0]
        ):
            raise ConfigError(
                f"Expected data probes of shape [B, {widths[0]}], got {tuple(data_probes.shape)}."
            )
        self.data_probes = (
            None if data_probes is None else data_probes.detach().to(torch.float64).cpu()
        )
        # importance is measured on data when there are data probes, else on the probes
        self.importance_probes = self.data_probes if self.data_probes is not None else self.probes
        self._optimizer = (
            torch.optim.Adam(self.encoder.parameters(), lr=lr) if self.train_encoder else None
        )
        # The change-aware decoder starts at the extrapolation baseline (its correction is zero)
        # and is not trained online: the benchmark's held-out check found no correction that
        # helps on later snapshots (benchmarks/results/link_sign_prediction.md). Pass a trained
        # one as ``decoder`` to report it instead.
        if decoder is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                decoder = ChangeDecoder(
                    self.config.d, len(EDGE_FEATURES), len(TARGETS), manifold=self.manifold
                )
        elif not isinstance(decoder, ChangeDecoder):
            raise ConfigError(
                f"Expected decoder to be None or a ChangeDecoder, got {type(decoder).__name__}."
            )
        self.decoder = copy.deepcopy(decoder).to(torch.float64).eval()
        self.reset()

    # ----------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the run (keeps the encoder's current weights)."""
        self.index = 0
        self._state = self.encoder.init_state()
        self.z: Tensor | None = None
        self._prev_weight: Tensor | None = None
        self._prev_links: Tensor | None = None
        self._prev_hubs: list[int] | None = None
        self._prev_step: int | None = None
        # forecasting: the bounded window of the benchmark's definitions
        self._window = ForecastWindow(
            self._topology["edge_layer"], q=self.config.link_q
        )
        self._prev_importance: Tensor | None = None

    @property
    def config(self) -> EncoderConfig:
        return self.encoder.config

    @property
    def manifold(self):
        return self.encoder.manifold

    @property
    def curvature(self) -> float:
        return float(self.encoder.manifold.c) if self.config.manifold == "poincare" else 0.0

    def retained(self) -> list[Tensor]:
        """Every tensor kept between snapshots (for checking that the cost is bounded)."""
        s = self._state
        held = [*s.summaries, *s.kernel_states, *s.history]
        held += [x for x in (s.z, self.z, self._prev_weight, self._prev_links) if x is not None]
        held += self._window.state()
        if self._prev_importance is not None:
            held.append(self._prev_importance)
        return held

    def node_table(self) -> dict[str, Tensor]:
        """``{"node_layer", "node_index", "node_type"}``, each ``[N]`` int64."""
        return {k: self._topology[k] for k in ("node_layer", "node_index", "node_type")}

    # ----------------------------------------------------------------------------- update
    def update(
        self,
        state: Mapping[str, Tensor],
        step: int,
        metrics: Mapping[str, Any] | None = None,
    ) -> Report:
        """Consume snapshot ``t = self.index`` and return its report (then ``self.z`` is
        ``z_t`` ``[N, d]``): graph, score, encode, refine, optional train step, noise floor,
        then the report's sections (:mod:`hyperlapse.report.sections`).

        Args:
            state: the snapshot's parameters by qualified name.
            step: its optimizer step.
            metrics: scalars logged with it (NaN or missing -> None).
        """
        clock = _Clock()
        graph, snap, targets, links = self._graph(state)
        clock.lap("graph")
        scores = self._score(targets, links, graph)
        clock.lap("score")
        gap = None if self._prev_step is None else max(int(step) - self._prev_step, 1)
        z_enc, new_state = self._encode(snap, gap)
        clock.lap("encode")
        z, refine_terms = self._refine(z_enc, targets)
        clock.lap("refine")
        train_terms = self._train_step(z_enc, targets)
        self._state = new_state.detach()
        clock.lap("train")
        self._measure_noise(snap, targets, new_state, z, gap)
        clock.lap("noise")
        ctx = self._context(state, int(step), metrics, graph, links, z, gap, scores)
        ctx.encoder["refine"], ctx.encoder["train"] = refine_terms, train_terms
        report = build_report(ctx, clock.timing)
        report["timing"]["total"] = clock.total()
        self._advance(ctx, graph, links, z, int(step))
        return report

    # ------------------------------------------------------------------ the pipeline's steps
    def _graph(self, state: Mapping[str, Tensor]):
        """The snapshot's parameter graph, its encoder input, its targets and its links."""
        graph = ParameterGraph.from_state_dict(
            dict(state), self.architecture, topology=self._topology
        )
        snap = self.encoder.prepare(graph)
        targets = snapshot_targets(snap, q=self.config.link_q)
        links = torch.zeros(snap.edge_weight.numel(), dtype=torch.bool)
        links[targets.edge_ids[targets.link > 0.5]] = True
        return graph, snap, targets, links

    def _encode(self, snap: Any, gap: int | None):
        """Advance the recurrent kernels one step and encode the snapshot."""
        with torch.set_grad_enabled(self._optimizer is not None):
            return self.encoder.step(
                snap, self._state, gap=None if gap is None else float(gap)
            )

    def _refine(self, z_enc: Tensor, targets: Any):
        """A few Riemannian Adam steps on the snapshot's targets, anchored to ``z_{t-1}``."""
        return refine_snapshot(
            self.encoder,
            z_enc.detach(),
            targets,
            anchor=self.z,
            steps=self.refine_steps,
            lr=self.refine_lr,
            weights=self.loss_weights,
        )

    def _train_step(self, z_enc: Tensor, targets: Any) -> dict[str, float] | None:
        """One Adam step on the encoder's weights (history detached), if training."""
        if self._optimizer is None:
            return None
        terms = loss_terms(self.encoder, z_enc, targets, self.z, self.loss_weights)
        self._optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return {k: float(v.detach()) for k, v in terms.items()}

    def _measure_noise(
        self, snap: Any, targets: Any, new_state: Any, z: Tensor, gap: int | None
    ) -> None:
        """Re-measure the drift's noise floor when due (every ``noise_every``, and at the
        second snapshot), at the recording interval just seen (the encoder reads the time gap:
        a floor measured one step apart does not describe snapshots 20 steps apart)."""
        if self.noise_every and self.z is not None and (
            self._noise is None or self.index % self.noise_every == 0
        ):
            self._noise = self._noise_floor(
                snap, targets, new_state, z, self._topology["node_layer"],
                gap=float(gap or 1),
            )

    def _context(self, state, step, metrics, graph, links, z, gap, scores) -> SnapshotContext:
        """What the report's sections read."""
        m = self.encoder.manifold
        with torch.no_grad():
            radius = dist0(z, manifold=m)
            drift = None if self.z is None else dist(z, self.z, manifold=m)
        return SnapshotContext(
            index=self.index,
            step=step,
            metrics={str(k): _float_or_none(v) for k, v in (metrics or {}).items()},
            state=state,
            architecture=self.architecture,
            widths=self.widths,
            graph=graph,
            links=links,
            node_layer=self._topology["node_layer"],
            node_type=self._topology["node_type"],
            node_index=self._topology["node_index"],
            radius=radius,
            drift=drift,
            gap=gap,
            noise=self._noise,
            scores=scores,
            previous={
                "weight": self._prev_weight,
                "links": self._prev_links,
                "hubs": self._prev_hubs,
                "importance": self._prev_importance,
            },
            num_hubs=self.num_hubs,
            probes=self.probes,
            probe_kind=self.probe_kind,
            data_probes=self.data_probes,
            geometry_k=self.geometry_k,
            geometry_due=bool(self.geometry_every) and self.index % max(self.geometry_every, 1)
            == 0,
            activations_known=self.activations_known,
            encoder={
                "mode": self.mode,
                "manifold": self.config.manifold,
                "c": self.curvature,
                "d": self.config.d,
            },
        )

    def _advance(self, ctx: SnapshotContext, graph, links: Tensor, z: Tensor, step: int) -> None:
        """Remember what snapshot ``t + 1`` needs of ``t``."""
        self.z = z.detach()
        self._prev_weight = graph.edge_weight.detach()
        self._prev_links = links
        self._prev_hubs = ctx.remember.get("hubs", self._prev_hubs)
        if "importance" in ctx.remember:
            self._prev_importance = ctx.remember["importance"]
        gap = None if self._prev_step is None else step - self._prev_step
        self._window.push(graph.edge_weight, gap)
        self._prev_step = step
        self.index += 1

    def _noise_floor(
        self, snap: Any, targets: Any, state: Any, z: Tensor, node_layer: Tensor,
        gap: float = 1.0,
    ) -> Tensor:
        """Per node layer, the mean drift ``d(z', z)`` when the snapshot just encoded arrives
        again unchanged: encode it once more from the advanced state and refine it anchored to
        ``z``, as the next update would. Costs one encode and one refinement (every
        ``noise_every`` snapshots); the encoder's own state is left untouched."""
        enc = self.encoder
        with torch.no_grad():
            z_again, _ = enc.step(snap, state, gap=gap)
        z2, _ = refine_snapshot(
            enc,
            z_again.detach(),
            targets,
            anchor=z.detach(),
            steps=self.refine_steps,
            lr=self.refine_lr,
            weights=self.loss_weights,
        )
        with torch.no_grad():
            d = dist(z2, z, manifold=enc.manifold).to(torch.float64)
        L1 = len(self.widths)
        count = torch.bincount(node_layer, minlength=L1).to(torch.float64)
        return torch.bincount(node_layer, weights=d, minlength=L1) / count.clamp_min(1)

    def _score(self, targets, links: Tensor, graph: ParameterGraph) -> dict[str, Any]:
        """Forecasts of snapshot ``t`` from the state at ``t - 1`` (None at ``t = 0``).

        Model and baselines are scored on the same candidates, from the one forecasting window
        (:class:`hyperlapse.train.forecast.ForecastWindow`, the benchmark's definitions).
        """
        out: dict[str, Any] = {f"{n}_{m}": None for n in TARGETS for m in ("auc", "ap")}
        out.update(
            sign_acc=None,
            head_link_auc=None,
            head_link_ap=None,
            num_links=int(links.sum()),
            num_new_links=None,
            num_sign_flips=None,
            base_rate=None,
            baselines=None,
            strongest=None,
        )
        if self.z is None:
            return out
        enc = self.encoder
        win = self._window
        f = win.features()
        ft = win.targets(graph.edge_weight)
        base = win.baselines()
        reference = torch.stack([base["extrapolation"][n] for n in TARGETS], dim=1)
        with torch.no_grad():
            logits = self.decoder(self.z.to(torch.float64), graph.edge_index, f, reference)
            _, sign_logit = enc.weight_head(self.z, targets.node_identity, targets.pairs)
            head = enc.link_head(self.z, graph.edge_index.to(self.z.device))
        model = forecast_metrics({n: logits[:, k] for k, n in enumerate(TARGETS)}, ft)
        for name in TARGETS:
            out[f"{name}_auc"] = model[name]["auc"]
            out[f"{name}_ap"] = model[name]["ap"]
        out["head_link_auc"], out["head_link_ap"] = auc_ap(head, links)
        out["num_new_links"] = int(ft.labels["new_link"].sum())
        out["num_sign_flips"] = int(ft.labels["sign_flip"].sum())
        out["base_rate"] = {n: model[n]["base_rate"] for n in TARGETS}
        out["baselines"] = {}
        for bname, scores in base.items():
            m = forecast_metrics(scores, ft)
            out["baselines"][bname] = {f"{n}_{k}": m[n][k] for n in TARGETS for k in ("auc", "ap")}
        out["strongest"] = {}
        for n in TARGETS:
            aps = {
                b: v[f"{n}_ap"] for b, v in out["baselines"].items() if not math.isnan(v[f"{n}_ap"])
            }
            out["strongest"][n] = max(aps, key=aps.get) if aps else None
        label = targets.link > 0.5
        if label.any():
            pred = sign_logit[label] > 0
            now_positive = targets.sign[label] > 0.5
            out["sign_acc"] = float((pred == now_positive).double().mean())
            # its baseline: copy each link's sign at t - 1 (signs rarely flip between snapshots)
            prev = self._prev_weight.to(targets.sign.device)[targets.edge_ids[label]] >= 0
            out["baselines"]["persistence"]["sign_acc"] = float(
                (prev == now_positive).double().mean()
            )
        return out
