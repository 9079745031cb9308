"""Read trajectory stores: :func:`open_trajectory` -> :class:`Trajectory`.

A reader sees exactly the committed snapshots (``attrs["committed"]``), never an array's shape,
so it can follow a run that another process is still writing (:meth:`Trajectory.refresh`).
"""

from __future__ import annotations

import copy
import glob as _glob
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from ..errors import ConfigError, EmptyStoreError, StoreError
from . import format as fmt

__all__ = ["Trajectory", "WeightsView", "open_trajectory", "open_trajectories"]


class WeightsView:
    """A lazy ``(T, *shape)`` view of one parameter over the committed snapshots.

    Indexing reads only what is asked for (``view[t]``, ``view[a:b]``, ``view[:, 0]``);
    ``np.asarray(view)`` reads it all. ``.zarr`` is the underlying Zarr array (its shape may
    run ahead: slice it to ``len(view)``), ``.shards`` its shard shape (use it as dask chunks).
    """

    def __init__(self, array: zarr.Array, length: int, logical_dtype: str) -> None:
        self.zarr = array
        self.shape = (length, *array.shape[1:])
        self.logical_dtype = logical_dtype
        self.dtype = array.dtype
        self.shards = array.shards

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        first, rest = key[0], key[1:]
        n = self.shape[0]
        if isinstance(first, (int, np.integer)):
            t = int(first) + n if first < 0 else int(first)
            if not 0 <= t < n:
                raise IndexError(f"snapshot index {first} out of range for {n} snapshots")
            first = t
        elif isinstance(first, slice):
            first = slice(*first.indices(n))
        else:
            first = np.arange(n)[first]
        return self.zarr[(first, *rest)]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"WeightsView(shape={self.shape}, dtype={self.logical_dtype})"


class Trajectory:
    """The committed snapshots of one trajectory store.

    Attributes:
        steps: ``(T,)`` int64 optimizer step of each snapshot.
        wall_time: ``(T,)`` float64 seconds since the epoch.
        metrics: name -> ``(T,)`` float64, NaN where the scalar was not logged.
        param_names: recorded tensor names (as in the unwrapped module's ``state_dict``).
        architecture: :func:`hyperlapse.arch.describe_mlp` output, or ``None`` for non-MLPs.
        attrs: all group attributes.
    """

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = os.fspath(location)
        self.refresh()

    def refresh(self) -> int:
        """Re-read the store to pick up snapshots committed since the last read.

        Returns:
            The number of new snapshots.
        """
        old = getattr(self, "_length", 0)
        group = fmt.open_group(self.location, read_only=True)
        attrs = dict(group.attrs)
        n = fmt.committed(attrs)
        self.attrs = attrs
        self.param_names = [p["name"] for p in attrs["parameters"]]
        self._params = {p["name"]: p for p in attrs["parameters"]}
        self.architecture = attrs.get("architecture")
        try:
            self._arrays = {name: group[f"{fmt.PARAMS}/{name}"] for name in self.param_names}
            self.steps = np.asarray(group[fmt.STEP][:n], dtype=np.int64)
            self.wall_time = np.asarray(group[fmt.WALL_TIME][:n], dtype=np.float64)
            self.metrics = {
                m: np.asarray(group[f"{fmt.METRICS}/{m}"][:n], dtype=np.float64)
                for m in attrs.get("metrics", [])
            }
        except KeyError as exc:
            raise StoreError(
                f"The store at '{self.location}' is missing the array {exc} that its attrs name. "
                f"It was not written by hyperlapse or was damaged; re-record it."
            ) from exc
        if len(self.steps) != n:
            raise StoreError(
                f"The store at '{self.location}' says {n} snapshots are committed but its 'step' "
                f"array holds {len(self.steps)}. The store is damaged."
            )
        self._length = n
        return n - old

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for t in range(len(self)):
            yield self[t]

    def _index(self, t: int) -> int:
        n = len(self)
        if n == 0:
            raise EmptyStoreError(
                f"The store at '{self.location}' holds no committed snapshot yet. Wait for the "
                f"recorder's first flush (call refresh()) or check that it ran."
            )
        if not isinstance(t, (int, np.integer)):
            raise TypeError(f"Expected an int snapshot index, got {type(t).__name__}.")
        i = int(t) + n if t < 0 else int(t)
        if not 0 <= i < n:
            raise IndexError(
                f"Snapshot index {t} is out of range: the store holds {n} committed snapshots."
            )
        return i

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        """Snapshot ``t`` as a state dict of tensors (bit-exact with the capture)."""
        i = self._index(t)
        return {
            name: _to_tensor(self._arrays[name][i], self._params[name]["dtype"])
            for name in self.param_names
        }

    def weights(self, name: str) -> WeightsView:
        """Lazy ``(T, *shape)`` view of parameter ``name`` over the committed snapshots."""
        if name not in self._arrays:
            raise KeyError(
                f"No parameter '{name}' in the store at '{self.location}'. Recorded: "
                f"{self.param_names[:10]}{' ...' if len(self.param_names) > 10 else ''}."
            )
        return WeightsView(self._arrays[name], len(self), self._params[name]["dtype"])

    def model_at(self, t: int, template: nn.Module) -> nn.Module:
        """A copy of ``template`` holding the weights of snapshot ``t``.

        Args:
            t: snapshot index (negative counts from the end).
            template: a module of the recorded architecture (wrappers are unwrapped).

        Raises:
            ConfigError: the template lacks recorded tensors or has other shapes.
        """
        from ..arch import unwrap_model

        state = self[t]
        model = copy.deepcopy(unwrap_model(template))
        own = model.state_dict()
        missing = [n for n in state if n not in own]
        bad = [n for n in state if n in own and tuple(own[n].shape) != tuple(state[n].shape)]
        if missing or bad:
            raise ConfigError(
                f"Expected a template with the recorded tensors, but it lacks {missing[:5]} "
                f"and has other shapes for {bad[:5]}. Pass a module of the recorded "
                f"architecture."
            )
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value.to(own[name].dtype))
        return model

    def __repr__(self) -> str:
        steps = f"steps {self.steps[0]}..{self.steps[-1]}" if len(self) else "empty"
        return f"Trajectory('{self.location}', {len(self)} snapshots, {steps})"


def _to_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    array = np.require(array, requirements=["C", "W"])  # keeps 0-d tensors 0-d
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def open_trajectory(location: str | os.PathLike) -> Trajectory:
    """Open a trajectory store (local path or URL) for reading.

    Raises:
        NotAStoreError: nothing, or something else than a hyperlapse store, is there.
        MissingDependencyError: the URL's protocol needs a package that is not installed.
    """
    return Trajectory(location)


def open_trajectories(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Trajectory]:
    """Open several stores: a glob pattern (sorted matches) or an iterable of paths/URLs.

    Raises:
        NotAStoreError: the pattern matches nothing, or a match is not a store.
    """
    if isinstance(paths, (str, os.PathLike)):
        pattern = os.fspath(paths)
        if fmt.is_url(pattern) or not _glob.has_magic(pattern):
            return [open_trajectory(pattern)]
        matches = sorted(_glob.glob(pattern))
        if not matches:
            from ..errors import NotAStoreError

            raise NotAStoreError(
                f"Expected the pattern '{pattern}' to match trajectory stores, but it matches "
                f"nothing. Check the pattern (e.g. 'runs/*.zarr')."
            )
        return [open_trajectory(p) for p in matches]
    return [open_trajectory(p) for p in paths]
