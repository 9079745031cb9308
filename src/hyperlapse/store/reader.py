"""Read trajectory stores: :func:`open_trajectory` -> :class:`Trajectory`.

A reader sees exactly the committed snapshots (``attrs["committed"]``), never an array's shape,
so it can follow a run that another process is still writing (:meth:`Trajectory.refresh`).
"""

from __future__ import annotations

import asyncio
import copy
import glob as _glob
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import ConfigError, CorruptStoreError, EmptyStoreError, StoreNotReadyError
from . import format as fmt
from .location import LocationLike, StoreLocation
from .shards import MISSING, parse_index

__all__ = ["Trajectory", "WeightsView", "open_trajectory", "open_trajectories"]


_ERRORS = (ValueError, OSError, KeyError, TypeError, RuntimeError, IndexError)


class WeightsView:
    """A lazy ``(T, *shape)`` view of one parameter over the committed snapshots.

    Indexing reads only what is asked for (``view[t]``, ``view[a:b]``, ``view[:, 0]``);
    ``np.asarray(view)`` reads it all. Every snapshot read is checked: a missing or damaged
    inner chunk raises :class:`~hyperlapse.errors.CorruptStoreError`, never zeros. ``.zarr`` is
    the underlying Zarr array (its shape may run ahead: slice it to ``len(view)``), ``.shards``
    its shard shape (use it as dask chunks).
    """

    def __init__(self, traj: Trajectory, name: str) -> None:
        self._traj = traj
        self.name = name
        self.zarr = traj._array(name)
        self.shape = (len(traj), *self.zarr.shape[1:])
        self.logical_dtype = traj._params[name]["dtype"]
        self.dtype = self.zarr.dtype
        self.shards = self.zarr.shards

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
            times = np.array([t])
        elif isinstance(first, slice):
            first = slice(*first.indices(n))
            times = np.arange(n)[first]
        else:
            first = np.arange(n)[first]
            times = np.atleast_1d(first)
        return self._traj._read(self.name, first, rest, times)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"WeightsView(shape={self.shape}, dtype={self.logical_dtype})"


