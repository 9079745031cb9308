"""``fit_encoder``: train a :class:`~hyperlapse.nn.encoder.TemporalEncoder` on recorded runs.

Stage 1 (Euclidean): the encoder's weights are trained with Adam on every run, snapshot by
snapshot, with truncated back-propagation through time (``bptt`` snapshots). The embedding of
snapshot ``t`` is scored against snapshot ``t + horizon`` (``horizon=1``: predict the next
snapshot's links, magnitudes and signs from the past; 0: reconstruct the current one).
Stage 2 (Riemannian) runs at embedding time: :func:`hyperlapse.train.embed.embed_refined` refines
each snapshot's coordinates as ``ManifoldParameter`` with Riemannian Adam
(:mod:`hyperlapse.train.refine`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..nn.encoder import EncoderConfig, TemporalEncoder, as_graph_sequence
from ..progress import progress_bar
from .losses import TERMS, LossWeights, loss_terms
from .targets import snapshot_targets

__all__ = ["fit_encoder", "encoder_loss", "as_runs"]


def as_runs(trajectories: Any) -> list[Sequence[Any]]:
    """A list of runs (each a sequence of ParameterGraphs) from what ``fit_encoder`` accepts."""
    from ..graph.parameter_graph import ParameterGraph

    if isinstance(trajectories, (list, tuple)):
        if len(trajectories) == 0:
            raise ConfigError("Expected at least one trajectory, got an empty list.")
        if isinstance(trajectories[0], ParameterGraph):
            return [list(trajectories)]
        return [as_graph_sequence(t)[0] for t in trajectories]
    return [as_graph_sequence(trajectories)[0]]


def _gaps(run: Sequence[Any]) -> list[float | None]:
    """Optimizer steps between consecutive snapshots (None for the first, or when unknown)."""
    steps = getattr(run, "steps", None)
    if steps is None:
        return [None] * len(run)
    return [None] + [float(steps[t] - steps[t - 1]) for t in range(1, len(run))]


def _prepare(encoder: TemporalEncoder, runs: list[Sequence[Any]]) -> list[list[tuple]]:
    out = []
    for run in runs:
        snaps = [encoder.prepare(run[t]) for t in range(len(run))]
        out.append(
            [
                (s, snapshot_targets(s, q=encoder.config.link_q), gap)
                for s, gap in zip(snaps, _gaps(run), strict=True)
            ]
        )
    return out


def _run_loss(
    encoder: TemporalEncoder,
    run: list[tuple],
    *,
    horizon: int,
    bptt: int,
    weights: LossWeights,
    optimizer: torch.optim.Optimizer | None = None,
    clip: float = 1.0,
) -> dict[str, float]:
    """Go through one run; step the optimizer after every chunk of ``bptt`` snapshots."""
    state = encoder.init_state()
    z_prev = None
    sums = dict.fromkeys((*TERMS, "total"), 0.0)
    count = 0
    usable = len(run) - horizon
    for start in range(0, usable, bptt):
        chunk_terms = []
        for t in range(start, min(start + bptt, usable)):
            z, state = encoder.step(run[t][0], state, gap=run[t][2])
            chunk_terms.append(loss_terms(encoder, z, run[t + horizon][1], z_prev, weights))
            z_prev = z
        total = sum(terms["total"] for terms in chunk_terms) / len(chunk_terms)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), clip)
            optimizer.step()
        for terms in chunk_terms:
            for name in sums:
                sums[name] += float(terms[name].detach())
        count += len(chunk_terms)
        state = state.detach()
        z_prev = z_prev.detach()
    return {name: value / max(count, 1) for name, value in sums.items()}


def _mean(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


def encoder_loss(
    encoder: TemporalEncoder,
    trajectories: Any,
    *,
    horizon: int = 1,
    weights: LossWeights | None = None,
) -> dict[str, float]:
    """Mean loss terms of ``encoder`` over runs (no gradient): what ``fit_encoder`` minimises."""
    runs = _prepare(encoder, as_runs(trajectories))
    with torch.no_grad():
        return _mean(
            [
                _run_loss(
                    encoder, run, horizon=horizon, bptt=10**9, weights=weights or LossWeights()
                )
                for run in runs
            ]
        )


def fit_encoder(
    trajectories: Any,
    *,
    d: int = 8,
    epochs: int = 30,
    seed: int = 0,
    manifold: str = "poincare",
    c: float = 1.0,
    heads: int = 2,
    layers: int = 2,
    window: int = 4,
    sparsify_k: int | None = 32,
    lr: float = 3e-3,
    horizon: int = 1,
    bptt: int = 8,
    weights: LossWeights | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    encoder: TemporalEncoder | None = None,
    progress: bool = True,
    **config: Any,
) -> TemporalEncoder:
    """Train a temporal encoder on one or many runs.

    Args:
        trajectories: a Trajectory, a TemporalParameterGraph, a list of ParameterGraphs (one
            run) or a list of Trajectories / TemporalParameterGraphs (many runs, possibly of
            different architectures).
        d, heads, layers, window, c, manifold, sparsify_k, **config: encoder settings
            (:class:`~hyperlapse.nn.encoder.EncoderConfig`).
        epochs: passes over every run.
        seed: seeds the initialisation (the global RNG is left as it was); training is
            deterministic given the seed.
        lr: Adam learning rate of the encoder weights.
        horizon: snapshot ``t``'s embedding is scored against snapshot ``t + horizon``.
        bptt: snapshots per truncated back-propagation chunk (one optimizer step each).
        weights: loss weights (:class:`~hyperlapse.train.losses.LossWeights`).
        dtype, device: of the encoder.
        encoder: continue training this encoder instead of building one.
        progress: show a progress bar on stderr when it is a terminal
            (:mod:`hyperlapse.progress`).

    Returns:
        The trained encoder; ``encoder.history`` holds the mean loss terms of every epoch.

    Example:
        >>> from torch import nn
        >>> from hyperlapse import ParameterGraph
        >>> net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
        >>> graphs = []
        >>> for _ in range(4):
        ...     graphs.append(ParameterGraph.from_module(net))
        ...     with torch.no_grad():
        ...         _ = net[0].weight.add_(0.1)
        >>> enc = fit_encoder(graphs, d=2, epochs=2, progress=False)
        >>> len(enc.history), sorted(enc.history[0])
        (2, ['link', 'magnitude', 'sign', 'smooth', 'total'])
    """
    if epochs < 0 or horizon < 0 or bptt < 1:
        raise ConfigError(
            f"Expected epochs >= 0, horizon >= 0 and bptt >= 1, got {epochs}, {horizon}, {bptt}."
        )
    runs = as_runs(trajectories)
    if all(len(run) <= horizon for run in runs):
        raise ConfigError(
            f"Every run has at most horizon={horizon} snapshots: nothing to train on. Record "
            f"more snapshots or lower horizon."
        )
    weights = weights or LossWeights()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if encoder is None:
            first = runs[0][0]
            num_ids = max(int(run[0].num_identities) for run in runs)
            encoder = TemporalEncoder(
                EncoderConfig(
                    in_features=int(first.x.shape[1]),
                    num_identities=num_ids,
                    d=d,
                    heads=heads,
                    layers=layers,
                    window=window,
                    c=c,
                    manifold=manifold,
                    sparsify_k=sparsify_k,
                    **config,
                )
            )
        encoder.to(device=device, dtype=dtype)
        prepared = _prepare(encoder, runs)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
        history: list[dict[str, float]] = []
        bar = progress_bar(range(epochs), progress, "fit_encoder")
        for _ in bar:
            encoder.train()
            results = [
                _run_loss(
                    encoder, run, horizon=horizon, bptt=bptt, weights=weights, optimizer=optimizer
                )
                for run in prepared
            ]
            history.append(_mean(results))
            if not math.isfinite(history[-1]["total"]):
                raise FloatingPointError(
                    f"The encoder loss became {history[-1]['total']} at epoch {len(history)}. "
                    f"Lower lr (got {lr}) or use dtype=torch.float64."
                )
            bar.set_postfix(loss=f"{history[-1]['total']:.4f}")
    encoder.eval()
    encoder.history = history
    return encoder
