"""Forecasting a parameter graph: one definition of candidates, targets, features and baselines.

Predict snapshot ``t + h`` from the snapshots ``<= t`` (``t`` is the *origin*, ``h`` the horizon
in snapshots). Three targets, each scored over *every* candidate edge (no sampling, so the
benchmark and the online reports rank exactly the same sets):

==============  ============================  ================================
target          candidates                    positive
==============  ============================  ================================
``link``        every edge                    a link at ``t + h``
``new_link``    the non-links of ``t``        a link at ``t + h``
``sign_flip``   the edges with ``w_t != 0``   ``sign(w_{t+h}) != sign(w_t)``
==============  ============================  ================================

A link is the top ``q`` of ``|w|`` within its layer
(:func:`hyperlapse.graph.links.top_fraction`), so every magnitude a forecaster looks at is
divided by its layer's *link threshold* at ``t`` (the smallest ``|w|`` that is a link): pooling
raw ``|w|`` across layers would rank by layer, not by edge.

Baselines (all causal, all on the same candidates):

* ``persistence``: ``|w_t| / thr`` (links), ``-|w_t| / thr`` (a flip is likelier near 0);
* ``extrapolation``: ``w_hat = w_t + h (w_t - w_{t-1})`` normalised the same way: ``|w_hat| / thr``
  (links), ``-sign(w_t) w_hat / thr`` (flips: how far the extrapolation crosses zero);
* ``edgebank``: "was ever a link" (flips: "ever had the other sign") over the snapshots seen,
  with the persistence score squashed into ``[0, 1)`` as the tie-break;
* ``logistic``: a logistic regression shared by all edges on :func:`edge_features` (recent
  deltas), refitted at every origin on the latest examples whose outcome is known (origins
  ``s <= t - h``).

The strongest of these is the reference a learned model must beat (:data:`REFERENCE` is the one
the change-aware decoder starts from).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..graph.links import top_fraction
from .metrics import roc_auc_and_ap

__all__ = [
    "TARGETS",
    "BASELINES",
    "REFERENCE",
    "NUM_LAGS",
    "FIT_ORIGINS",
    "EDGE_FEATURES",
    "ForecastTargets",
    "link_thresholds",
    "forecast_targets",
    "edge_features",
    "EdgeMemory",
    "baseline_scores",
    "fit_logistic",
    "logistic_scores",
    "fit_logistic_targets",
    "logistic_baseline",
    "forecast_metrics",
    "RunForecasts",
    "ForecastWindow",
    "past_origins",
    "baseline_set",
    "fit_change_decoder",
    "decoder_scores",
    "select_reference",
]

TARGETS: tuple[str, ...] = ("link", "new_link", "sign_flip")
BASELINES: tuple[str, ...] = ("persistence", "extrapolation", "edgebank", "logistic")
#: The baseline the change-aware decoder starts from (and a model must beat).
REFERENCE = "extrapolation"
#: Past origins the logistic baseline is refitted on at every origin (outcomes observed).
FIT_ORIGINS = 3
#: Deltas of the past a forecaster sees: ``w_t - w_{t-1}`` back to ``w_{t-2} - w_{t-3}``.
NUM_LAGS = 3
#: Names of the columns of :func:`edge_features`.
EDGE_FEATURES: tuple[str, ...] = (
    "abs_w",
    *(f"delta_{i}" for i in range(1, NUM_LAGS + 1)),
    "extrapolated",
    "abs_extrapolated",
    "ever_link",
    "ever_other_sign",
    "log_horizon",
    "log_gap",
)


@dataclass
class ForecastTargets:
    """Candidates and labels of the three targets for one (origin, horizon).

    Shapes:
        candidates[name]: ``[M_name]`` int64 edge ids; labels[name]: ``[M_name]`` bool.
    """

    candidates: dict[str, Tensor]
    labels: dict[str, Tensor]

    def base_rate(self, name: str) -> float:
        """Fraction of positives among the candidates of target ``name``."""
        lab = self.labels[name]
        return float(lab.double().mean()) if lab.numel() else float("nan")


def _num_layers(edge_layer: Tensor) -> int:
    return int(edge_layer.max()) + 1 if edge_layer.numel() else 0


def link_thresholds(edge_weight: Tensor, edge_layer: Tensor, q: float = 0.2) -> Tensor:
    """Per edge, its layer's link threshold: the smallest ``|w|`` that is a link in that layer.

    Shapes:
        edge_weight, edge_layer: ``[E]``; returns ``[E]`` (positive: the ``tiny`` of the dtype
        where a layer is all zeros).

    Example:
        >>> w = torch.tensor([0.1, -0.9, 0.5, 0.0, 2.0, -1.0])
        >>> link_thresholds(w, torch.tensor([0, 0, 0, 0, 1, 1]), q=0.5)
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 2.0000, 2.0000])
    """
    num_layers = _num_layers(edge_layer)
    links = top_fraction(edge_weight, edge_layer, num_layers, q)
    mag = edge_weight.detach().abs()
    big = torch.where(links, mag, torch.full_like(mag, float("inf")))
    thr = torch.full((num_layers,), float("inf"), dtype=mag.dtype, device=mag.device)
    thr = thr.scatter_reduce(0, edge_layer, big, "amin")
    thr = torch.where(torch.isfinite(thr), thr, torch.ones_like(thr))
    return thr.clamp_min(torch.finfo(mag.dtype).tiny)[edge_layer]


def forecast_targets(
    w_origin: Tensor, w_target: Tensor, edge_layer: Tensor, q: float = 0.2
) -> ForecastTargets:
    """Candidates and labels of ``link``, ``new_link`` and ``sign_flip`` (module docstring).

    Shapes:
        w_origin, w_target, edge_layer: ``[E]``.

    Example:
        >>> layer = torch.tensor([0, 0, 0, 0])
        >>> ft = forecast_targets(torch.tensor([1.0, 0.1, -0.2, 0.0]),
        ...                       torch.tensor([0.1, 1.0, 0.2, 0.0]), layer, q=0.25)
        >>> ft.candidates["new_link"].tolist(), ft.labels["new_link"].tolist()
        ([1, 2, 3], [True, False, False])
        >>> ft.candidates["sign_flip"].tolist(), ft.labels["sign_flip"].tolist()
        ([0, 1, 2], [False, False, True])
    """
    if w_origin.shape != w_target.shape or w_origin.shape != edge_layer.shape:
        raise ConfigError(
            f"Expected edge weights of origin and target and edge layers of one shape, got "
            f"{tuple(w_origin.shape)}, {tuple(w_target.shape)} and {tuple(edge_layer.shape)}."
        )
    num_layers = _num_layers(edge_layer)
    links_o = top_fraction(w_origin, edge_layer, num_layers, q)
    links_t = top_fraction(w_target, edge_layer, num_layers, q)
    every = torch.arange(w_origin.numel(), device=w_origin.device)
    new_cand = (~links_o).nonzero().squeeze(1)
    flip_cand = (w_origin != 0).nonzero().squeeze(1)
    flipped = torch.sign(w_origin) * torch.sign(w_target) < 0
    return ForecastTargets(
        candidates={"link": every, "new_link": new_cand, "sign_flip": flip_cand},
        labels={"link": links_t, "new_link": links_t[new_cand], "sign_flip": flipped[flip_cand]},
    )


class EdgeMemory:
    """What EdgeBank remembers over the snapshots seen so far: per edge, was it ever a link, and
    did it ever have the other sign than now. Bounded: two ``[E]`` bool tensors and the sign
    history as two more.

    Example:
        >>> mem = EdgeMemory()
        >>> layer = torch.tensor([0, 0])
        >>> mem.update(torch.tensor([1.0, 0.1]), layer, q=0.5)
        >>> mem.update(torch.tensor([-0.1, 1.0]), layer, q=0.5)
        >>> mem.ever_link.tolist(), mem.ever_other_sign(torch.tensor([-0.1, 1.0])).tolist()
        ([True, True], [True, False])
    """

    def __init__(self) -> None:
        self.ever_link: Tensor | None = None
        self.ever_pos: Tensor | None = None
        self.ever_neg: Tensor | None = None

    def update(self, edge_weight: Tensor, edge_layer: Tensor, q: float = 0.2) -> None:
        """Add one snapshot (in time order)."""
        links = top_fraction(edge_weight, edge_layer, _num_layers(edge_layer), q)
        pos, neg = edge_weight > 0, edge_weight < 0
        if self.ever_link is None:
            self.ever_link, self.ever_pos, self.ever_neg = links, pos, neg
        else:
            self.ever_link = self.ever_link | links
            self.ever_pos = self.ever_pos | pos
            self.ever_neg = self.ever_neg | neg

    def ever_other_sign(self, edge_weight: Tensor) -> Tensor:
        """``[E]`` bool: the edge had the sign opposite to ``edge_weight``'s at some time."""
        if self.ever_pos is None:
            return torch.zeros(edge_weight.shape, dtype=torch.bool, device=edge_weight.device)
        return ((edge_weight > 0) & self.ever_neg) | ((edge_weight < 0) & self.ever_pos)

    def copy(self) -> EdgeMemory:
        """An independent copy (the tensors are never modified in place, so a shallow one)."""
        return copy.copy(self)

    def state(self) -> list[Tensor]:
        """The tensors held (for bounded-memory checks)."""
        return [x for x in (self.ever_link, self.ever_pos, self.ever_neg) if x is not None]