class _Growing:
    """A cache of rows that grows geometrically, so extending it by m rows costs O(m)."""

    def __init__(self, dtype: Any, row: tuple[int, ...] = ()) -> None:
        self.data = np.empty((0, *row), dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.n + len(values)
        if end > len(self.data):
            bigger = np.empty(
                (max(end, 2 * len(self.data), 16), *self.data.shape[1:]), dtype=self.data.dtype
            )
            bigger[: self.n] = self.data[: self.n]
            self.data = bigger
        self.data[self.n : end] = values
        self.n = end


class Trajectory:
    """The committed snapshots of one trajectory store.

    Opening and :meth:`refresh` read the group's ``zarr.json`` (and the metadata of arrays whose
    capacity was outgrown): their cost does not grow with the run's length. ``steps``,
    ``wall_time`` and ``metrics`` are read on first use and then extended by the new entries
    only.

    Attributes:
        steps: ``(T,)`` int64 optimizer step of each snapshot.
        wall_time: ``(T,)`` float64 seconds since the epoch.
        metrics: name -> ``(T,)`` float64, NaN where the scalar was not logged.
        param_names: recorded tensor names (as in the unwrapped module's ``state_dict``).
        architecture: :func:`hyperlapse.arch.describe_mlp` output, or ``None`` for non-MLPs.
        attrs: all group attributes.
    """

    def __init__(self, location: LocationLike) -> None:
        self.where = StoreLocation.of(location)
        self.location = self.where.shown
        fmt.check_location(self.where)
        self._store = self.where.make_store(read_only=True)
        self._length = 0
        self._handles: dict[str, zarr.Array] = {}
        self._cache: dict[str, _Growing] = {}
        self._indexes: dict[tuple[str, int], int] = {}  # (param, shard) -> snapshots checked
        # (param, snapshot) -> why its chunk is not the one recorded there (version 3)
        self._misplaced: dict[tuple[str, int], str] = {}
        self.refresh()

    def refresh(self) -> int:
        """Re-read the store to pick up snapshots committed since the last read.

        Returns:
            The number of new snapshots (negative if a resumed writer cut the run back).

        Raises:
            CorruptStoreError: the metadata is damaged or an array is shorter than
                ``committed``.
        """
        old = self._length
        attrs = fmt.read_attrs(self._store, self.location)
        n = fmt.committed(attrs)
        self.attrs = attrs
        self.param_names = [p["name"] for p in attrs["parameters"]]
        self._column = {name: j for j, name in enumerate(self.param_names)}
        self._params = {p["name"]: p for p in attrs["parameters"]}
        self.architecture = attrs.get("architecture")
        self._k = int(attrs["snapshots_per_chunk"])
        self._version = int(attrs["version"])
        identity = (attrs.get("store_id"), attrs.get("created"), str(attrs["parameters"]), self._k)
        replaced = getattr(self, "_identity", identity) != identity  # mode="replace" swapped
        self._identity = identity  # another store in (its handles describe the old arrays)
        if replaced:
            self._handles.clear()
        if n < old or replaced:  # cut back by a resumed writer: forget what was read past n
            self._cache.clear()
            self._indexes.clear()  # rewritten past n: check again
            self._misplaced.clear()
        self._length = n
        if n:  # nothing to read before the first commit (the arrays may still be created)
            for path in self._paths():
                self._open(path, n)
        return n - old

    def _paths(self) -> list[str]:
        return (
            [f"{fmt.PARAMS}/{name}" for name in self.param_names]
            + [fmt.STEP, fmt.WALL_TIME]
            + ([fmt.CHECKSUMS] if self.bound_checksums else [])
            + [f"{fmt.METRICS}/{m}" for m in self.attrs.get("metrics", [])]
        )

    @property
    def bound_checksums(self) -> bool:
        """Whether every chunk's checksum is bound to its parameter and snapshot (format
        version 3: swapped or copied shard files are detected); older stores check each
        chunk's bytes only."""
        return self._version >= fmt.BOUND_CHECKSUMS

    def _open(self, path: str, n: int) -> zarr.Array:
        """The array at ``path``, reopened only when its known shape is shorter than ``n``."""
        arr = self._handles.get(path)
        if arr is not None and arr.shape[0] >= n:
            return arr
        try:
            arr = zarr.open_array(self._store, path=path, mode="r")
        except FileNotFoundError as exc:
            if n == 0:  # no snapshot committed: its writer is still creating the arrays
                raise StoreNotReadyError(
                    f"The store at '{self.location}' is not ready yet: no snapshot is committed "
                    f"and its array '{path}' is still being created by a writer. Wait for the "
                    f"first commit (refresh()), or use `hyperlapse watch {self.location}`."
                ) from exc
            raise self._corrupt(
                f"the array '{path}' that its attrs name is missing ({exc})"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for bad metadata
            raise self._corrupt(
                f"the metadata of the array '{path}' cannot be read ({type(exc).__name__}: {exc})"
            ) from exc
        if arr.ndim < 1 or arr.shape[0] < n:
            raise self._corrupt(
                f"{n} snapshots are committed but the array '{path}' holds "
                f"{arr.shape[0] if arr.ndim else 0}"
            )
        fmt.check_array_metadata(arr, path, self.attrs, self.location)
        self._handles[path] = arr
        return arr

    @property
    def probes(self) -> torch.Tensor | None:
        """Probe inputs ``[B, n_0]`` stored with the run (``TrajectoryRecorder(probes=)``), or
        None. ``hyperlapse analyze`` uses them for the input-space geometry by default.

        Raises:
            CorruptStoreError: the attrs say probes were stored but they cannot be read.
        """
        meta = self.attrs.get("probes")
        if meta is None:
            return None
        want = (meta.get("num"), meta.get("features")) if isinstance(meta, dict) else None
        try:
            data = np.asarray(zarr.open_array(self._store, path=fmt.PROBES, mode="r")[...])
        except _ERRORS as exc:
            raise self._corrupt(
                f"its probe inputs '{fmt.PROBES}' cannot be read ({type(exc).__name__}: {exc})"
            ) from exc
        if data.ndim != 2 or tuple(data.shape) != want:
            raise self._corrupt(
                f"its probe inputs have shape {data.shape}, but the attrs say {want}"
            )
        return torch.from_numpy(data.copy())

    def _corrupt(self, what: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"The store at '{self.location}' is damaged: {what}. Restore it from a copy or "
            f"record again; `hyperlapse info --verify {self.location}` lists every damaged "
            f"snapshot."
        )

    def _array(self, name: str) -> zarr.Array:
        return self._open(f"{fmt.PARAMS}/{name}", self._length)

    # -- the 1-D arrays, read on first use and extended incrementally ------------------------
    def _scalar(self, path: str, dtype: Any, row: tuple[int, ...] = ()) -> np.ndarray:
        n = self._length
        cache = self._cache.get(path)
        if cache is None:
            cache = self._cache[path] = _Growing(dtype, row)
        if cache.n < n:
            arr = self._open(path, n)
            self._check_scalar_chunks(path, arr, cache.n, n)
            try:
                values = np.asarray(arr[cache.n : n], dtype=dtype)
            except _ERRORS as exc:
                raise self._corrupt(
                    f"the entries {cache.n}..{n - 1} of '{path}' cannot be read "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            cache.extend(values)
        return cache.data[:n]

    def _check_scalar_chunks(self, path: str, arr: zarr.Array, start: int, end: int) -> None:
        # version 1 skipped all-NaN metric chunks; step and wall_time chunks always exist
        if self._version < 2 and path.startswith(fmt.METRICS + "/"):
            return
        c = arr.chunks[0]
        for i in range(start // c, (end - 1) // c + 1):
            key = f"{path}/{arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))}"
            if not sync(self._store.exists(key)):
                raise self._corrupt(
                    f"the chunk holding snapshots {i * c}..{min((i + 1) * c, end) - 1} of "
                    f"'{path}' is missing (it was written before they were committed)"
                )

    @property
    def steps(self) -> np.ndarray:
        return self._scalar(fmt.STEP, np.int64)

    @property
    def wall_time(self) -> np.ndarray:
        return self._scalar(fmt.WALL_TIME, np.float64)

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        return {
            m: self._scalar(f"{fmt.METRICS}/{m}", np.float64) for m in self.attrs.get("metrics", [])
        }

    # -- snapshots ---------------------------------------------------------------------------
    def _check_shards(self, name: str, times: np.ndarray) -> None:
        """Every snapshot in ``times`` has its inner chunk in its shard's index."""
        if math.prod(self._params[name]["shape"]) == 0 or len(times) == 0:
            return
        k, n = self._k, self._length
        arr = self._array(name)
        for shard in np.unique(np.asarray(times) // k):
            shard = int(shard)
            need = min(k, n - shard * k)
            if self._indexes.get((name, shard), 0) >= need:
                continue
            key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
            try:
                tail = sync(
                    self._store.get(
                        f"{fmt.PARAMS}/{name}/{key}",
                        prototype=default_buffer_prototype(),
                        byte_range=SuffixByteRequest(16 * k + 4),
                    )
                )
            except OSError as exc:
                raise self._snapshot_error(
                    name, shard * k, f"its shard cannot be read ({exc})"
                ) from exc
            if tail is None:
                last = shard * k + need - 1
                raise self._snapshot_error(
                    name, shard * k, f"the shard file of snapshots {shard * k}..{last} is missing"
                )
            try:
                index = parse_index(tail.to_bytes(), k)
            except ValueError as exc:
                raise self._snapshot_error(
                    name, shard * k, f"the index of its shard is damaged ({exc})"
                ) from exc
            missing = np.flatnonzero(index[:need, 0] == MISSING)
            if len(missing):
                raise self._snapshot_error(
                    name, shard * k + int(missing[0]), "its inner chunk is missing from the shard"
                )
            if self.bound_checksums:
                have = self._indexes.get((name, shard), 0)
                self._check_bound(name, shard, f"{fmt.PARAMS}/{name}/{key}", index, have, need)
            self._indexes[(name, shard)] = need
        for t in np.asarray(times).reshape(-1):
            why = self._misplaced.get((name, int(t)))
            if why is not None:
                raise self._snapshot_error(name, int(t), why)

    def _check_bound(
        self, name: str, shard: int, key: str, index: np.ndarray, have: int, need: int
    ) -> None:
        """Format version 3: inner chunks ``have..need-1`` of the shard carry the checksums the
        ``checksums`` array recorded for this parameter and these snapshots (their bytes are
        checked against those checksums when they are decoded)."""
        k = self._k
        expected = self._checksums()[shard * k + have : shard * k + need, self._column[name]]

        async def tails() -> list[Any]:
            return await asyncio.gather(*(
                self._store.get(key, prototype=default_buffer_prototype(),
                                byte_range=RangeByteRequest(int(off + size - 4), int(off + size)))
                for off, size in index[have:need]
            ))

        try:
            got = self._local_tails(key, index[have:need]) if not self.where.is_url else [
                None if t is None else t.to_bytes() for t in sync(tails())
            ]
        except OSError as exc:
            raise self._snapshot_error(
                name, shard * k + have, f"its shard cannot be read ({exc})"
            ) from exc
        for i, (tail, want) in enumerate(zip(got, expected, strict=True)):
            found = None if tail is None or len(tail) != 4 else int.from_bytes(tail, "little")
            if found != int(want):
                self._misplaced[(name, shard * k + have + i)] = (
                    f"the chunk stored there carries checksum {_hex(found)}, but the checksum "
                    f"recorded for this parameter and snapshot is {_hex(int(want))}: the bytes "
                    f"belong to another snapshot or parameter (shard files swapped or copied)"
                )

    def _local_tails(self, key: str, spans: np.ndarray) -> list[bytes | None]:
        """The last 4 bytes of each ``(offset, nbytes)`` chunk of a local shard file: one open
        and a ``pread`` each (through the store API each would cost a file open and a thread
        hop, which doubled the time to read a run)."""
        fd = os.open(self.where.local() / key, os.O_RDONLY)
        try:
            return [os.pread(fd, 4, int(off + size - 4)) for off, size in spans]
        finally:
            os.close(fd)

    def _checksums(self) -> np.ndarray:
        """``(T, P)`` recorded chunk checksums (format version 3)."""
        return self._scalar(fmt.CHECKSUMS, np.uint32, (len(self.param_names),))

    def _snapshot_error(self, name: str, t: int, what: str) -> CorruptStoreError:
        step = ""
        cache = self._cache.get(fmt.STEP)
        if cache is not None and t < cache.n:
            step = f", step {int(cache.data[t])}"
        return self._corrupt(f"parameter '{name}' at snapshot {t}{step}: {what}")

    def _read(self, name: str, first: Any, rest: tuple, times: np.ndarray) -> np.ndarray:
        self._check_shards(name, times)
        arr = self._array(name)
        try:
            return arr[(first, *rest)]
        except _ERRORS as exc:
            bad = int(times[0])
            if len(times) > 1:  # find the damaged snapshot
                for t in times:
                    try:
                        arr[int(t)]
                    except _ERRORS:
                        bad = int(t)
                        break
            raise self._snapshot_error(
                name, bad, f"its data fails its checksum or cannot be decoded ({exc})"
            ) from exc

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
        """Snapshot ``t`` as a state dict of tensors (bit-exact with the capture).

        Raises:
            CorruptStoreError: a tensor of the snapshot is missing or damaged.
        """
        i = self._index(t)
        times = np.array([i])
        return {
            name: _to_tensor(self._read(name, i, (), times), self._params[name]["dtype"])
            for name in self.param_names
        }

    def verify(self, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Read every committed snapshot and every 1-D array; return the damage found.

        Returns:
            One ``{"what", "snapshot", "error"}`` per damaged parameter snapshot or array
            (``snapshot`` is ``None`` for a whole array); empty when the store is intact.
        """
        problems: list[dict[str, Any]] = []
        scalars: list[tuple[str, Any, tuple[int, ...]]] = [
            (fmt.STEP, np.int64, ()), (fmt.WALL_TIME, np.float64, ())
        ]
        if self.bound_checksums:
            scalars.append((fmt.CHECKSUMS, np.uint32, (len(self.param_names),)))
        scalars += [(f"{fmt.METRICS}/{m}", np.float64, ()) for m in self.attrs.get("metrics", [])]
        for path, dtype, row in scalars:
            try:
                self._scalar(path, dtype, row)
            except CorruptStoreError as exc:
                problems.append({"what": path, "snapshot": None, "error": str(exc)})
        n, k = len(self), self._k
        for shard in range(-(-n // k)):
            times = np.arange(shard * k, min((shard + 1) * k, n))
            for name in self.param_names:
                try:
                    self._read(name, slice(int(times[0]), int(times[-1]) + 1), (), times)
                    continue
                except CorruptStoreError:
                    pass
                for t in times:  # which snapshots exactly
                    try:
                        self._read(name, int(t), (), np.array([t]))
                    except CorruptStoreError as exc:
                        problems.append({"what": name, "snapshot": int(t), "error": str(exc)})
            if progress is not None:
                progress(int(times[-1]) + 1, n)
        return problems

    def weights(self, name: str) -> WeightsView:
        """Lazy ``(T, *shape)`` view of parameter ``name`` over the committed snapshots."""
        if name not in self._params:
            raise KeyError(
                f"No parameter '{name}' in the store at '{self.location}'. Recorded: "
                f"{self.param_names[:10]}{' ...' if len(self.param_names) > 10 else ''}."
            )
        return WeightsView(self, name)

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


def _hex(value: int | None) -> str:
    return "none (chunk unreadable)" if value is None else f"{value:08x}"


def _to_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    array = np.require(array, requirements=["C", "W"])  # keeps 0-d tensors 0-d
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def open_trajectory(location: LocationLike) -> Trajectory:
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
