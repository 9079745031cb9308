"""Forecast a sweep early: rank runs in progress from the first part of their trajectories.

A sweep is a set of runs of one task with a common planned length. At a cut fraction ``at`` of
the planned steps, every run is described by what it has recorded up to the cut:

* the **curve** (:func:`curve_features`): the sweep metric (e.g. validation accuracy) and the
  logged losses, resampled to a few points up to the cut, their last/best values and recent
  slopes, and a learning-curve extrapolation of the metric to the planned end
  (:func:`extrapolate_curve`, Domhan-style parametric families);
* the **trajectory** (:func:`trajectory_features`): per-layer weight norms, distances moved
  from the initialisation and update ratios at several snapshots up to the cut, the direction
  of consecutive updates, and the per-layer weight statistics at the cut (T > 1, invariant to
  permuting hidden neurons).

A gradient-boosted regressor maps them to the final metric. :func:`forecast_sweep` fits it on
the finished runs of the sweep and forecasts the runs still in progress, with an interval
(split-conformal from out-of-fold residuals) and their rank.

What a run must carry (stores written by :class:`~hyperlapse.TrajectoryRecorder`):

* a logged metric to forecast, e.g. ``rec.log(val_acc=...)`` at the snapshots; its name comes
  from ``metric=``, else the store attrs ``sweep_metric``, else the only logged metric whose
  name starts with ``val``;
* the planned length: ``planned_steps=``, else attrs ``planned_steps``, else a logged scalar
  ``planned_steps`` (``rec.log(val_acc=acc, planned_steps=400)``: works while the run is
  still being written);
* optionally ``final_metric`` in the attrs of a finished run (e.g. its test score), which is
  then the target instead of the last value of the metric.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .features import WeightStats

__all__ = [
    "CUTS",
    "MIN_FINISHED",
    "SweepForecast",
    "SweepForecaster",
    "TooFewFinishedRunsError",
    "curve_features",
    "cut_length",
    "extrapolate_curve",
    "forecast_sweep",
    "sweep_info",
    "trajectory_features",
]

#: The cut fractions the benchmark evaluates.
CUTS = (0.1, 0.2, 0.5)
#: Finished runs needed to fit a forecaster (fewer give no usable out-of-fold residuals).
MIN_FINISHED = 10


class TooFewFinishedRunsError(ConfigError):
    """Not enough finished runs to fit a sweep forecaster."""


# -- reading a sweep run ------------------------------------------------------------------------
def _attr(run: Any, name: str) -> Any:
    attrs = getattr(run, "attrs", None) or {}
    value = attrs.get(name)
    if value is None and isinstance(attrs.get("sweep"), dict):
        value = attrs["sweep"].get(name)
    return value


def _where(run: Any) -> str:
    return str(getattr(run, "location", type(run).__name__))


def sweep_info(run: Any, *, metric: str | None = None, planned_steps: int | None = None,
               goal: str | None = None) -> dict[str, Any]:
    """The sweep metric's name, the planned steps, the goal and whether ``run`` is finished.

    Returns:
        ``{"metric", "planned_steps", "goal", "step", "finished", "final"}``: ``step`` is the
        last recorded step; ``final`` the target of a finished run (attrs ``final_metric``, else
        the metric's last value) and None for a run in progress.

    Raises:
        ConfigError: the run names no metric or planned length (the message says how to add it).
    """
    metrics = run.metrics
    name = metric or _attr(run, "sweep_metric")
    if name is None:
        vals = [m for m in sorted(metrics) if m.startswith("val")]
        if len(vals) != 1:
            raise ConfigError(
                f"Expected the metric to forecast: pass metric=NAME (--metric), store attrs "
                f"'sweep_metric', or log exactly one metric starting with 'val'; but run "
                f"{_where(run)} logs {sorted(metrics)}."
            )
        name = vals[0]
    if name not in metrics:
        raise ConfigError(
            f"Expected run {_where(run)} to log the metric {name!r} (rec.log({name}=...)), "
            f"but it logs {sorted(metrics)}."
        )
    planned = planned_steps or _attr(run, "planned_steps")
    if planned is None and "planned_steps" in metrics:
        logged = np.asarray(metrics["planned_steps"], dtype=np.float64)
        logged = logged[np.isfinite(logged)]
        planned = int(logged[-1]) if len(logged) else None
    if planned is None or int(planned) < 1:
        raise ConfigError(
            f"Expected the planned length of run {_where(run)}: pass planned_steps=N "
            f"(--planned-steps), store attrs 'planned_steps', or log it "
            f"(rec.log(planned_steps=N)); got {planned!r}."
        )
    goal = goal or _attr(run, "sweep_goal") or ("min" if "loss" in name else "max")
    if goal not in ("max", "min"):
        raise ConfigError(f"Expected goal 'max' or 'min', but got {goal!r}.")
    steps = np.asarray(run.steps)
    step = int(steps[-1]) if len(steps) else -1
    finished = step >= int(planned)
    final = None
    if finished:
        final = _attr(run, "final_metric")
        if final is None:
            values = np.asarray(metrics[name], dtype=np.float64)
            final = float(values[-1])
    return {"metric": name, "planned_steps": int(planned), "goal": goal, "step": step,
            "finished": finished, "final": None if final is None else float(final)}


def cut_length(run: Any, at: float, planned_steps: int) -> int:
    """How many leading snapshots of ``run`` lie at or before ``at * planned_steps``."""
    return int(np.searchsorted(np.asarray(run.steps), at * planned_steps + 1e-9, side="right"))


def _resample(steps: np.ndarray, values: np.ndarray, end: float, k: int) -> np.ndarray:
    return np.interp(np.linspace(0.0, end, k), steps, values)


# -- learning-curve extrapolation ---------------------------------------------------------------
def _pow3(x: np.ndarray, c: float, a: float, alpha: float) -> np.ndarray:
    return c - a * np.power(x, -alpha)


def _exp3(x: np.ndarray, c: float, a: float, b: float) -> np.ndarray:
    return c - a * np.exp(-b * x)


def _log_power(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a / (1.0 + np.power(x / np.exp(b), -c))


_FAMILIES = {
    "pow3": (_pow3, lambda y: [y[-1], y[-1] - y[0], 0.5],
             ([-10, -10, 0.0], [10, 10, 5.0])),
    "exp3": (_exp3, lambda y: [y[-1], y[-1] - y[0], 3.0],
             ([-10, -10, 0.0], [10, 10, 100.0])),
    "log-power": (_log_power, lambda y: [max(y[-1], 1e-3), -2.0, 1.0],
                  ([-10, -10, 0.0], [10, 10, 10.0])),
}


def extrapolate_curve(steps: np.ndarray, values: np.ndarray, planned_steps: int, *,
                      goal: str = "max") -> float:
    """Extrapolate a metric curve to ``planned_steps`` (Domhan et al. 2015, simplified).

    Fits the parametric families pow3 ``c - a x^-alpha``, exp3 ``c - a e^(-b x)`` and
    log-power ``a / (1 + (x / e^b)^-c)`` (``x`` = step / planned steps) to the points after
    step 0 by least squares and averages the fits that converge, each clipped to the observed
    range widened by half of it (never above 1 for a metric bounded by 1, such as accuracy or
    R^2). Fallback (fewer than 3 points, no fit): the last value.

    Shapes:
        steps, values: ``(n,)``; returns a float.
    """
    from scipy.optimize import curve_fit

    steps = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(y) & (steps > 0)
    x, y = steps[ok] / float(planned_steps), y[ok]
    if len(y) == 0:
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        return float(finite[-1]) if len(finite) else float("nan")
    last = float(y[-1])
    if len(y) < 3 or np.ptp(y) < 1e-9:
        return last
    sign = 1.0 if goal == "max" else -1.0
    ys = sign * y
    span = float(np.ptp(ys))
    lo, hi = float(ys.min()) - 0.5 * span, float(ys.max()) + 0.5 * span
    if goal == "max" and y.max() <= 1.0:
        hi = min(hi, 1.0)
    preds = []
    for fn, p0, bounds in _FAMILIES.values():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with np.errstate(all="ignore"):
                    start = np.clip(p0(ys), np.asarray(bounds[0]) + 1e-6,
                                    np.asarray(bounds[1]) - 1e-6)
                    params, _ = curve_fit(fn, x, ys, p0=start, bounds=bounds, maxfev=400)
                    pred = float(fn(np.asarray([1.0]), *params)[0])
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue
        if math.isfinite(pred):
            preds.append(min(max(pred, lo), hi))
    if not preds:
        return last
    return sign * float(np.mean(preds))


# -- features -----------------------------------------------------------------------------------
def _loss_names(metrics: dict[str, Any], metric: str) -> list[str]:
    return [m for m in sorted(metrics) if "loss" in m and m != metric][:2]


def curve_features(run: Any, n: int, planned_steps: int, metric: str, *, goal: str = "max",
                   k: int = 5, losses: Sequence[str] | None = None) -> np.ndarray:
    """The curve up to the cut (the first ``n`` snapshots) as one row.

    Per series (the metric, then up to two logged losses, as ``log1p``): ``k`` values resampled
    evenly in steps up to the cut, the last and best values, the change over the last quarter of
    the cut; then the metric extrapolated to the planned end (:func:`extrapolate_curve`).
    A metric to minimise is negated first (higher is better throughout).
    """
    metrics = run.metrics
    steps = np.asarray(run.steps[:n], dtype=np.float64)
    end = float(steps[-1])
    names = [metric] + list(losses if losses is not None else _loss_names(metrics, metric))
    missing = [m for m in names if m not in metrics]
    if missing:
        raise ConfigError(
            f"Expected run {_where(run)} to log {names} like the runs the forecaster was fitted "
            f"on, but it lacks {missing} (it logs {sorted(metrics)})."
        )
    row: list[float] = []
    for j, name in enumerate(names):
        v = np.asarray(metrics[name][:n], dtype=np.float64)
        if j == 0:
            v = v if goal == "max" else -v
            fill = np.nanmin(v) if np.isfinite(v).any() else 0.0
            v = np.where(np.isfinite(v), v, fill)
        else:
            v = np.log1p(np.clip(np.nan_to_num(v, nan=1e6, posinf=1e6), 0.0, 1e6))
        r = _resample(steps, v, end, k)
        quarter = float(np.interp(0.75 * end, steps, v))
        best = v.max() if j == 0 else v.min()
        row += list(r) + [float(v[-1]), float(best), float(v[-1] - quarter)]
    extra = extrapolate_curve(steps, np.asarray(metrics[metric][:n]), planned_steps, goal=goal)
    row.append((extra if goal == "max" else -extra) if math.isfinite(extra) else row[k])
    return np.asarray(row, dtype=np.float64)


def _slots(arch: dict[str, Any]) -> list[list[dict[str, Any]]]:
    layers = arch["layers"]
    return [layers[:1], layers[1:-1], layers[-1:] if len(layers) > 1 else []]


def trajectory_features(run: Any, n: int, *, k: int = 4) -> np.ndarray:
    """The weight trajectory up to the cut (the first ``n`` snapshots, T > 1) as one row.

    For the first layer, the middle layers pooled and the last layer: log of the weight norm at
    ``k`` snapshots up to the cut, the distance moved from the initialisation relative to its
    norm at the same snapshots, the update ratio ``|W_t - W_{t-1}| / |W_t|`` between the last
    two snapshots and halfway, and the cosine of the last two updates (momentum versus
    oscillation); then the per-layer weight statistics at the cut
    (:class:`~hyperlapse.predict.features.WeightStats`: mean, spread, quantiles, depth, width,
    size) and whether any weight is non-finite. Invariant to permuting hidden neurons.
    """
    arch = run.architecture
    idx = np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))
    pick = np.round(np.linspace(0, n - 1, k)).astype(np.int64)
    row: list[float] = []
    nonfinite = False
    for slot in _slots(arch):
        names = [l["weight"] for l in slot]
        if not names:
            row += [0.0] * (2 * k + 4)
            continue
        need = sorted(set(idx.tolist()) | {0, max(n - 2, 0), max(n - 3, 0), n // 2,
                                           max(n // 2 - 1, 0), n - 1})
        w = {t: np.concatenate([np.asarray(run.weights(m)[t], dtype=np.float64).ravel()
                                for m in names]) for t in need}
        if not all(np.isfinite(v).all() for v in w.values()):
            nonfinite = True
            w = {t: np.nan_to_num(v, nan=0.0, posinf=1e6, neginf=-1e6) for t, v in w.items()}
        w0 = np.linalg.norm(w[0]) + 1e-12

        def norm(v: np.ndarray) -> float:
            return float(np.linalg.norm(v))

        row += [math.log(norm(w[t]) + 1e-12) for t in pick]
        row += [math.log10(norm(w[t] - w[0]) / w0 + 1e-8) for t in pick]
        last, prev, prev2 = n - 1, max(n - 2, 0), max(n - 3, 0)
        half, half_prev = n // 2, max(n // 2 - 1, 0)
        for a, b in ((last, prev), (half, half_prev)):
            row.append(math.log10(norm(w[a] - w[b]) / (norm(w[a]) + 1e-12) + 1e-8))
        u1, u2 = w[last] - w[prev], w[prev] - w[prev2]
        row.append(float(u1 @ u2 / (norm(u1) * norm(u2) + 1e-12)))
        row.append(math.log10(norm(u1) / (norm(u2) + 1e-12) + 1e-8))
    with np.errstate(all="ignore"):
        stats = WeightStats()([run], [np.asarray([n - 1])])[0]
    stats = np.nan_to_num(stats, nan=0.0, posinf=1e6, neginf=-1e6)
    return np.concatenate([np.asarray(row), np.clip(stats, -1e6, 1e6), [float(nonfinite)]])


# -- models -------------------------------------------------------------------------------------
def make_regressor(n_rows: int, seed: int = 0, max_iter: int = 150) -> Any:
    """The gradient-boosted regressor every learned predictor uses (small-sample settings)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        max_iter=max_iter, learning_rate=0.05, max_depth=4,
        min_samples_leaf=max(3, min(20, n_rows // 8)), l2_regularization=1.0,
        random_state=seed)


def _one_thread() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _conformal_width(X: np.ndarray, y: np.ndarray, coverage: float, seed: int) -> float:
    """Half-width of a ``coverage`` interval from 5-fold out-of-fold absolute residuals."""
    n = len(y)
    folds = min(5, n)
    order = np.random.default_rng(seed).permutation(n)
    resid = np.empty(n)
    for f in range(folds):
        te = order[f::folds]
        tr = np.setdiff1d(order, te)
        model = make_regressor(len(tr), seed).fit(X[tr], y[tr])
        resid[te] = np.abs(model.predict(X[te]) - y[te])
    q = min(1.0, math.ceil((n + 1) * coverage) / n)
    return float(np.quantile(resid, q))


@dataclass
class SweepForecaster:
    """A fitted forecaster: features at cut ``at`` -> final metric, with an interval.

    Attributes:
        at: the cut fraction of the planned steps it reads.
        metric, goal: the forecast metric and whether higher or lower is better.
        features: ``"hyperlapse"`` (trajectory + curve) or ``"curve"`` (curve only).
        losses: the loss series read beside the metric.
        width: half-width of the interval (split-conformal, out-of-fold residuals).
        coverage: the interval's nominal coverage.
        n_fit: finished runs it was fitted on.
    """

    at: float
    metric: str
    goal: str
    features: str
    losses: list[str]
    model: Any = None
    width: float = float("nan")
    coverage: float = 0.8
    n_fit: int = 0
    k: int = 5
    #: whether every finished run's target was at most 1 (accuracy, R^2): intervals stop at 1
    bounded: bool = False

    def rows(self, runs: Sequence[Any], planned: Sequence[int]) -> np.ndarray:
        """Feature rows of ``runs`` at the cut (each with its own planned steps)."""
        out = []
        for run, p in zip(runs, planned, strict=True):
            n = cut_length(run, self.at, p)
            if n < 2:
                raise ConfigError(
                    f"Expected run {_where(run)} to have at least two snapshots up to the cut "
                    f"(step {self.at * p:g}), but it has {n}. Record more often (every=...)."
                )
            parts = [curve_features(run, n, p, self.metric, goal=self.goal, k=self.k,
                                    losses=self.losses)]
            if self.features == "hyperlapse":
                parts.append(trajectory_features(run, n))
            out.append(np.concatenate(parts))
        return np.stack(out)

    def predict(self, runs: Sequence[Any], planned: Sequence[int]) -> np.ndarray:
        """Predicted final metric of each run (in the metric's own units)."""
        pred = self.model.predict(self.rows(runs, planned))
        return pred if self.goal == "max" else -pred

    def save(self, path: str | os.PathLike) -> None:
        """Pickle the forecaster (load it only from a source you trust, like any pickle)."""
        with open(path, "wb") as fh:
            pickle.dump(self, fh)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SweepForecaster:
        """A forecaster saved by :meth:`save`."""
        try:
            with open(path, "rb") as fh:
                obj = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise ConfigError(
                f"Expected a saved sweep forecaster at '{path}', but it cannot be read ({exc})."
            ) from exc
        if not isinstance(obj, cls):
            raise ConfigError(
                f"Expected a saved sweep forecaster at '{path}', but it holds a "
                f"{type(obj).__name__}."
            )
        return obj


@dataclass
class SweepForecast:
    """What :func:`forecast_sweep` returns.

    Attributes:
        rows: one dict per run in progress past the cut, best forecast first: ``run``
            (location), ``step``, ``predicted``, ``low``, ``high``, ``rank`` (1 = best).
        waiting: locations of runs in progress that have not reached the cut yet.
        finished: how many finished runs the forecaster was fitted on (0 for a loaded one).
        metric, goal, at, planned_steps: what was forecast, from where.
        forecaster: the fitted :class:`SweepForecaster` (``.save(path)`` to reuse it).
    """

    rows: list[dict[str, Any]]
    waiting: list[str]
    finished: int
    metric: str
    goal: str
    at: float
    forecaster: SweepForecaster

    def table(self) -> str:
        """The forecast as a plain-text table."""
        lines = [f"forecast of final {self.metric} ({self.goal}) from the first "
                 f"{self.at:.0%} of each run; fitted on {self.finished or 'a saved set of'} "
                 f"finished runs; {self.forecaster.coverage:.0%} interval",
                 f"{'rank':>4}  {'predicted':>9}  {'interval':>19}  {'step':>7}  run"]
        for r in self.rows:
            lines.append(f"{r['rank']:>4}  {r['predicted']:>9.4f}  "
                         f"[{r['low']:>8.4f}, {r['high']:>8.4f}]  {r['step']:>7}  {r['run']}")
        if self.waiting:
            lines.append(f"{len(self.waiting)} run(s) not yet at the cut: "
                         + ", ".join(self.waiting[:5]) + (" ..." if len(self.waiting) > 5 else ""))
        return "\n".join(lines)


def _open(runs: Any) -> list[Any]:
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    out: list[Any] = []
    for r in runs:
        if isinstance(r, (str, os.PathLike)):
            from ..store.reader import open_trajectories
            from ..zoo.reader import MANIFEST, open_zoo

            if os.path.isfile(os.path.join(r, MANIFEST)):
                out += list(open_zoo(r))
            else:
                out += open_trajectories(r)
        else:
            out.append(r)
    return out


def forecast_sweep(
    runs: Any,
    at: float = 0.2,
    *,
    metric: str | None = None,
    planned_steps: int | None = None,
    goal: str | None = None,
    features: str = "hyperlapse",
    predictor: SweepForecaster | str | os.PathLike | None = None,
    min_finished: int = MIN_FINISHED,
    coverage: float = 0.8,
    seed: int = 0,
) -> SweepForecast:
    """Forecast the final metric of the runs of a sweep that are still in progress.

    Fits a gradient-boosted forecaster on the finished runs (their features at the cut, their
    final metric as target; or uses ``predictor``), then forecasts every run in progress that
    has passed the cut from its first ``at`` of the planned steps, with an interval and a rank.

    Args:
        runs: stores, globs, zoo folders or opened trajectories of one sweep.
        at: the cut, a fraction of the planned steps (0.2: the first fifth).
        metric: the logged metric to forecast (default: from the stores, see the module doc).
        planned_steps: the planned length of every run (default: from the stores).
        goal: ``"max"`` or ``"min"`` (default: attrs ``sweep_goal``; ``"min"`` for a loss).
        features: ``"hyperlapse"`` (weight trajectory + curve) or ``"curve"`` (curve only).
        predictor: a :class:`SweepForecaster` or the path of a saved one (then nothing is fitted
            and no finished runs are needed).
        min_finished: refuse to fit on fewer finished runs than this.
        coverage: nominal coverage of the intervals.
        seed: seed of the model.

    Returns:
        A :class:`SweepForecast` (``.table()`` prints it).

    Raises:
        TooFewFinishedRunsError: fewer than ``min_finished`` finished runs and no predictor.
        ConfigError: bad ``at``/``features``, or runs that name no metric or planned length.

    Example:
        >>> forecast = forecast_sweep("sweep/*.zarr", at=0.2)  # doctest: +SKIP
        >>> print(forecast.table())  # doctest: +SKIP
    """
    if not isinstance(at, (int, float)) or not 0 < float(at) < 1:
        raise ConfigError(f"Expected at in (0, 1) (a fraction of the planned steps), got {at!r}.")
    if features not in ("hyperlapse", "curve"):
        raise ConfigError(f"Expected features 'hyperlapse' or 'curve', but got {features!r}.")
    if not 0 < coverage < 1:
        raise ConfigError(f"Expected coverage in (0, 1), but got {coverage!r}.")
    runs = _open(runs)
    if not runs:
        raise ConfigError("Expected runs of a sweep to forecast, but got none.")
    if isinstance(predictor, (str, os.PathLike)):
        predictor = SweepForecaster.load(predictor)
    if predictor is not None:
        metric = metric or predictor.metric
        goal = goal or predictor.goal
        at = predictor.at
    infos = [sweep_info(r, metric=metric, planned_steps=planned_steps, goal=goal) for r in runs]
    metric, goal = infos[0]["metric"], infos[0]["goal"]
    done = [i for i, inf in enumerate(infos) if inf["finished"]]
    live = [i for i, inf in enumerate(infos) if not inf["finished"]]
    ready = [i for i in live if infos[i]["step"] >= at * infos[i]["planned_steps"]]
    waiting = [_where(runs[i]) for i in live if i not in ready]
    fitted_here = predictor is None
    if predictor is None:
        if len(done) < min_finished:
            raise TooFewFinishedRunsError(
                f"Expected at least {min_finished} finished runs (runs that reached their planned "
                f"steps) to fit a forecaster, but {len(done)} of the {len(runs)} runs are "
                f"finished. Wait until {min_finished - len(done)} more finish, or pass a saved "
                f"forecaster (predictor=PATH, --predictor PATH)."
            )
        losses = _loss_names(runs[done[0]].metrics, metric)
        predictor = SweepForecaster(at=float(at), metric=metric, goal=goal, features=features,
                                    losses=losses, coverage=coverage, n_fit=len(done))
        X = predictor.rows([runs[i] for i in done], [infos[i]["planned_steps"] for i in done])
        y = np.asarray([infos[i]["final"] for i in done], dtype=np.float64)
        if not np.isfinite(y).any():
            raise ConfigError(
                f"Expected finite final values of {metric!r} among the finished runs, but all "
                f"{len(y)} are NaN or infinite."
            )
        # a finished run that diverged (NaN at the end) is as bad as the worst finished one
        y = np.where(np.isfinite(y), y, np.nanmin(y) if goal == "max" else np.nanmax(y))
        predictor.bounded = bool(np.all(y <= 1.0))
        y = y if goal == "max" else -y
        # one thread: these fits are small, and OpenMP threads spinning on a busy machine made
        # them 10x slower (measured on the shared 2-core machine)
        with _one_thread():
            predictor.model = make_regressor(len(y), seed).fit(X, y)
            predictor.width = _conformal_width(X, y, coverage, seed)
    rows: list[dict[str, Any]] = []
    # a metric bounded by 1 (accuracy, R^2) keeps its interval below 1
    cap = 1.0 if goal == "max" and predictor.bounded else math.inf
    if ready:
        with _one_thread():
            pred = predictor.predict([runs[i] for i in ready],
                                     [infos[i]["planned_steps"] for i in ready])
        order = np.argsort(-pred if goal == "max" else pred, kind="stable")
        for rank, j in enumerate(order, start=1):
            i = ready[j]
            rows.append({"run": _where(runs[i]), "step": infos[i]["step"],
                         "predicted": float(pred[j]), "low": float(pred[j] - predictor.width),
                         "high": float(min(pred[j] + predictor.width, cap)), "rank": rank})
    return SweepForecast(rows=rows, waiting=waiting, finished=len(done) if fitted_here else 0,
                         metric=metric, goal=goal, at=float(at), forecaster=predictor)