def edge_features(
    history: Sequence[Tensor] | Tensor,
    edge_layer: Tensor,
    horizon: int,
    *,
    q: float = 0.2,
    memory: EdgeMemory | None = None,
    gap: float = 1.0,
) -> Tensor:
    """Per edge, the causal features every forecaster here reads (columns :data:`EDGE_FEATURES`).

    With ``w = w_t`` (the last of ``history``), ``s = sign(w)`` (+1 at 0) and ``thr`` the layer's
    link threshold at ``t`` (:func:`link_thresholds`): ``|w| / thr``; the last :data:`NUM_LAGS`
    deltas ``s (w_{t-i+1} - w_{t-i}) / thr`` (positive: moving away from zero; 0 where the history
    is shorter); the extrapolation ``s w_hat / thr`` and its absolute value, with
    ``w_hat = w + h (w_t - w_{t-1})``; EdgeBank's "ever a link" and "ever the other sign" (0
    without ``memory``); ``log(h)``; ``log(gap)``, the optimizer steps between snapshots.
    Everything is per edge and normalised per layer, so it is
    equivariant to permuting hidden neurons.

    Args:
        history: the last snapshots' edge weights, oldest first (at least the origin ``w_t``).
        edge_layer: ``[E]`` weight layer of each edge.
        horizon: ``h >= 1`` in snapshots.
        q: link fraction.
        memory: EdgeBank memory updated up to and including ``t``.
        gap: optimizer steps between consecutive snapshots (> 0).

    Shapes:
        history: ``[k, E]`` or k tensors ``[E]``; returns ``[E, len(EDGE_FEATURES)]``.
    """
    if horizon < 1:
        raise ConfigError(f"Expected a forecast horizon >= 1 snapshot, got {horizon!r}.")
    hist = list(history)
    if not hist:
        raise ConfigError("Expected at least one snapshot of edge weights, got none.")
    w = hist[-1]
    thr = link_thresholds(w, edge_layer, q)
    s = torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))
    deltas = []
    for i in range(1, NUM_LAGS + 1):
        if len(hist) > i:
            deltas.append(s * (hist[-i] - hist[-i - 1]) / thr)
        else:
            deltas.append(torch.zeros_like(w))
    ext = s * w / thr + horizon * deltas[0]
    if memory is not None and memory.ever_link is not None:
        ever = memory.ever_link.to(w.dtype)
        other = memory.ever_other_sign(w).to(w.dtype)
    else:
        ever = other = torch.zeros_like(w)
    if not gap > 0:
        raise ConfigError(f"Expected a positive gap between snapshots, got {gap!r}.")
    logh = torch.full_like(w, math.log(horizon))
    logg = torch.full_like(w, math.log(gap))
    return torch.stack([w.abs() / thr, *deltas, ext, ext.abs(), ever, other, logh, logg], dim=1)


