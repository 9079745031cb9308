"""Learn from a collection of runs: :func:`fit_predictor` -> :class:`Predictor`.

A predictor is a feature extractor (:mod:`hyperlapse.predict.features`), a choice of
snapshots, and a model: a scikit-learn model (gradient-boosted trees by default) on fixed
features, or, for a trainable extractor (``features="encoder"``, the temporal encoder as a
metanetwork), the head it was trained with end to end (``model="head"``, its default).
scikit-learn is an optional dependency (``pip install -e '.[predict]' in the hyperlapse clone``).
"""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, EmptyStoreError, MissingDependencyError, OutputError
from ..outputs import check_output_file
from .features import (
    FeatureExtractor,
    check_snapshots,
    get_features,
    selected_length,
    snapshot_indices,
)

__all__ = ["Predictor", "fit_predictor", "cross_validate", "resolve_targets", "TASKS", "MODELS"]

TASKS = ("classify", "regress", "rank")
MODELS = ("gbt", "linear", "mlp", "head")
_FORMAT = "hyperlapse.predictor"
_VERSION = 2
#: At most this many snapshots per run in a feature row (runs are resampled to a common k).
MAX_SNAPSHOTS = 16


def _sklearn() -> Any:
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "Learning from runs (hyperlapse.fit_predictor, 'hyperlapse predict') needs "
            "scikit-learn, which is not installed. Install it with "
            "pip install -e '.[predict]' in the hyperlapse clone and try again."
        ) from exc
    return sklearn


