"""Features of a trajectory for learning from a collection of runs.

A feature extractor maps trajectories (``Trajectory`` stores, zoo ``RunView``\\ s, anything
with ``len``, ``weights(name)``, ``metrics``, ``architecture``) and, for each, the indices of
the snapshots to use, to one fixed-length row per run. Which snapshots is decided in one place,
:func:`snapshot_indices`: ``"last"`` (T = 1), ``"all"``, or a fraction ``f`` in (0, 1] (the
first ``ceil(f T)`` snapshots, e.g. 0.2 for an early-stopping decision), resampled to ``k``
evenly spaced snapshots so that runs of different lengths give rows of the same length.

Extension point: subclass :class:`FeatureExtractor` (``name``, ``__call__``, ``config``) and
:func:`register_features` it; :func:`hyperlapse.fit_predictor` then accepts its name, and a
saved predictor rebuilds it from its name and ``config()``. The temporal encoder plugs in
here as ``features="encoder"`` (:mod:`hyperlapse.predict.encoder`): a *trainable* extractor,
whose :meth:`FeatureExtractor.fit` trains it end to end on the targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ArchitectureError, ConfigError, EmptyStoreError

__all__ = [
    "FEATURES",
    "FeatureExtractor",
    "FlatWeights",
    "LossCurve",
    "ProbeOutputs",
    "WeightStats",
    "get_features",
    "register_features",
    "snapshot_indices",
]

Snapshots = str | float


def check_snapshots(snapshots: Any) -> Snapshots:
    """Validate ``snapshots=``: ``"last"``, ``"all"`` or a fraction in (0, 1]."""
    if snapshots in ("last", "all"):
        return snapshots
    if isinstance(snapshots, (int, float)) and not isinstance(snapshots, bool):
        if 0 < float(snapshots) <= 1:
            return float(snapshots)
    raise ConfigError(
        f"Expected snapshots to be 'last' (the final snapshot, T = 1), 'all' (the whole "
        f"trajectory) or a fraction in (0, 1] (the first part, e.g. 0.2), but got {snapshots!r}."
    )


def selected_length(length: int, snapshots: Snapshots) -> int:
    """How many leading snapshots ``snapshots`` selects from a trajectory of ``length``."""
    if snapshots == "last":
        return 1
    frac = 1.0 if snapshots == "all" else float(snapshots)
    return max(1, math.ceil(frac * length - 1e-9))


def snapshot_indices(length: int, snapshots: Snapshots, k: int) -> np.ndarray:
    """``k`` snapshot indices of a trajectory of ``length`` snapshots.

    ``"last"``: ``[length - 1]``. Otherwise the first ``selected_length`` snapshots, resampled
    to ``k`` evenly spaced ones (first and last of the selection included).

    Example:
        >>> snapshot_indices(21, "last", 1).tolist()
        [20]
        >>> snapshot_indices(21, 0.2, 3).tolist()
        [0, 2, 4]
        >>> snapshot_indices(21, "all", 5).tolist()
        [0, 5, 10, 15, 20]
    """
    if length < 1:
        raise EmptyStoreError("Expected a trajectory with at least one snapshot, got none.")
    if snapshots == "last":
        return np.asarray([length - 1])
    m = selected_length(length, snapshots)
    return np.round(np.linspace(0, m - 1, k)).astype(np.int64)


class FeatureExtractor:
    """Base class: one fixed-length row of features per trajectory.

    Subclasses set ``name`` and implement ``__call__(trajectories, indices)``, where
    ``indices[i]`` are the snapshots of trajectory ``i`` to use (all of equal length), and
    ``config()`` (JSON-serialisable keyword arguments that rebuild the extractor).
    """

    name = "base"
    #: Whether :meth:`fit` learns from the targets (then the predictor's default model is the
    #: extractor's own head).
    trainable = False
    #: Snapshots per run this extractor prefers when ``fit_predictor`` is given no ``k``.
    default_k: int | None = None

    def fit(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray], y: np.ndarray,
            task: str, seed: int = 0) -> Any:
        """Learn from the training runs; returns a model with ``predict(rows)`` or None.

        Fixed extractors learn nothing (None); a trainable one (``features="encoder"``) trains
        end to end and returns its head.
        """
        return None

    def state(self) -> dict[str, Any]:
        """Learned tensors to save with a predictor (empty for fixed extractors)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def __call__(
        self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]
    ) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def feature_names(self, k: int) -> list[str] | None:
        """Names of the columns for ``k`` snapshots, where the extractor knows them."""
        return None


FEATURES: dict[str, Callable[..., FeatureExtractor]] = {}