_COL = {name: i for i, name in enumerate(EDGE_FEATURES)}


def _squash(x: Tensor) -> Tensor:
    return x / (1 + x)


def baseline_scores(features: Tensor, name: str) -> dict[str, Tensor]:
    """Scores of the closed-form baseline ``name`` for every target, over every edge.

    Args:
        features: ``[E, F]`` from :func:`edge_features`.
        name: ``"persistence"``, ``"extrapolation"`` or ``"edgebank"`` (``"logistic"`` is
            learned: :func:`fit_logistic`).

    Returns:
        ``{target: [E]}``; higher means more likely. Index with the target's candidates.
    """
    a = features[:, _COL["abs_w"]]
    if name == "persistence":
        return {"link": a, "new_link": a, "sign_flip": -a}
    if name == "extrapolation":
        ext = features[:, _COL["extrapolated"]]
        return {"link": ext.abs(), "new_link": ext.abs(), "sign_flip": -ext}
    if name == "edgebank":
        link = features[:, _COL["ever_link"]] + _squash(a)
        flip = features[:, _COL["ever_other_sign"]] + 1 / (1 + a)
        return {"link": link, "new_link": link, "sign_flip": flip}
    raise ConfigError(
        f"Expected a closed-form baseline in {BASELINES[:3]}, got {name!r}. The logistic "
        f"baseline is fitted with fit_logistic."
    )