def _make_model(task: str, model: str, seed: int, n_outputs: int, n_runs: int) -> Any:
    _sklearn()
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = task == "classify"
    if model == "gbt":
        leaf = min(20, max(2, n_runs // 20))  # sklearn's default 20 leaves tiny sets one split
        if classify:
            return HistGradientBoostingClassifier(
                max_iter=150, min_samples_leaf=leaf, random_state=seed)
        est = HistGradientBoostingRegressor(max_iter=200, min_samples_leaf=leaf,
                                            random_state=seed)
        return MultiOutputRegressor(est) if n_outputs > 1 else est
    if model == "linear":
        est = LogisticRegression(max_iter=2000, C=1.0) if classify else Ridge(alpha=1.0)
    else:
        cls = MLPClassifier if classify else MLPRegressor
        est = cls(hidden_layer_sizes=(128,), max_iter=600, early_stopping=True,
                  random_state=seed)
    return make_pipeline(SimpleImputer(), StandardScaler(), est)


def resolve_targets(trajectories: Sequence[Any], target: str) -> list[Any]:
    """Targets named by ``"attr:NAME"`` (a store/run attribute, e.g. a zoo label) or
    ``"metric:NAME"`` (the last finite value of a logged metric) for each trajectory.

    Raises:
        ConfigError: a bad spec, or a trajectory without that attribute/metric.
    """
    kind, _, name = target.partition(":")
    if kind not in ("attr", "metric") or not name:
        raise ConfigError(
            f"Expected a target like 'attr:NAME' (a store attribute or zoo label) or "
            f"'metric:NAME' (the last value of a logged metric), but got {target!r}."
        )
    out = []
    for i, traj in enumerate(trajectories):
        where = getattr(traj, "location", f"trajectory {i}")
        if kind == "attr":
            attrs = getattr(traj, "attrs", {}) or {}
            if name not in attrs:
                raise ConfigError(
                    f"Expected attribute '{name}' in every run, but '{where}' has none (it has "
                    f"{sorted(attrs)[:12]}). Set it on each store (zarr group attrs) or pick "
                    f"another --target."
                )
            out.append(attrs[name])
        else:
            values = np.asarray(traj.metrics.get(name, []), dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size == 0:
                raise ConfigError(
                    f"Expected a logged metric '{name}' in every run, but '{where}' has no "
                    f"finite value of it (metrics: {sorted(traj.metrics)[:12]})."
                )
            out.append(float(values[-1]))
    return out


def _check_targets(targets: Any, n: int, task: str) -> tuple[np.ndarray, list[str] | None]:
    values = list(targets) if not isinstance(targets, np.ndarray) else targets
    if len(values) != n:
        raise ConfigError(
            f"Expected one target per trajectory ({n}), but got {len(values)} targets."
        )
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and
                                                               math.isnan(v))]
    if missing:
        raise ConfigError(
            f"Expected a target for every run, but runs {missing[:10]} have none (None/NaN). "
            f"Drop those runs or fill in their targets."
        )
    if task == "classify":
        y = np.asarray(values)
        if y.ndim != 1:
            raise ConfigError(f"Expected one class label per run, got targets of shape {y.shape}.")
        return y, None
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
        raise ConfigError(
            f"Expected numeric targets for task '{task}', but run {bad} has "
            f"{values[bad] if bad is not None else '?'!r}. Use task='classify' for labels, or "
            f"numeric targets."
        ) from exc
    if not np.isfinite(y).all():
        bad = np.argwhere(~np.isfinite(y))[:5, 0].tolist()
        raise ConfigError(f"Expected finite targets, but runs {bad} have NaN or inf.")
    return y, None


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class Predictor:
    """Maps a trajectory (or its first part, or its last snapshot) to a label.

    Use :func:`fit_predictor` to make one; :meth:`predict` applies it, :meth:`score` measures
    it (accuracy, mean squared error per target, or Kendall tau), :meth:`save`/:meth:`load`.
    """

    def __init__(
        self,
        task: str,
        features: FeatureExtractor,
        snapshots: str | float,
        k: int,
        model: Any,
        *,
        model_name: str,
        n_outputs: int = 1,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.task, self.features, self.snapshots, self.k = task, features, snapshots, k
        self.model, self.model_name, self.n_outputs = model, model_name, n_outputs
        self.info = dict(info or {})

    def transform(self, trajectories: Sequence[Any]) -> np.ndarray:
        """The feature rows of ``trajectories`` (``[n, F]``)."""
        trajectories = _as_list(trajectories)
        return self.features(trajectories, self.indices(trajectories))

    def indices(self, trajectories: Sequence[Any]) -> list[np.ndarray]:
        """The selected snapshots of each trajectory (``k`` each)."""
        indices = []
        for i, traj in enumerate(trajectories):
            if len(traj) == 0:
                raise EmptyStoreError(
                    f"Expected runs with at least one committed snapshot, but run {i} "
                    f"({getattr(traj, 'location', '?')}) has none."
                )
            indices.append(snapshot_indices(len(traj), self.snapshots, self.k))
        return indices

    def predict(self, trajectories: Sequence[Any]) -> np.ndarray:
        """Predicted labels (classify), values (regress) or scores, higher = better (rank)."""
        return self.model.predict(self.transform(trajectories))

    def score(self, trajectories: Sequence[Any], targets: Any) -> Any:
        """Accuracy (classify), MSE per target (regress) or Kendall tau (rank)."""
        y, _ = _check_targets(targets, len(_as_list(trajectories)), self.task)
        return _score(self.task, y, self.predict(trajectories))

    def save(self, path: str | os.PathLike) -> None:
        """Write the predictor to ``path`` (a ``torch.save`` file; the scikit-learn model is
        pickled inside it: load only files you trust). Its folder is created if needed.

        Raises:
            ConfigError: ``path`` is not a str or os.PathLike (e.g. bytes).
            OutputError: ``path`` cannot be written (check it before training with
                :func:`hyperlapse.outputs.check_output_file`, as ``predict fit`` does).
        """
        path = check_output_file(path, kind="the predictor file")
        blob = {
            "format": _FORMAT,
            "version": _VERSION,
            "task": self.task,
            "features": {"name": self.features.name, "config": self.features.config(),
                         "state": self.features.state()},
            "snapshots": self.snapshots,
            "k": self.k,
            "model_name": self.model_name,
            "n_outputs": self.n_outputs,
            "info": self.info,
            "model": torch.frombuffer(bytearray(pickle.dumps(self.model)), dtype=torch.uint8),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(blob, path)
        except OSError as exc:  # e.g. the disk filled up while writing
            raise OutputError(
                f"Expected to write the predictor to '{path}', but writing failed: {exc}. Free "
                f"space or choose another path."
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictor:
        """Read a predictor written by :meth:`save` (only from a source you trust).

        Raises:
            ConfigError: the file is not a saved predictor.
        """
        _sklearn()
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            raise ConfigError(
                f"Expected a predictor saved by Predictor.save at '{path}', but it cannot be "
                f"read ({type(exc).__name__}: {exc})."
            ) from exc
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ConfigError(
                f"Expected a predictor saved by Predictor.save (format '{_FORMAT}') at '{path}', "
                f"but the file holds something else."
            )
        model = pickle.load(io.BytesIO(blob["model"].numpy().tobytes()))  # noqa: S301
        features = get_features(blob["features"]["name"], **blob["features"]["config"])
        features.load_state(blob["features"].get("state") or {})
        return cls(blob["task"], features, blob["snapshots"], int(blob["k"]), model,
                   model_name=blob["model_name"], n_outputs=int(blob["n_outputs"]),
                   info=blob["info"])

    def __repr__(self) -> str:
        return (f"Predictor(task={self.task!r}, features={self.features.name!r}, "
                f"snapshots={self.snapshots!r}, k={self.k}, model={self.model_name!r})")


def _as_list(trajectories: Any) -> list[Any]:
    if isinstance(trajectories, (str, os.PathLike)):
        raise ConfigError(
            "Expected a sequence of trajectories (open them with hyperlapse.open_trajectories "
            "or hyperlapse.zoo.open_zoo), but got a path."
        )
    out = list(trajectories)
    if not out:
        raise ConfigError("Expected at least one trajectory, but got none.")
    return out


def _score(task: str, y: np.ndarray, pred: np.ndarray) -> Any:
    if task == "classify":
        return float(np.mean(pred == y))
    if task == "regress":
        err = (np.asarray(pred, dtype=np.float64).reshape(len(y), -1) - y.reshape(len(y), -1))
        mse = (err**2).mean(0)
        return float(mse[0]) if mse.size == 1 else mse.tolist()
    from scipy.stats import kendalltau

    return float(kendalltau(y, pred).statistic)


def fit_predictor(
    trajectories: Sequence[Any],
    targets: Any,
    task: str = "classify",
    *,
    snapshots: str | float = "all",
    features: str | FeatureExtractor = "stats",
    model: str | None = None,
    k: int | None = None,
    seed: int = 0,
    feature_options: dict[str, Any] | None = None,
) -> Predictor:
    """Train a model that maps a run's trajectory to a label.

    Args:
        trajectories: runs (``hyperlapse.open_trajectories(...)``, a zoo, ...).
        targets: one label per run (class labels, numbers, or ``[n, m]`` numbers to regress),
            or ``"attr:NAME"`` / ``"metric:NAME"`` to read them from the runs.
        task: ``"classify"``, ``"regress"`` or ``"rank"`` (regression scored by Kendall tau:
            order a sweep by predicted final accuracy).
        snapshots: ``"last"`` (T = 1), ``"all"``, or a fraction in (0, 1]: the first part of
            each run (0.2 = the first 20 % of its snapshots).
        features: ``"stats"`` (per-layer weight statistics per snapshot, mixed architectures
            allowed), ``"loss-curve"`` (logged scalars only), ``"flat"`` (raw weights),
            ``"probe-outputs"`` (the network's outputs on fixed probe inputs:
            :class:`~hyperlapse.predict.features.ProbeOutputs`), ``"encoder"`` (the temporal
            encoder + invariant readout + head, trained end to end on the task, with
            ``feature_options={"probes": P}`` reading every neuron's values on ``P`` probe
            inputs: :class:`~hyperlapse.predict.encoder.EncoderFeatures`), or a
            :class:`~hyperlapse.predict.features.FeatureExtractor`.
        model: ``"gbt"`` (histogram gradient-boosted trees; the default for fixed features),
            ``"linear"`` (logistic/ridge regression on standardised features), ``"mlp"``, or
            ``"head"`` (the trainable extractor's own head; its default).
        k: snapshots per run in a feature row (default: the shortest selection in the
            training set, at most 16, or the extractor's ``default_k``); runs are resampled
            to ``k`` evenly spaced snapshots.
        seed: seed of the model (and of a trainable extractor's initialisation and batches).
        feature_options: keyword arguments of the extractor named by ``features``, e.g.
            ``{"d": 16, "manifold": "euclidean", "epochs": 20}`` for ``"encoder"``.

    Returns:
        A fitted :class:`Predictor`.

    Raises:
        ConfigError: bad task/model/snapshots, missing or non-numeric targets.
        ArchitectureError: weight features on runs that recorded no MLP (or, for ``"flat"``,
            runs of different architectures: the message names both).
        MissingDependencyError: scikit-learn is not installed.

    Example:
        >>> import numpy as np
        >>> class Run:  # anything shaped like a Trajectory works
        ...     def __init__(self, scale):
        ...         self.metrics = {"loss": np.linspace(1, 0, 10) * scale}
        ...     def __len__(self):
        ...         return 10
        >>> runs = [Run(s) for s in np.linspace(0.5, 2, 12)]
        >>> p = fit_predictor(runs, [r.metrics["loss"][0] for r in runs], "rank",
        ...                   features="loss-curve", model="linear", snapshots=0.2)
        >>> round(p.score(runs, [r.metrics["loss"][0] for r in runs]), 3)
        1.0
    """
    if task not in TASKS:
        raise ConfigError(f"Expected task to be one of {TASKS}, but got {task!r}.")
    extractor = get_features(features, **(feature_options or {}))
    if extractor.trainable:  # each predictor owns its trained extractor
        extractor = copy.deepcopy(extractor)
    if model is None:
        model = "head" if extractor.trainable else "gbt"
    if model not in MODELS:
        raise ConfigError(f"Expected model to be one of {MODELS}, but got {model!r}.")
    if model == "head" and not extractor.trainable:
        raise ConfigError(
            f"Expected model='head' only with a trainable extractor (features='encoder'), but "
            f"features={extractor.name!r} learns nothing. Use model='gbt', 'linear' or 'mlp'."
        )
    snapshots = check_snapshots(snapshots)
    trajectories = _as_list(trajectories)
    if isinstance(targets, str):
        targets = resolve_targets(trajectories, targets)
    y, _ = _check_targets(targets, len(trajectories), task)
    if task == "classify" and len(np.unique(y)) < 2:
        raise ConfigError(
            f"Expected at least two classes to classify, but every run has label {y[0]!r}."
        )
    lengths = [len(t) for t in trajectories]
    if min(lengths) == 0:
        i = lengths.index(0)
        raise EmptyStoreError(
            f"Expected runs with at least one committed snapshot, but run {i} "
            f"({getattr(trajectories[i], 'location', '?')}) has none."
        )
    if k is None:
        cap = min(MAX_SNAPSHOTS, extractor.default_k or MAX_SNAPSHOTS)
        k = 1 if snapshots == "last" else min(
            cap, min(selected_length(n, snapshots) for n in lengths))
    n_outputs = 1 if y.ndim == 1 else y.shape[1]
    predictor = Predictor(task, extractor, snapshots, int(k), None, model_name=model,
                          n_outputs=n_outputs, info={"n_runs": len(trajectories)})
    head = extractor.fit(trajectories, predictor.indices(trajectories), y, task, seed)
    if model == "head":
        predictor.model = head
        return predictor
    X = predictor.transform(trajectories)
    est = _make_model(task, model, seed, n_outputs, len(trajectories))
    est.fit(X, y)
    predictor.model = est
    return predictor


def cross_validate(
    trajectories: Sequence[Any],
    targets: Any,
    task: str = "classify",
    *,
    folds: int = 5,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """K-fold cross-validated score of :func:`fit_predictor` (stratified for ``classify``).

    Returns:
        ``{"scores": [...], "mean": ..., "std": ..., "metric": ...}``.

    Raises:
        ConfigError: fewer runs (or, to classify, members of a class) than folds.
    """
    _sklearn()
    from sklearn.model_selection import KFold, StratifiedKFold

    trajectories = _as_list(trajectories)
    if isinstance(targets, str):
        targets = resolve_targets(trajectories, targets)
    y, _ = _check_targets(targets, len(trajectories), task)
    if not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"Expected folds >= 2, but got {folds!r}.")
    if len(trajectories) < folds:
        raise ConfigError(
            f"Expected at least as many runs as folds, but got {len(trajectories)} runs for "
            f"{folds} folds. Record more runs or lower --folds."
        )
    if task == "classify":
        _, counts = np.unique(y, return_counts=True)
        if counts.min() < folds:
            raise ConfigError(
                f"Expected every class to have at least {folds} runs for {folds}-fold "
                f"stratified cross-validation, but the smallest class has {counts.min()}. "
                f"Lower --folds or add runs."
            )
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    scores = []
    for tr, te in splitter.split(np.zeros(len(y)), y if task == "classify" else None):
        p = fit_predictor([trajectories[i] for i in tr], y[tr], task, seed=seed, **kwargs)
        scores.append(p.score([trajectories[i] for i in te], y[te]))
    arr = np.asarray(scores, dtype=np.float64)
    metric = {"classify": "accuracy", "regress": "mse", "rank": "kendall_tau"}[task]
    return {"scores": arr.tolist(), "mean": arr.mean(0).tolist(), "std": arr.std(0).tolist(),
            "metric": metric}