def register_features(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`FeatureExtractor` available by ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        FEATURES[name] = cls
        return cls

    return deco


def get_features(features: str | FeatureExtractor, **config: Any) -> FeatureExtractor:
    """An extractor by name (or the instance itself)."""
    if isinstance(features, FeatureExtractor):
        return features
    if features not in FEATURES:
        raise ConfigError(
            f"Expected features to be one of {sorted(FEATURES)} (or a FeatureExtractor), but "
            f"got {features!r}."
        )
    return FEATURES[features](**config)


def _architecture(traj: Any, i: int) -> dict[str, Any]:
    arch = getattr(traj, "architecture", None)
    if not isinstance(arch, dict) or arch.get("kind") != "mlp":
        raise ArchitectureError(
            f"Expected every trajectory to record an MLP architecture, but trajectory {i} "
            f"({getattr(traj, 'location', type(traj).__name__)}) has none (it was not "
            f"recognised as an MLP when recorded). Weight features need the layer structure; "
            f"use features='loss-curve' or record an nn.Sequential of nn.Linear layers."
        )
    return arch


_STATS = ("mean", "std", "q0", "q25", "q50", "q75", "q100")
_SLOTS = ("first.weight", "first.bias", "middle.weight", "middle.bias", "last.weight",
          "last.bias")


def _moments(x: np.ndarray) -> np.ndarray:
    """``[k, n] -> [k, 7]``: mean, std and the 0/25/50/75/100 % quantiles of each row."""
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], len(_STATS)))
    # sorted first: the sums then run in one order whatever the neurons' order, so permuted
    # runs give bit-identical features (not just equal up to rounding)
    x = np.sort(x, axis=1)
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0], axis=1).T
    return np.concatenate([x.mean(1, keepdims=True), x.std(1, keepdims=True), q], axis=1)