def fit_logistic(
    features: Tensor, labels: Tensor, *, l2: float = 1e-3, iters: int = 25
) -> tuple[Tensor, Tensor, Tensor]:
    """Fit ``p = sigmoid(((x - mean) / std) . beta + b)`` by Newton's method (IRLS), float64.

    Minimises the mean binary cross-entropy plus ``l2 |beta|^2``; deterministic and cheap
    (``O(M F^2)`` per iteration). Returns zero coefficients when the labels hold one class.

    Returns:
        ``(beta [F], b [], (mean, std) stacked [2, F])``; score new rows with
        :func:`logistic_scores`.

    Example:
        >>> x = torch.linspace(-3, 3, 200).unsqueeze(1)
        >>> beta, b, norm = fit_logistic(x, (x[:, 0] + 0.3 * torch.randn(200)) > 0)
        >>> bool(beta[0] > 1)
        True
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.float64)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    xs = torch.cat([(x - mean) / std, torch.ones_like(x[:, :1])], dim=1)
    theta = torch.zeros(xs.shape[1], dtype=torch.float64)
    m = xs.shape[0]
    if 0 < float(y.sum()) < m:
        ridge = torch.full((xs.shape[1],), 2 * l2, dtype=torch.float64)
        ridge[-1] = 1e-9  # the intercept is not penalised
        for _ in range(iters):
            p = torch.sigmoid(xs @ theta)
            grad = xs.T @ (p - y) / m + ridge * theta
            hess = (xs * (p * (1 - p)).unsqueeze(1)).T @ xs / m + torch.diag(ridge)
            step = torch.linalg.solve(hess, grad)
            theta = theta - step
            if float(step.abs().max()) < 1e-8:
                break
    return theta[:-1], theta[-1], torch.stack([mean, std])


def logistic_scores(features: Tensor, fitted: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Logits of a :func:`fit_logistic` model on rows ``[M, F]``."""
    beta, b, norm = fitted
    x = (features.detach().to(torch.float64) - norm[0]) / norm[1]
    return x @ beta + b


