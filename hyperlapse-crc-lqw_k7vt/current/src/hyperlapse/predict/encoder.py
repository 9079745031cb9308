"""``features="encoder"``: the temporal encoder as a metanetwork, trained end to end on the task.

Unlike the fixed extractors (statistics, curves), this one learns: :meth:`EncoderFeatures.fit`
trains :class:`~hyperlapse.nn.metanet.MetaNetwork` (temporal encoder + permutation-invariant
readout + head) on the runs and their targets, batched (many runs' graphs per forward pass as
disjoint unions), and returns the trained head as the predictor's model (:class:`EncoderHead`);
calling the extractor then gives the readout of each run. With ``fit_predictor(...,
model="gbt"|"linear"|"mlp")`` a scikit-learn model is fitted on the learned readout instead.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ArchitectureError, ConfigError
from ..graph.parameter_graph import ParameterGraph, mlp_topology
from ..nn.batch import GraphBatch, collate
from ..nn.encoder import EncoderConfig
from ..nn.metanet import MetaNetwork, readout_dim
from ..nn.probes import check_probe_options, probe_inputs, probe_node_features
from ..nn.snapshot import Snapshot, prepare_snapshot
from .features import FeatureExtractor, _architecture, register_features

__all__ = ["EncoderFeatures", "EncoderHead"]

# Prepared snapshots per trajectory (freed with it): every configuration, seed and epoch of a
# benchmark reads the same graphs, and building them is most of the cost of a small epoch.
_GRAPHS: weakref.WeakKeyDictionary[Any, dict[tuple[int, int | None], Snapshot]] = (
    weakref.WeakKeyDictionary()
)
_TOPOLOGY: dict[tuple[int, ...], dict[str, Any]] = {}


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _state(traj: Any, arch: dict[str, Any], t: int) -> dict[str, Tensor]:
    names = [n for layer in arch["layers"] for n in (layer["weight"], layer["bias"]) if n]
    return {n: torch.from_numpy(np.array(traj.weights(n)[t], dtype=np.float32)) for n in names}


def _snapshot(traj: Any, i: int, t: int, sparsify_k: int | None,
              probes: tuple[Tensor, tuple[Any, ...], str] | None = None) -> Snapshot:
    """The prepared snapshot ``t`` of run ``i`` (cached per run object).

    ``probes``: ``(probe inputs [P, n_0], cache key, normalisation)``: the node features get
    each node's values on the probes appended (:func:`~hyperlapse.nn.probes.probe_node_features`).
    """
    try:
        cache = _GRAPHS.setdefault(traj, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    key = (int(t), sparsify_k)
    if key not in cache:
        arch = _architecture(traj, i)
        state = _state(traj, arch, t)
        widths = tuple(arch["widths"])
        if widths not in _TOPOLOGY:
            _TOPOLOGY[widths] = mlp_topology(list(widths))
        g = ParameterGraph.from_state_dict(state, arch, topology=_TOPOLOGY[widths])
        snap = prepare_snapshot(g, sparsify_k=sparsify_k)
        snap.graph = None  # the snapshot holds what the encoder reads; drop the full graph
        cache[key] = snap
    if probes is None:
        return cache[key]
    inputs, probe_key, norm = probes
    pkey = (int(t), sparsify_k, probe_key)
    if pkey not in cache:
        base = cache[key]
        arch = _architecture(traj, i)
        feats = probe_node_features(_state(traj, arch, t), arch, inputs, normalise=norm)
        cache[pkey] = dataclasses.replace(base, x=torch.cat([base.x, feats.to(base.x)], 1))
    return cache[pkey]


class EncoderHead:
    """The trained head of a :class:`~hyperlapse.nn.metanet.MetaNetwork`, as a predictor model.

    ``predict(X)`` maps readout rows (what :class:`EncoderFeatures` returns) to class labels
    (classify) or values in the targets' units (regress, rank). Picklable (plain tensors).
    """

    def __init__(self, head: nn.Module, task: str, classes: np.ndarray | None,
                 mean: np.ndarray | None, std: np.ndarray | None) -> None:
        self.state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        self.task, self.classes, self.mean, self.std = task, classes, mean, std
        self._module: nn.Module | None = None

    def _head(self) -> nn.Module:
        if self._module is None:
            dim = self.state["0.weight"].shape[0]
            hidden, out = self.state["1.weight"].shape[0], self.state["3.weight"].shape[0]
            head = nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out)).to(self.state["0.weight"].dtype)
            head.load_state_dict(self.state)
            self._module = head
        return self._module

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_module": None}

    def predict(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self._head()(torch.as_tensor(X, dtype=self.state["0.weight"].dtype)).numpy()
        if self.task == "classify":
            return self.classes[out.argmax(1)]
        out = out * self.std + self.mean
        return out[:, 0] if out.shape[1] == 1 else out


@register_features("encoder")
class EncoderFeatures(FeatureExtractor):
    """The temporal encoder trained end to end on the task (a metanetwork).

    Args:
        d: embedding dimension.
        manifold: ``"poincare"`` (hyperbolic) or ``"euclidean"`` (the like-for-like flat
            switch: identical parameters at initialisation for the same seed).
        epochs: passes over the training runs.
        batch_size: runs per forward pass (their graphs batched as one disjoint union).
        lr: Adam learning rate.
        layers, heads, window, sparsify_k, hidden, velocity: of the encoder
            (:class:`~hyperlapse.nn.encoder.EncoderConfig`); ``sparsify_k`` incoming edges
            per neuron carry messages (all edges feed the change features).
        max_snapshots: at most this many snapshots per run (the default ``k`` of
            :func:`~hyperlapse.fit_predictor`; the cost of an epoch grows linearly with it).
        head_hidden: width of the head.
        threads: torch threads while training and encoding (1: analysis on a shared machine).
        probes: probe inputs ``P`` (0: off). Every node's values on ``P`` fixed probe inputs
            (input nodes: the probe coordinates; hidden neurons: after the activation; outputs:
            the network's outputs) are appended to its node features
            (:mod:`hyperlapse.nn.probes`; permutation-equivariant by construction). For an
            INR the output node then sees the image at the probe points.
        probe_kind: ``"auto"`` (a grid over ``[-1, 1]^n`` for 1-D and 2-D inputs when ``P``
            is a perfect power, e.g. 64 = 8 x 8; seeded uniform in ``[-1, 1]^n`` for other
            1-D/2-D inputs; seeded ``N(0, 1)`` above), ``"grid"``, ``"uniform"`` or
            ``"normal"``: :func:`~hyperlapse.nn.probes.probe_inputs`.
        probe_seed: seed of the random probe kinds (probes are fixed when the model is fitted
            and saved with it).
        probe_norm: ``"layer"`` (a layer's values divided by their RMS when it exceeds 1:
            bounded activations unchanged, ReLU layers and logits at unit scale) or ``"none"``.
        fitted: set by :meth:`fit` (sizes needed to rebuild the network when loading, and the
            probe inputs).
    """

    trainable = True

    def __init__(self, d: int = 8, manifold: str = "poincare", epochs: int = 30,
                 batch_size: int = 64, lr: float = 3e-3, layers: int = 2, heads: int = 2,
                 window: int = 4, sparsify_k: int | None = 8, hidden: int = 32,
                 velocity: bool = True, max_snapshots: int = 4, head_hidden: int = 64,
                 threads: int = 1, probes: int = 0, probe_kind: str = "auto",
                 probe_seed: int = 0, probe_norm: str = "layer",
                 fitted: dict[str, Any] | None = None) -> None:
        self.options = dict(d=d, manifold=manifold, epochs=epochs, batch_size=batch_size, lr=lr,
                            layers=layers, heads=heads, window=window, sparsify_k=sparsify_k,
                            hidden=hidden, velocity=velocity, max_snapshots=max_snapshots,
                            head_hidden=head_hidden, threads=threads, probes=probes,
                            probe_kind=probe_kind, probe_seed=probe_seed, probe_norm=probe_norm)
        check_probe_options(probes, probe_kind, probe_norm)
        for name, ok in (("epochs", epochs >= 1), ("batch_size", batch_size >= 1),
                         ("threads", threads >= 1), ("max_snapshots", max_snapshots >= 1),
                         ("lr", lr > 0)):
            if not ok:
                raise ConfigError(
                    f"Expected a positive {name} for features='encoder', got "
                    f"{self.options[name]!r}."
                )
        self.default_k = max_snapshots
        self.fitted = dict(fitted) if fitted else None
        self.network: MetaNetwork | None = None
        self.history: list[dict[str, float]] = []
        if self.fitted:
            self.network = self._build(self.fitted)

    # ------------------------------------------------------------------------ building
    def _encoder_config(self, in_features: int, num_identities: int) -> EncoderConfig:
        o = self.options
        return EncoderConfig(
            in_features=in_features, num_identities=num_identities, d=o["d"], heads=o["heads"],
            layers=o["layers"], window=o["window"], manifold=o["manifold"],
            sparsify_k=o["sparsify_k"], hidden=o["hidden"], velocity=o["velocity"])

    def _build(self, fitted: dict[str, Any]) -> MetaNetwork:
        cfg = self._encoder_config(fitted["in_features"], fitted["num_identities"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(fitted.get("seed", 0)))
            return MetaNetwork(cfg, fitted["n_outputs"], head_hidden=self.options["head_hidden"])

    def probe_inputs(self, dim: int) -> Tensor | None:
        """The probe inputs ``[P, dim]`` for runs with ``dim`` inputs (None: probes off).

        Those of a fitted model are the ones it was trained with (saved with it); otherwise
        :func:`~hyperlapse.nn.probes.probe_inputs` of the options.
        """
        o = self.options
        if not o["probes"]:
            return None
        saved = (self.fitted or {}).get("probe_inputs", {})
        if str(dim) in saved:
            return torch.tensor(saved[str(dim)], dtype=torch.float64)
        return probe_inputs(dim, o["probes"], kind=o["probe_kind"], seed=o["probe_seed"])

    def _graphs(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]
                ) -> list[list[Snapshot]]:
        k = {len(i) for i in indices}
        if len(k) != 1:
            raise ConfigError(f"Expected the same number of snapshots per run, got {sorted(k)}.")
        with _threads(self.options["threads"]):  # many tiny ops: threads only add overhead
            return self._build_graphs(trajectories, indices)

    def _build_graphs(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]
                      ) -> list[list[Snapshot]]:
        o = self.options
        probes: dict[int, Any] = {}
        out = []
        for i, (traj, idx) in enumerate(zip(trajectories, indices, strict=True)):
            spec = None
            if o["probes"]:
                dim = int(_architecture(traj, i)["widths"][0])
                if dim not in probes:
                    inputs = self.probe_inputs(dim)
                    # the key names the exact inputs: a loaded model's saved probes included
                    key = (dim, o["probe_norm"], inputs.numpy().tobytes())
                    probes[dim] = (inputs, key, o["probe_norm"])
                spec = probes[dim]
            out.append([_snapshot(traj, i, int(t), o["sparsify_k"], spec) for t in idx])
        return out

    @staticmethod
    def _gaps(trajectories: Sequence[Any], indices: Sequence[np.ndarray]) -> np.ndarray:
        """``[n, T]`` optimizer steps since the previous selected snapshot (column 0 unused)."""
        out = np.ones((len(trajectories), len(indices[0])))
        for i, (traj, idx) in enumerate(zip(trajectories, indices, strict=True)):
            steps = np.asarray(getattr(traj, "steps", np.arange(len(traj))), dtype=np.float64)
            s = steps[np.asarray(idx)]
            out[i, 1:] = np.maximum(np.diff(s), 1.0)  # a repeated snapshot: one step
        return out

    def _batches(self, graphs: list[list[Snapshot]], gaps: np.ndarray, rows: np.ndarray
                 ) -> tuple[list[GraphBatch], list[Tensor | None]]:
        dtype = self.network.encoder.dtype
        T = len(graphs[rows[0]])
        batches = [collate([graphs[r][t] for r in rows], dtype=dtype) for t in range(T)]
        g = torch.as_tensor(gaps[rows], dtype=dtype)
        return batches, [None] + [g[:, t] for t in range(1, T)]

    # ------------------------------------------------------------------------ learning
    def fit(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray], y: np.ndarray,
            task: str, seed: int = 0) -> EncoderHead:
        """Train the metanetwork on ``(trajectories, y)``; returns the trained head."""
        o = self.options
        graphs = self._graphs(trajectories, indices)
        gaps = self._gaps(trajectories, indices)
        in_features = graphs[0][0].x.shape[1]
        num_identities = max(int(s[0].node_identity.max()) + 1 for s in graphs)
        classes = mean = std = None
        if task == "classify":
            classes, target = np.unique(y, return_inverse=True)
            n_out = len(classes)
            target_t = torch.as_tensor(target, dtype=torch.long)
        else:
            yy = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
            mean, std = yy.mean(0), yy.std(0)
            std = np.where(std > 0, std, 1.0)
            n_out = yy.shape[1]
            target_t = torch.as_tensor((yy - mean) / std, dtype=torch.float32)
        self.fitted = {"in_features": int(in_features), "num_identities": num_identities,
                       "n_outputs": int(n_out), "seed": int(seed)}
        if o["probes"]:
            dims = sorted({int(_architecture(t, i)["widths"][0])
                           for i, t in enumerate(trajectories)})
            self.fitted["probe_inputs"] = {str(n): self.probe_inputs(n).tolist() for n in dims}
        self.history = []
        with _threads(o["threads"]):
            self.network = net = self._build(self.fitted)
            opt = torch.optim.Adam(net.parameters(), lr=o["lr"])
            rng = np.random.default_rng(seed)
            n = len(graphs)
            n_batches = math.ceil(n / o["batch_size"])
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=o["lr"], total_steps=o["epochs"] * n_batches, pct_start=0.2)
            loss_fn = nn.CrossEntropyLoss() if task == "classify" else nn.MSELoss()
            net.train()
            for epoch in range(o["epochs"]):
                t0 = time.perf_counter()
                order = rng.permutation(n)
                total = 0.0
                for b in range(n_batches):
                    rows = order[b * o["batch_size"]:(b + 1) * o["batch_size"]]
                    batches, g = self._batches(graphs, gaps, rows)
                    loss = loss_fn(net(batches, g), target_t[rows])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(rows)
                self.history.append({"epoch": epoch, "loss": total / n,
                                     "seconds": time.perf_counter() - t0})
            net.eval()
        return EncoderHead(net.head, task, classes, mean, std)

    def batch_cost(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray],
                   n_outputs: int = 1, seed: int = 0) -> dict[str, float]:
        """What one training step on these runs costs (one forward and backward pass).

        Returns ``{"seconds", "saved_bytes"}``: wall time and the bytes of the tensors autograd
        keeps for the backward pass (distinct storages, counted with
        ``torch.autograd.graph.saved_tensors_hooks``), the part of memory that grows with the
        number of snapshots T. Uses a fresh network when the extractor is not trained.
        """
        graphs = self._graphs(trajectories, indices)
        gaps = self._gaps(trajectories, indices)
        if self.network is None:
            self.fitted = {"in_features": int(graphs[0][0].x.shape[1]),
                           "num_identities": max(int(s[0].node_identity.max()) + 1
                                                 for s in graphs),
                           "n_outputs": int(n_outputs), "seed": int(seed)}
            self.network = self._build(self.fitted)
        storages: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        with _threads(self.options["threads"]):
            rows = np.arange(len(graphs))
            batches, g = self._batches(graphs, gaps, rows)
            t0 = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = self.network(batches, g)
            out.pow(2).mean().backward()
            seconds = time.perf_counter() - t0
        self.network.zero_grad(set_to_none=True)
        return {"seconds": seconds, "saved_bytes": float(sum(storages.values()))}

    def __call__(self, trajectories: Sequence[Any], indices: Sequence[np.ndarray]) -> np.ndarray:
        if self.network is None:
            raise ConfigError(
                "Expected a trained encoder for features='encoder', but it has not been fitted: "
                "use hyperlapse.fit_predictor(..., features='encoder')."
            )
        graphs = self._graphs(trajectories, indices)
        gaps = self._gaps(trajectories, indices)
        known = self.fitted["num_identities"]
        for i, snaps in enumerate(graphs):
            need = int(snaps[0].node_identity.max()) + 1
            if need > known:
                raise ArchitectureError(
                    f"Expected runs of the architectures the encoder was trained on, but run {i} "
                    f"({getattr(trajectories[i], 'location', '?')}) has "
                    f"{_architecture(trajectories[i], i)['widths']}, whose inputs, outputs and "
                    f"layers need {need} identity embeddings; the encoder has {known}. Train it "
                    f"on runs that include this input/output size and depth."
                )
        out = []
        bs = max(self.options["batch_size"], 256)
        with _threads(self.options["threads"]), torch.no_grad():
            for start in range(0, len(graphs), bs):
                rows = np.arange(start, min(start + bs, len(graphs)))
                batches, g = self._batches(graphs, gaps, rows)
                out.append(self.network.embed(batches, g).numpy())
        return np.concatenate(out).astype(np.float64)

    # ------------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        return {**self.options, "fitted": self.fitted}

    def state(self) -> dict[str, Tensor]:
        return {} if self.network is None else dict(self.network.state_dict())

    def load_state(self, state: dict[str, Tensor]) -> None:
        if self.network is not None and state:
            self.network.load_state_dict(state)

    def feature_names(self, k: int) -> list[str]:
        d = self.options["d"]
        from ..nn.batch import READOUT_SLOTS

        per = [f"{slot}.{q}" for slot in READOUT_SLOTS
               for q in [f"tangent{j}" for j in range(d)] + ["radius_mean", "radius_std"]]
        names = [f"last.{p}" for p in per] + [f"path_mean.{p}" for p in per]
        assert len(names) == readout_dim(d)
        return names

