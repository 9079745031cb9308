"""Read a zoo: :func:`open_zoo` -> :class:`Zoo`, a sequence of per-run :class:`RunView`.

A zoo folder holds ``zoo.json`` (the manifest) and a few population stores. Each population
store is an ordinary trajectory store written by :class:`~hyperlapse.TrajectoryRecorder`
whose parameters carry a leading run axis (``params/0.weight``: ``(T, R, out, in)``); its
``population`` attrs name the per-run architecture, the zoo-wide index of its first run, the
runs' labels and, where runs stop at different steps, each run's last step. The reader splits
a population into per-run views that behave like a :class:`~hyperlapse.Trajectory` of one run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NotAStoreError, StoreError
from ..store.reader import open_trajectory

__all__ = ["MANIFEST", "ZOO_FORMAT", "ZOO_VERSION", "Zoo", "RunView", "open_zoo", "read_manifest"]

MANIFEST = "zoo.json"
ZOO_FORMAT = "hyperlapse.zoo"
ZOO_VERSION = 1
#: Recorded buffers whose names start with this are per-run curves (loss, accuracy), not weights.
CURVE_PREFIX = "curve_"


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the zoo at ``folder``, or None when the folder has none.

    Raises:
        NotAStoreError: ``zoo.json`` exists but is not a hyperlapse zoo manifest.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NotAStoreError(
            f"Expected a hyperlapse zoo manifest at '{path}', but it cannot be read as JSON "
            f"({exc}). Choose another folder or remove the broken file."
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ZOO_FORMAT:
        raise NotAStoreError(
            f"Expected a hyperlapse zoo manifest (format '{ZOO_FORMAT}') at '{path}', but it has "
            f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}. "
            f"hyperlapse does not touch it; choose another folder."
        )
    if int(manifest.get("version", 0)) > ZOO_VERSION:
        raise StoreError(
            f"The zoo at '{folder}' has version {manifest.get('version')}, but this hyperlapse "
            f"reads versions <= {ZOO_VERSION}. Upgrade hyperlapse to read it."
        )
    return manifest


def _with_sine_frequencies(arch: dict[str, Any], activations: Any) -> dict[str, Any]:
    """Zoos built before architectures recorded ``"sine(<w0>)"`` name a ``sin(w0 x)`` layer
    plain ``"sine"`` (``w0 = 1``); the build's own ``activations`` (e.g. ``"sine(30)"``)
    still hold the frequency, so the per-run architecture evaluates to the trained network."""
    layers = arch.get("layers") if isinstance(arch, dict) else None
    if not isinstance(activations, list) or not isinstance(layers, list) or \
            len(activations) != len(layers) - 1:
        return arch
    fixed = [dict(layer, activation=act) if layer.get("activation") == "sine"
             and isinstance(act, str) and act.startswith("sine(") else layer
             for layer, act in zip(layers, activations + [None], strict=True)]
    return {**arch, "layers": fixed}


class _Population:
    """One population store, its arrays loaded on first use (a population is small)."""

    def __init__(self, location: str) -> None:
        self.trajectory = open_trajectory(location)
        info = self.trajectory.attrs.get("population")
        if not isinstance(info, dict):
            raise StoreError(
                f"Expected a population store (attrs 'population') at '{location}', but the "
                f"store has none: it was not written by a zoo build, or the build was killed "
                f"before this store was finished. Run the same 'hyperlapse zoo' command again "
                f"to finish it."
            )
        self.info = info
        self.runs = int(info["runs"])
        self.first_run = int(info["first_run"])
        self.run_index = info.get("run_index") or list(
            range(self.first_run, self.first_run + self.runs)
        )
        self.architecture = _with_sine_frequencies(info["architecture"], info.get("activations"))
        self.labels = {k: np.asarray(v) for k, v in info.get("labels", {}).items()}
        self.last_step = info.get("last_step")
        names = self.trajectory.param_names
        self.weight_names = [n for n in names if not n.startswith(CURVE_PREFIX)]
        self.curve_names = [n for n in names if n.startswith(CURVE_PREFIX)]
        self._cache: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = np.asarray(self.trajectory.weights(name))
        return self._cache[name]

    def length(self, r: int) -> int:
        steps = self.trajectory.steps
        if self.last_step is None:
            return len(steps)
        return int(np.searchsorted(steps, int(self.last_step[r]), side="right"))


class RunView:
    """One run of a population store, read like a one-run :class:`~hyperlapse.Trajectory`.

    Attributes:
        steps: ``(T,)`` optimizer steps of this run's snapshots.
        metrics: name -> ``(T,)`` float64: the population's logged scalars and this run's
            curves (recorded as ``curve_<name>`` buffers, one value per run).
        param_names: parameter names of one run (``0.weight``, ``0.bias``, ...).
        architecture: :func:`hyperlapse.describe_mlp` of one run.
        attrs: this run's labels, plus ``run`` (its index in the zoo).
        location: ``<population store>#<run index within it>``.
    """

    def __init__(self, population: _Population, r: int) -> None:
        self._pop, self._r = population, r
        n = population.length(r)
        self._length = n
        self.steps = population.trajectory.steps[:n]
        self.wall_time = population.trajectory.wall_time[:n]
        self.param_names = list(population.weight_names)
        self.architecture = population.architecture
        self.location = f"{population.trajectory.location}#{r}"
        self.attrs: dict[str, Any] = {"run": int(population.run_index[r])}
        for key, values in population.labels.items():
            value = values[r]
            self.attrs[key] = value.tolist() if isinstance(value, np.ndarray) else value.item()

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        pop, n = self._pop, self._length
        out = {k: v[:n] for k, v in pop.trajectory.metrics.items()}
        for name in pop.curve_names:
            out[name[len(CURVE_PREFIX) :]] = pop.array(name)[:n, self._r].astype(np.float64)
        return out

    def __len__(self) -> int:
        return self._length

    def weights(self, name: str) -> np.ndarray:
        """``(T, *shape)`` array of parameter ``name`` of this run."""
        if name not in self.param_names:
            raise KeyError(f"No parameter '{name}' in {self.location}; has {self.param_names}.")
        return self._pop.array(name)[: self._length, self._r]

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        n = self._length
        i = int(t) + n if t < 0 else int(t)
        if not 0 <= i < n:
            raise IndexError(f"Snapshot index {t} is out of range for {n} snapshots.")
        return {n: torch.from_numpy(np.array(self.weights(n)[i])) for n in self.param_names}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for t in range(len(self)):
            yield self[t]

    def __repr__(self) -> str:
        return f"RunView('{self.location}', {len(self)} snapshots)"


class Zoo(Sequence):
    """The runs of a zoo, in run order (``zoo[i]`` is run ``i``).

    Attributes:
        manifest: the parsed ``zoo.json``.
        name: the zoo's name (``digits-inr``, ``sines``, ...).
        complete: whether every population of the build is finished.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            what = "nothing exists there" if not self.folder.exists() else "it has no zoo.json"
            raise NotAStoreError(
                f"Expected a hyperlapse zoo at '{self.folder}', but {what}. Build one with "
                f"'hyperlapse zoo NAME --out {self.folder}'."
            )
        self.manifest = manifest
        self.name = manifest["name"]
        blocks = manifest.get("blocks", [])
        self.complete = len(blocks) == manifest.get("n_blocks") and all(b["done"] for b in blocks)
        runs: list[RunView] = []
        for block in blocks:
            if not block["done"]:
                continue
            for store in block["stores"]:
                pop = _Population(str(self.folder / store))
                runs += [RunView(pop, r) for r in range(pop.runs)]
        runs.sort(key=lambda v: v.attrs["run"])
        self._runs = runs

    def __len__(self) -> int:
        return len(self._runs)

    def __getitem__(self, i: Any) -> Any:
        return self._runs[i]

    def labels(self, name: str) -> np.ndarray:
        """Label ``name`` of every run, in run order."""
        try:
            return np.asarray([run.attrs[name] for run in self._runs])
        except KeyError as exc:
            have = sorted(k for k in self._runs[0].attrs) if self._runs else []
            raise StoreError(
                f"Expected label '{name}' in the zoo at '{self.folder}', but its runs have "
                f"{have}."
            ) from exc

    def __repr__(self) -> str:
        state = "" if self.complete else ", incomplete"
        return f"Zoo('{self.folder}', {self.name!r}, {len(self)} runs{state})"


def open_zoo(folder: str | os.PathLike) -> Zoo:
    """Open a zoo written by ``hyperlapse zoo`` / :func:`hyperlapse.zoo.build_zoo`.

    Raises:
        NotAStoreError: the folder holds no zoo.
    """
    return Zoo(folder)
