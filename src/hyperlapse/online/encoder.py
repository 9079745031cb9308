"""The online encoder: snapshots in, one structure report per snapshot out, in bounded time.

For each snapshot ``t`` (:meth:`OnlineEncoder.update`):

1. score the predictions for ``t`` made from the state at ``t - 1`` (before seeing ``t``): the
   link head on ``z_{t-1}`` against the links of ``t`` (AUC/AP), against the links that are new at
   ``t`` only (new-link AUC/AP), and the sign head against the signs of ``t``'s links;
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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..graph.parameter_graph import NODE_FEATURES, ParameterGraph, mlp_topology
from ..graph.state import check_architecture
from ..nn._geo import dist, dist0
from ..nn.encoder import EncoderConfig, TemporalEncoder
from ..report.metrics import auc_ap, hub_neurons, layer_stats, weight_stats
from ..report.schema import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, Report, jsonable
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
        geometry_k: top-``k`` singular values for the log volume element (default: all).
        dtype: of the encoder (``torch.float64`` for bit-stable tests).
        loss_weights: of the refinement and training losses.

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
    ) -> None:
        widths, _ = check_architecture(architecture)
        for name, value, low in (
            ("refine_steps", refine_steps, 0),
            ("num_hubs", num_hubs, 0),
            ("geometry_every", geometry_every, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"Expected {name} to be an int >= {low}, got {value!r}.")
        self.architecture = dict(architecture)
        self.widths = widths
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
        self.geometry_k = geometry_k
        if probes is None and geometry_every:
            probes = default_probes(widths[0], seed=seed)
        if probes is not None and (probes.dim() != 2 or probes.shape[1] != widths[0]):
            raise ConfigError(
                f"Expected probe inputs of shape [B, {widths[0]}], got {tuple(probes.shape)}."
            )
        self.probes = None if probes is None else probes.detach().to(torch.float64).cpu()
        self._optimizer = (
            torch.optim.Adam(self.encoder.parameters(), lr=lr) if self.train_encoder else None
        )
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
        ``z_t`` ``[N, d]``).

        Args:
            state: the snapshot's parameters by qualified name.
            step: its optimizer step.
            metrics: scalars logged with it (NaN or missing -> None).
        """
        timing: dict[str, float] = {}
        tick = time.perf_counter()
        t0 = tick

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timing[name] = now - tick
            tick = now

        enc = self.encoder
        m = enc.manifold
        graph = ParameterGraph.from_state_dict(
            dict(state), self.architecture, topology=self._topology
        )
        snap = enc.prepare(graph)
        targets = snapshot_targets(snap, q=self.config.link_q)
        links = torch.zeros(snap.edge_weight.numel(), dtype=torch.bool)
        links[targets.edge_ids[targets.link > 0.5]] = True
        lap("graph")

        scores = self._score(targets, links)
        lap("score")

        train = self._optimizer is not None
        with torch.set_grad_enabled(train):
            z_enc, new_state = enc.step(snap, self._state)
        lap("encode")

        z, refine_terms = refine_snapshot(
            enc,
            z_enc.detach(),
            targets,
            anchor=self.z,
            steps=self.refine_steps,
            lr=self.refine_lr,
            weights=self.loss_weights,
        )
        lap("refine")

        train_terms = None
        if train:
            terms = loss_terms(enc, z_enc, targets, self.z, self.loss_weights)
            self._optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
            train_terms = {k: float(v.detach()) for k, v in terms.items()}
        self._state = new_state.detach()
        lap("train")

        with torch.no_grad():
            radius = dist0(z, manifold=m)
            drift = None if self.z is None else dist(z, self.z, manifold=m)
        node_layer = self._topology["node_layer"]
        layers = layer_stats(radius, node_layer, self.widths, drift)
        weights = weight_stats(
            graph.edge_weight,
            graph.edge_layer,
            graph.num_layers,
            self._prev_weight,
            links,
            self._prev_links,
        )
        hubs = hub_neurons(
            radius,
            self._topology["node_type"],
            node_layer,
            self._topology["node_index"],
            self.num_hubs,
            self._prev_hubs,
        )
        lap("report")

        geometry = None
        if self.geometry_every and self.probes is not None and (
            self.index % self.geometry_every == 0
        ):
            from ..geometry.pullback import input_geometry

            geometry = input_geometry(
                dict(state), self.architecture, self.probes, k=self.geometry_k
            )
        lap("geometry")
        timing["total"] = time.perf_counter() - t0

        report = {
            "schema": REPORT_SCHEMA,
            "version": REPORT_SCHEMA_VERSION,
            "index": self.index,
            "step": int(step),
            "metrics": {str(k): _float_or_none(v) for k, v in (metrics or {}).items()},
            "layers": layers,
            "weights": weights,
            "scores": scores,
            "hubs": hubs,
            "geometry": geometry,
            "encoder": {
                "mode": self.mode,
                "manifold": self.config.manifold,
                "c": self.curvature,
                "d": self.config.d,
                "refine": refine_terms,
                "train": train_terms,
            },
            "timing": timing,
        }
        self.z = z.detach()
        self._prev_weight = graph.edge_weight.detach()
        self._prev_links = links
        self._prev_hubs = hubs["nodes"]
        self.index += 1
        return jsonable(report)

    def _score(self, targets, links: Tensor) -> dict[str, Any]:
        """Predictions for this snapshot from the previous embedding (None at t = 0)."""
        out: dict[str, Any] = {
            "link_auc": None,
            "link_ap": None,
            "new_link_auc": None,
            "new_link_ap": None,
            "sign_acc": None,
            "persistence_link_auc": None,
            "num_links": int(links.sum()),
            "num_new_links": None,
        }
        if self.z is None:
            return out
        enc = self.encoder
        with torch.no_grad():
            logits = enc.link_head(self.z, targets.pairs)
            _, sign_logit = enc.weight_head(self.z, targets.node_identity, targets.pairs)
        label = targets.link > 0.5
        out["link_auc"], out["link_ap"] = auc_ap(logits, label)
        is_new = (links & ~self._prev_links)[targets.edge_ids] & label
        out["num_new_links"] = int((links & ~self._prev_links).sum())
        keep = is_new | ~label
        out["new_link_auc"], out["new_link_ap"] = auc_ap(logits[keep], is_new[keep])
        # the trivial baseline: |w| of snapshot t-1 as the score of each pair
        prev_abs = self._prev_weight.abs().to(logits.dtype)[targets.edge_ids]
        out["persistence_link_auc"] = auc_ap(prev_abs, label)[0]
        if label.any():
            pred = sign_logit[label] > 0
            out["sign_acc"] = float((pred == (targets.sign[label] > 0.5)).double().mean())
        return out