def fit_logistic_targets(
    examples: Sequence[tuple[Tensor, ForecastTargets]],
    *,
    max_rows: int = 50_000,
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Fit one logistic regression per target on past ``(features, targets)`` pairs.

    Each pair is an origin ``s`` whose outcome ``s + h`` is already observed; rows are the
    target's candidates at that origin. Above ``max_rows`` rows, every positive is kept and the
    negatives are thinned to evenly spaced quantiles of ``|w| / thr`` (a function of the weights,
    so the fit stays independent of neuron order; case-control sampling changes the intercept
    only, not the ranking).
    """
    if not examples:
        raise ConfigError("Expected at least one past origin to fit the logistic baseline on.")
    fitted = {}
    for name in TARGETS:
        x = torch.cat([f[t.candidates[name]] for f, t in examples])
        y = torch.cat([t.labels[name] for _, t in examples])
        if y.numel() > max_rows:
            neg = (~y).nonzero().squeeze(1)
            keep_neg = max(max_rows - int(y.sum()), 1)
            if neg.numel() > keep_neg:
                order = neg[torch.sort(x[neg, _COL["abs_w"]], stable=True).indices]
                pos = (
                    (torch.arange(keep_neg, dtype=torch.float64) + 0.5) * (order.numel() / keep_neg)
                ).long()
                rows = torch.cat([y.nonzero().squeeze(1), order[pos]])
                x, y = x[rows], y[rows]
        fitted[name] = fit_logistic(x, y)
    return fitted


def logistic_baseline(
    features: Tensor, fitted: Mapping[str, tuple[Tensor, Tensor, Tensor]]
) -> dict[str, Tensor]:
    """Scores of the fitted logistic baseline for every target, over every edge."""
    return {name: logistic_scores(features, fit) for name, fit in fitted.items()}


def forecast_metrics(
    scores: Mapping[str, Tensor], targets: ForecastTargets
) -> dict[str, dict[str, float]]:
    """AUC, AP and base rate of full-edge ``scores`` on each target's candidates.

    Returns:
        ``{target: {"auc", "ap", "base_rate", "positives", "candidates"}}`` (nan where a target
        has one class only).
    """
    out = {}
    for name in TARGETS:
        if name not in scores:
            continue
        cand, lab = targets.candidates[name], targets.labels[name]
        s = scores[name][cand]
        both = bool(lab.any()) and not bool(lab.all())
        auc, ap = roc_auc_and_ap(s, lab) if both else (float("nan"), float("nan"))
        out[name] = {
            "auc": auc,
            "ap": ap,
            "base_rate": targets.base_rate(name),
            "positives": int(lab.sum()),
            "candidates": int(lab.numel()),
        }
    return out


def past_origins(t: int, horizon: int, fit_origins: int = FIT_ORIGINS) -> range:
    """Origins the logistic baseline at origin ``t`` is fitted on: the (at most)
    ``fit_origins`` latest ``s >= 1`` whose outcome ``s + horizon`` is observed by ``t``.

    Example:
        >>> list(past_origins(5, 1)), list(past_origins(1, 1)), list(past_origins(2, 1))
        ([2, 3, 4], [], [1])
    """
    return range(max(1, t - horizon - fit_origins + 1), t - horizon + 1)


def baseline_set(
    features: Tensor, examples: Sequence[tuple[Tensor, ForecastTargets]] = ()
) -> dict[str, dict[str, Tensor]]:
    """Every baseline's scores from one origin's features; the logistic one only when fitted
    on ``examples`` (past origins' features and observed targets, oldest first)."""
    out = {name: baseline_scores(features, name) for name in BASELINES[:3]}
    if examples:
        out["logistic"] = logistic_baseline(features, fit_logistic_targets(list(examples)))
    return out


class ForecastWindow:
    """The forecasting window of a run followed one snapshot at a time (horizon 1).

    Holds, bounded whatever the run's length, the last :data:`NUM_LAGS` + 1 edge-weight vectors,
    EdgeBank's memory and the features of the latest origins, and gives at the latest snapshot
    (the origin) exactly what :class:`RunForecasts` gives at that origin: the same
    :func:`edge_features`, :func:`forecast_targets` and :func:`baseline_set` (the logistic
    baseline fitted on :func:`past_origins`). The online analyzer scores its forecasts on it.

    Args:
        edge_layer: ``[E]`` weight layer of each edge.
        q: link fraction.
        fit_origins: as :class:`RunForecasts` (at most :data:`NUM_LAGS`: their outcomes must
            still be in the window).

    Example:
        >>> layer = torch.tensor([0, 0, 0, 0])
        >>> win = ForecastWindow(layer, q=0.5)
        >>> for w in ([1.0, 0.2, -0.5, 0.1], [0.9, 0.3, -0.4, 0.1], [0.8, 0.5, -0.2, 0.1]):
        ...     win.push(torch.tensor(w), gap=10)
        >>> win.origin, sorted(win.baselines()), tuple(win.features().shape)
        (2, ['edgebank', 'extrapolation', 'logistic', 'persistence'], (4, 10))
    """

    def __init__(self, edge_layer: Tensor, *, q: float = 0.2, fit_origins: int = FIT_ORIGINS):
        if not 0 <= fit_origins <= NUM_LAGS:
            raise ConfigError(
                f"Expected fit_origins in [0, {NUM_LAGS}] (their outcomes must stay in the "
                f"window), got {fit_origins!r}."
            )
        self.edge_layer = edge_layer
        self.q, self.fit_origins = q, fit_origins
        self.weights: list[Tensor] = []  # w_{origin - len + 1} .. w_origin
        self.memory = EdgeMemory()
        self.origin = -1
        self.gap = 1.0
        self._features: dict[int, Tensor] = {}

    def push(self, edge_weight: Tensor, gap: float | None = None) -> None:
        """Snapshot ``origin + 1`` arrived (``gap``: optimizer steps since the previous one)."""
        if self.origin >= 1 and self.fit_origins:
            self.features()  # a later origin's logistic baseline is fitted on it
        w = edge_weight.detach().to(torch.float64)
        self.weights = (self.weights + [w])[-(NUM_LAGS + 1) :]
        self.memory.update(w, self.edge_layer, self.q)
        self.origin += 1
        if gap is not None and self.origin > 0:
            self.gap = float(max(gap, 1))
        self._features = {
            s: f for s, f in self._features.items() if s >= self.origin - self.fit_origins
        }

    def _w(self, s: int) -> Tensor:
        return self.weights[s - self.origin - 1]

    def features(self) -> Tensor:
        """:func:`edge_features` at the origin, horizon 1 (``[E, F]``)."""
        if self.origin not in self._features:
            self._features[self.origin] = edge_features(
                self.weights, self.edge_layer, 1, q=self.q, memory=self.memory, gap=self.gap
            )
        return self._features[self.origin]

    def targets(self, edge_weight: Tensor) -> ForecastTargets:
        """:func:`forecast_targets` from the origin to the snapshot ``edge_weight`` that follows."""
        return forecast_targets(
            self.weights[-1], edge_weight.detach().to(torch.float64), self.edge_layer, self.q
        )

    def baselines(self) -> dict[str, dict[str, Tensor]]:
        """Every baseline's scores at the origin (the logistic one when past outcomes exist)."""
        f = self.features()
        examples = [
            (self._features[s], forecast_targets(self._w(s), self._w(s + 1), self.edge_layer,
                                                 self.q))
            for s in past_origins(self.origin, 1, self.fit_origins)
            if s in self._features
        ]
        return baseline_set(f, examples)

    def state(self) -> list[Tensor]:
        """The tensors held (for bounded-memory checks)."""
        return [*self.weights, *self.memory.state(), *self._features.values()]


class RunForecasts:
    """Features, targets and baseline scores of one recorded run, for any (origin, horizon).

    The one place the benchmark and the model's training read forecasting data from (the online
    encoder uses the same functions on its bounded window). Results are cached.

    Args:
        weights: ``[T, E]`` edge weights of every snapshot.
        edge_layer: ``[E]`` weight layer of each edge.
        q: link fraction.
        gap: optimizer steps between consecutive snapshots.
        fit_origins: the logistic baseline at origin ``t`` is fitted on the (at most) this many
            latest origins ``s <= t - h`` (outcomes observed by ``t``).
    """

    def __init__(
        self,
        weights: Tensor,
        edge_layer: Tensor,
        *,
        q: float = 0.2,
        gap: float = 1.0,
        fit_origins: int = FIT_ORIGINS,
    ) -> None:
        if weights.dim() != 2 or weights.shape[1] != edge_layer.numel():
            raise ConfigError(
                f"Expected weights of shape [T, {edge_layer.numel()}], got {tuple(weights.shape)}."
            )
        self.weights = weights.detach()
        self.edge_layer = edge_layer
        self.q, self.gap, self.fit_origins = q, gap, fit_origins
        self._memories: list[EdgeMemory] = []
        mem = EdgeMemory()
        for t in range(weights.shape[0]):
            mem.update(self.weights[t], edge_layer, q)
            self._memories.append(mem.copy())
        self._features: dict[tuple[int, int], Tensor] = {}
        self._targets: dict[tuple[int, int], ForecastTargets] = {}

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def origins(self, horizon: int, start: int, stop: int | None = None) -> range:
        """Origins ``t`` in ``[max(start, 1), stop)`` whose target ``t + horizon`` exists."""
        stop = len(self) if stop is None else min(stop, len(self))
        return range(max(start, 1), stop - horizon)

    def features(self, t: int, horizon: int) -> Tensor:
        """:func:`edge_features` at origin ``t`` (``[E, F]``)."""
        key = (t, horizon)
        if key not in self._features:
            lo = max(0, t - NUM_LAGS)
            self._features[key] = edge_features(
                self.weights[lo : t + 1],
                self.edge_layer,
                horizon,
                q=self.q,
                memory=self._memories[t],
                gap=self.gap,
            )
        return self._features[key]

    def targets(self, t: int, horizon: int) -> ForecastTargets:
        """:func:`forecast_targets` of ``t -> t + horizon``."""
        key = (t, horizon)
        if key not in self._targets:
            self._targets[key] = forecast_targets(
                self.weights[t], self.weights[t + horizon], self.edge_layer, self.q
            )
        return self._targets[key]

    def reference(self, t: int, horizon: int, choice: Mapping[str, str] | None = None) -> Tensor:
        """``[E, len(TARGETS)]`` the reference scores a change-aware decoder starts from.

        Args:
            choice: closed-form baseline per target (default: :data:`REFERENCE` for all;
                :func:`select_reference` picks the strongest on past outcomes).
        """
        f = self.features(t, horizon)
        names = {name: (choice or {}).get(name, REFERENCE) for name in TARGETS}
        scores = {b: baseline_scores(f, b) for b in set(names.values())}
        return torch.stack([scores[names[name]][name] for name in TARGETS], dim=1)

    def baselines(self, t: int, horizon: int) -> dict[str, dict[str, Tensor]]:
        """Every baseline's scores at origin ``t`` (the logistic one when past data exist)."""
        past = past_origins(t, horizon, self.fit_origins)
        return baseline_set(
            self.features(t, horizon),
            [(self.features(s, horizon), self.targets(s, horizon)) for s in past],
        )


def select_reference(
    data: Sequence[RunForecasts],
    horizons: Sequence[int],
    *,
    start: int = 1,
    stop: int | None = None,
    recent: int | None = None,
) -> dict[int, dict[str, str]]:
    """Per horizon and target, the closed-form baseline with the best mean AP on past origins
    (outcome before ``stop``; with ``recent``, only outcomes in the last ``recent`` snapshots
    before it, since what predicts best drifts during training): the strongest trivial
    predictor a decoder should start from.

    Returns:
        ``{h: {target: baseline name}}`` (:data:`REFERENCE` where no origin qualifies).
    """
    out = {}
    for h in horizons:
        ap: dict[str, dict[str, list[float]]] = {n: {b: [] for b in BASELINES[:3]} for n in TARGETS}
        for rf in data:
            end = len(rf) if stop is None else stop
            for t in rf.origins(h, start, stop):
                if recent is not None and t + h < end - recent:
                    continue
                tg, f = rf.targets(t, h), rf.features(t, h)
                for b in BASELINES[:3]:
                    for name, m in forecast_metrics(baseline_scores(f, b), tg).items():
                        if not math.isnan(m["ap"]):
                            ap[name][b].append(m["ap"])
        out[int(h)] = {
            name: max(
                BASELINES[:3],
                key=lambda b, name=name: (
                    sum(ap[name][b]) / len(ap[name][b]) if ap[name][b] else -1.0,
                    b == REFERENCE,
                ),
            )
            for name in TARGETS
        }
    return out


def _stack_examples(
    data: Sequence[tuple[RunForecasts, Tensor | None, Tensor]],
    horizons: Sequence[int],
    start: int,
    stop: int | None,
    choice: Mapping[int, Mapping[str, str]] | None,
    negatives: float | None,
    seed: int,
) -> dict[str, Tensor] | None:
    """Concatenate every (run, horizon, origin) into one batch for :func:`fit_change_decoder`;
    keep every positive and a seeded random ``negatives`` fraction of the rest."""
    feats, refs, zs, pairs, masks, labels = [], [], [], [], [], []
    gen = torch.Generator().manual_seed(seed)
    offset = 0
    for rf, z, edge_index in data:
        for h in horizons:
            # only origins whose outcome t + h falls before ``stop``
            for t in rf.origins(h, start, stop):
                tg = rf.targets(t, h)
                e = edge_index.shape[1]
                mask = torch.zeros(e, len(TARGETS), dtype=torch.bool)
                lab = torch.zeros(e, len(TARGETS))
                for k, name in enumerate(TARGETS):
                    mask[tg.candidates[name], k] = True
                    lab[tg.candidates[name], k] = tg.labels[name].float()
                if negatives is not None:
                    keep = lab.bool() | (torch.rand(e, len(TARGETS), generator=gen) < negatives)
                    mask = mask & keep
                rows = mask.any(1).nonzero().squeeze(1)
                feats.append(rf.features(t, h)[rows])
                refs.append(rf.reference(t, h, (choice or {}).get(h))[rows])
                masks.append(mask[rows])
                labels.append(lab[rows])
                if z is not None:
                    zs.append(z[t])
                    pairs.append(edge_index[:, rows] + offset)
                    offset += z.shape[1]
    if not feats:
        return None
    return {
        "features": torch.cat(feats),
        "reference": torch.cat(refs),
        "mask": torch.cat(masks),
        "label": torch.cat(labels),
        "z": torch.cat(zs) if zs else None,
        "pairs": torch.cat(pairs, dim=1) if pairs else None,
    }


def fit_change_decoder(
    decoder: torch.nn.Module,
    data: Sequence[tuple[RunForecasts, Tensor | None, Tensor]],
    horizons: Sequence[int],
    *,
    start: int = 1,
    stop: int | None = None,
    epochs: int = 150,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    choice: Mapping[int, Mapping[str, str]] | None = None,
    negatives: float | None = 0.1,
    seed: int = 0,
    validation: float = 0.25,
    check_every: int = 10,
) -> list[float]:
    """Train a :class:`~hyperlapse.nn.change_decoder.ChangeDecoder` on past outcomes.

    Every origin ``t >= start`` of every run and horizon whose outcome ``t + h`` lies before
    ``stop`` is an example; the loss is the binary cross-entropy of each target's logits on that
    target's candidates (:func:`forecast_targets`), averaged over targets. The embeddings are
    inputs (no gradient reaches the encoder). Full batch Adam, deterministic.

    Args:
        decoder: the decoder (trained in place).
        data: per run ``(RunForecasts, z [T, N, d] or None, edge_index [2, E])``.
        horizons: horizons to train on (the decoder reads ``log h`` as a feature).
        choice: reference baseline per horizon and target (:func:`select_reference`; default
            :data:`REFERENCE`).
        negatives: fraction of negative candidates kept (seeded by ``seed``; None: all).
        validation: the latest ``validation`` fraction of the window before ``stop`` is held
            out: examples whose outcome falls there are not trained on but pick the epoch
            (every ``check_every``, the untrained decoder included) with the best mean AP on
            new links and sign flips. So the decoder leaves the baseline only where that helps
            on later, unseen outcomes (training runs drift: early dynamics differ from late).
            0: no hold-out, the last epoch is kept.

    Returns:
        the training loss of every epoch (``decoder.fit_info`` holds the chosen epoch and the
        validation APs).
    """
    stop_all = stop if stop is not None else max(len(rf) for rf, _, _ in data)
    val_len = int(round(validation * stop_all))
    fit_stop = stop_all - val_len if val_len > 0 else stop_all
    val = []
    if val_len > 0:
        for rf, z, edge_index in data:
            for h in horizons:
                val += [
                    (rf, z, edge_index, t, h)
                    for t in rf.origins(h, start, stop_all)
                    if t + h >= fit_stop
                ]
    batch = _stack_examples(data, horizons, start, fit_stop, choice, negatives, seed)
    if batch is None:
        raise ConfigError(
            f"No training origin: every run needs snapshots t >= {start} with t + h < {stop} "
            f"for some horizon in {list(horizons)}."
        )
    dtype = next(decoder.parameters()).dtype
    f = batch["features"].to(dtype)
    ref = batch["reference"].to(dtype)
    mask, label = batch["mask"], batch["label"].to(dtype)
    z = None if batch["z"] is None else batch["z"].to(dtype)
    counts = mask.sum(0).clamp_min(1).to(dtype)
    if hasattr(decoder, "set_feature_scale"):
        decoder.set_feature_scale(f)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    history = []

    def score() -> float:
        aps = []
        for rf, zz, edge_index, t, h in val:
            scores = decoder_scores(decoder, rf, zz, edge_index, t, h, choice)
            scores = {name: scores[name] for name in ("new_link", "sign_flip")}
            m = forecast_metrics(scores, rf.targets(t, h))
            aps += [m[name]["ap"] for name in ("new_link", "sign_flip")]
        aps = [a for a in aps if not math.isnan(a)]
        return sum(aps) / len(aps) if aps else float("nan")

    best = (score(), 0, copy.deepcopy(decoder.state_dict())) if val else None
    checks = [] if best is None else [(0, best[0])]
    with torch.enable_grad():
        for epoch in range(1, epochs + 1):
            opt.zero_grad(set_to_none=True)
            logits = decoder(z, batch["pairs"], f, ref)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, label, reduction="none"
            )
            loss = ((bce * mask).sum(0) / counts).mean()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if best is not None and (epoch % check_every == 0 or epoch == epochs):
                ap = score()
                checks.append((epoch, ap))
                if ap > best[0]:
                    best = (ap, epoch, copy.deepcopy(decoder.state_dict()))
    if best is not None and not math.isnan(best[0]):
        decoder.load_state_dict(best[2])
    decoder.fit_info = {
        "epoch": epochs if best is None else best[1],
        "validation_ap": checks,
        "validation_examples": len(val),
    }
    return history


def decoder_scores(
    decoder: torch.nn.Module,
    rf: RunForecasts,
    z: Tensor | None,
    edge_index: Tensor,
    t: int,
    horizon: int,
    choice: Mapping[int, Mapping[str, str]] | None = None,
) -> dict[str, Tensor]:
    """The decoder's scores at origin ``t`` for every target, over every edge."""
    dtype = next(decoder.parameters()).dtype
    with torch.no_grad():
        logits = decoder(
            None if z is None else z[t].to(dtype),
            edge_index,
            rf.features(t, horizon).to(dtype),
            rf.reference(t, horizon, (choice or {}).get(horizon)).to(dtype),
        )
    return {name: logits[:, k] for k, name in enumerate(TARGETS)}