@register_features("stats")
class WeightStats(FeatureExtractor):
    """Per-layer weight statistics per snapshot (the "StatNN" baseline).

    For each selected snapshot: mean, standard deviation and the 0/25/50/75/100 % quantiles of
    the weights and of the biases of the first layer, of all middle layers pooled, and of the
    last layer (so MLPs of different depths and widths give rows of one length; for a 3-layer
    MLP these are exactly the per-layer statistics), then the depth, log2 of the mean hidden
    width and log10 of the number of parameters. Every statistic is invariant to permuting
    hidden neurons.
    """

    def __call__(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for i, (traj, idx) in enumerate(zip(trajectories, indices, strict=True)):
            arch = _architecture(traj, i)
            layers = arch["layers"]
            k = len(idx)

            def flat(
                name: str | None, traj: Any = traj, idx: np.ndarray = idx, k: int = k
            ) -> np.ndarray:
                if name is None:
                    return np.zeros((k, 0))
                return np.asarray(traj.weights(name)[idx], dtype=np.float64).reshape(k, -1)

            first, last, middle = layers[0], layers[-1], layers[1:-1]
            parts = [
                _moments(flat(first["weight"])),
                _moments(flat(first["bias"])),
                _moments(np.concatenate([flat(m["weight"]) for m in middle], 1))
                if middle else np.zeros((k, len(_STATS))),
                _moments(np.concatenate([flat(m["bias"]) for m in middle], 1))
                if middle else np.zeros((k, len(_STATS))),
            ]
            if len(layers) > 1:
                parts += [_moments(flat(last["weight"])), _moments(flat(last["bias"]))]
            else:
                parts += [np.zeros((k, len(_STATS)))] * 2
            widths = arch["widths"]
            n_params = sum(l["in_features"] * l["out_features"] + l["out_features"] for l in layers)
            hidden = widths[1:-1] or [0]
            shape = [len(layers), math.log2(max(np.mean(hidden), 1)), math.log10(n_params)]
            rows.append(np.concatenate([np.concatenate(parts, 1).reshape(-1), shape]))
        return np.stack(rows)

    def feature_names(self, k: int) -> list[str]:
        per = [f"{slot}.{stat}" for slot in _SLOTS for stat in _STATS]
        return [f"t{t}.{n}" for t in range(k) for n in per] + [
            "depth", "log2_hidden_width", "log10_params"]


@register_features("loss-curve")
class LossCurve(FeatureExtractor):
    """The logged scalars (loss, accuracy, ...) at the selected snapshots: what a
    learning-curve extrapolator sees. No weights.

    Args:
        metrics: metric names to use (default: those every trajectory of the training set has,
            fixed at the first call).
    """

    def __init__(self, metrics: Sequence[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics is not None else None

    def __call__(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]) -> np.ndarray:
        if self.metrics is None:
            common = set(trajectories[0].metrics)
            for traj in trajectories[1:]:
                common &= set(traj.metrics)
            if not common:
                raise ConfigError(
                    "Expected logged metrics (recorder.log(loss=...)) shared by every "
                    "trajectory for features='loss-curve', but the trajectories share none."
                )
            self.metrics = sorted(common)
        rows = []
        for i, (traj, idx) in enumerate(zip(trajectories, indices, strict=True)):
            metrics = traj.metrics
            missing = [m for m in self.metrics if m not in metrics]
            if missing:
                raise ConfigError(
                    f"Expected metrics {self.metrics} in every trajectory, but trajectory {i} "
                    f"({getattr(traj, 'location', '?')}) lacks {missing}."
                )
            rows.append(np.concatenate([np.asarray(metrics[m])[idx] for m in self.metrics]))
        return np.stack(rows).astype(np.float64)

    def config(self) -> dict[str, Any]:
        return {"metrics": self.metrics}


@register_features("flat")
class FlatWeights(FeatureExtractor):
    """All weights and biases at the selected snapshots, flattened (needs one architecture;
    not invariant to neuron permutations: the naive baseline)."""

    def __call__(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]) -> np.ndarray:
        ref = _architecture(trajectories[0], 0)
        rows = []
        for i, (traj, idx) in enumerate(zip(trajectories, indices, strict=True)):
            arch = _architecture(traj, i)
            if arch["widths"] != ref["widths"]:
                raise ArchitectureError(
                    f"Expected one architecture for features='flat', but trajectory 0 has widths "
                    f"{ref['widths']} and trajectory {i} ({getattr(traj, 'location', '?')}) has "
                    f"{arch['widths']}. Use features='stats', which accepts mixed architectures."
                )
            names = [n for l in arch["layers"] for n in (l["weight"], l["bias"]) if n]
            rows.append(np.concatenate(
                [np.asarray(traj.weights(n)[idx], dtype=np.float64).reshape(-1) for n in names]
            ))
        return np.stack(rows)


@register_features("probe-outputs")
class ProbeOutputs(FeatureExtractor):
    """The network's outputs on fixed probe inputs at the selected snapshots: what a reader of
    the probe features (``features="encoder"`` with ``probes``) sees at the output nodes, fed
    to a plain model. For an INR these are the image's values at the probe points. Invariant
    to permuting hidden neurons (the function does not change).

    Args:
        probes, probe_kind, probe_seed: as for :class:`~hyperlapse.predict.EncoderFeatures`
            (the same arguments give the same probe inputs:
            :func:`hyperlapse.nn.probes.probe_inputs`).
    """

    def __init__(self, probes: int = 64, probe_kind: str = "auto", probe_seed: int = 0) -> None:
        from ..nn.probes import check_probe_options

        check_probe_options(probes, probe_kind)
        if probes < 1:
            raise ConfigError(
                f"Expected probes >= 1 for features='probe-outputs', but got {probes}."
            )
        self.probes, self.probe_kind, self.probe_seed = probes, probe_kind, probe_seed

    def __call__(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from ..nn.probes import probe_inputs, probe_outputs

        rows, inputs, ref = [], {}, None
        for i, (traj, idx) in enumerate(zip(trajectories, indices, strict=True)):
            arch = _architecture(traj, i)
            n_in = int(arch["widths"][0])
            if n_in not in inputs:
                inputs[n_in] = probe_inputs(n_in, self.probes, kind=self.probe_kind,
                                            seed=self.probe_seed)
            if ref is None:
                ref = arch["widths"]
            elif arch["widths"][-1] != ref[-1]:
                raise ArchitectureError(
                    f"Expected one output size for features='probe-outputs', but trajectory 0 "
                    f"has {ref[-1]} outputs and trajectory {i} "
                    f"({getattr(traj, 'location', '?')}) has {arch['widths'][-1]}."
                )
            names = [n for l in arch["layers"] for n in (l["weight"], l["bias"]) if n]
            arrays = {n: np.asarray(traj.weights(n)[idx], dtype=np.float64) for n in names}
            row = []
            for j in range(len(idx)):
                state = {n: torch.from_numpy(a[j]) for n, a in arrays.items()}
                row.append(probe_outputs(state, arch, inputs[n_in])[-1].reshape(-1).numpy())
            rows.append(np.concatenate(row))
        return np.stack(rows)

    def config(self) -> dict[str, Any]:
        return {"probes": self.probes, "probe_kind": self.probe_kind,
                "probe_seed": self.probe_seed}


class PermutedRun:
    """A trajectory whose hidden neurons are permuted (one permutation per hidden layer, the
    same at every snapshot): a functionally identical run, to check that features are
    invariant. Reads like the wrapped trajectory (``len``, ``weights``, ``metrics``, ...).

    Args:
        run: a trajectory with an MLP architecture.
        generator: torch generator of the random permutations.
    """

    def __init__(self, run: Any, generator: Any) -> None:
        import torch

        arch = _architecture(run, 0)
        self._run, self.architecture = run, arch
        widths, layers = arch["widths"], arch["layers"]
        self.perms = [torch.randperm(n, generator=generator).numpy() for n in widths[1:-1]]
        # name -> [(axis, permutation)] on the (T, ...) array
        self._ops: dict[str, list[tuple[int, np.ndarray]]] = {}
        for l in range(1, len(widths) - 1):
            p = self.perms[l - 1]
            before, after = layers[l - 1], layers[l]
            self._ops.setdefault(before["weight"], []).append((1, p))
            if before["bias"] is not None:
                self._ops.setdefault(before["bias"], []).append((1, p))
            self._ops.setdefault(after["weight"], []).append((2, p))

    def __len__(self) -> int:
        return len(self._run)

    def __getattr__(self, name: str) -> Any:  # steps, metrics, attrs, location, ...
        return getattr(self._run, name)

    def weights(self, name: str) -> np.ndarray:
        out = np.asarray(self._run.weights(name))
        for axis, p in self._ops.get(name, []):
            out = np.take(out, p, axis=axis)
        return out
