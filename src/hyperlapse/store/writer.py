"""The single writer of a trajectory store: host-side buffering and the commit protocol.

:class:`StoreWriter` is synchronous and single-threaded; the recorder drives it from its
background thread. Each snapshot of each parameter is compressed when it arrives (one inner
chunk, :mod:`hyperlapse.store.shards`) and kept until its shard is complete. A flush

1. grows every array to the new length (``zarr.json`` of each array: the shape runs ahead);
2. writes the current shard object of every parameter (all its inner chunks so far, assembled
   from the kept bytes) and the new entries of ``step``, ``wall_time`` and ``metrics/*``;
3. writes the group attrs with the new ``committed`` (one atomic ``zarr.json`` replace).

A flush happens when a shard is complete and at least every ``flush_every_s`` seconds while
snapshots are pending. A time flush writes a partial shard; the next flush writes that shard
object again with more inner chunks, the committed ones byte for byte the same (they are reused,
not re-encoded). Stores replace an object atomically (``LocalStore``: temp file + rename; object
stores: one PUT), so a crash at any point leaves the old or the new shard, both holding every
committed snapshot.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import HyperlapseError, StoreError
from . import format as fmt
from .shards import ChunkEncoder, assemble_shard, split_shard

MetricsLike = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def _versions() -> dict[str, str]:
    import torch

    from .. import __version__

    return {
        "hyperlapse": __version__,
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


class StoreWriter:
    """Create or resume a trajectory store and append snapshots to it.

    Args:
        location: local path (missing parents are created) or URL.
        parameters: ``[{"name", "shape", "dtype"}]`` in capture order; ``dtype`` is the logical
            dtype ("float32", "float16", "bfloat16", or a numpy dtype name for integer buffers).
        architecture: ``describe_mlp`` output or ``None``.
        config: the recorder's configuration (stored in attrs).
        snapshots_per_chunk: shard length k along time for new stores (``None``: from size).
        flush_every_s: time flush interval; ``None`` writes whole shards only.

    Raises:
        NotAStoreError: something that is not a hyperlapse store exists at ``location``.
        IncompatibleStoreError: the existing store holds other parameters or architecture.
        StoreError: the location cannot be written.
    """

    def __init__(
        self,
        location: str | os.PathLike,
        parameters: list[dict[str, Any]],
        *,
        architecture: dict[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        snapshots_per_chunk: int | None = None,
        flush_every_s: float | None = 2.0,
    ) -> None:
        self.location = os.fspath(location)
        self.parameters = [
            {"name": p["name"], "shape": [int(s) for s in p["shape"]], "dtype": str(p["dtype"])}
            for p in parameters
        ]
        self.flush_every_s = flush_every_s
        self.dropped = 0
        self.report_dropped = 0
        self.nonfinite = 0
        try:
            if fmt.store_exists(location) and not _is_empty_dir(location):
                self._resume(architecture)
            else:
                self._create(architecture, dict(config or {}), snapshots_per_chunk)
        except HyperlapseError:
            raise
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and fmt.is_url(location):
                raise
            raise StoreError(
                f"Expected a writable location for the trajectory store, but writing to "
                f"'{self.location}' failed ({type(exc).__name__}: {exc}). Choose a writable "
                f"path (check permissions and free space) and try again."
            ) from exc
        self._allocate_buffers()
        self._last_flush = time.monotonic()

    # -- opening ---------------------------------------------------------------------------
    def _create(
        self, architecture: dict[str, Any] | None, config: dict[str, Any], k: int | None
    ) -> None:
        if not fmt.is_url(self.location):
            fmt.local_path(self.location).mkdir(parents=True, exist_ok=True)
        if k is None:
            biggest = max(
                math.prod(p["shape"]) * np.dtype(self._stored(p["dtype"])).itemsize
                for p in self.parameters
            )
            k = fmt.snapshots_per_chunk_for(biggest)
        self.k = int(k)
        attrs = {
            "format": fmt.FORMAT,
            "version": fmt.VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": architecture,
            "parameters": self.parameters,
            "recorder": config,
            "versions": _versions(),
            "snapshots_per_chunk": self.k,
            "metrics": [],
            "committed": 0,
            "closed": False,
            "dropped": 0,
            "report_dropped": 0,
            "nonfinite": 0,
        }
        store = fmt.make_store(self.location, read_only=False)
        self.group = zarr.open_group(store, mode="w-", attributes=attrs)
        self.written = 0
        self.last_step: int | None = None
        self.metric_names: list[str] = []
        self._create_arrays()

    def _resume(self, architecture: dict[str, Any] | None) -> None:
        group = fmt.open_group(self.location, read_only=True)
        attrs = dict(group.attrs)
        fmt.check_compatible(attrs, self.parameters, architecture, self.location)
        self.group = fmt.open_group(self.location, read_only=False)
        self.k = int(attrs["snapshots_per_chunk"])
        self.written = fmt.committed(attrs)
        self.dropped = int(attrs.get("dropped", 0))
        self.report_dropped = int(attrs.get("report_dropped", 0))
        self.nonfinite = int(attrs.get("nonfinite", 0))
        self.metric_names = list(attrs.get("metrics", []))
        if self.written == 0:
            self.metric_names = []
            self._create_arrays()  # nothing committed: start the arrays afresh
        else:
            self._cut_back(self.written)
        steps = self.group[fmt.STEP]
        self.last_step = int(steps[self.written - 1]) if self.written else None
        self.group.attrs.update({"closed": False})

    def _create_arrays(self) -> None:
        scalar_chunk = max(self.k, (fmt.SCALAR_CHUNK // self.k) * self.k)
        for p in self.parameters:
            stored = self._stored(p["dtype"])
            shape = tuple(p["shape"])
            self.group.create_array(
                f"{fmt.PARAMS}/{p['name']}",
                shape=(0, *shape),
                dtype=stored,
                chunks=(1, *shape),
                shards=(self.k, *shape),
                compressors=fmt.default_compressor(stored),
                fill_value=0,
                attributes={"hyperlapse_dtype": p["dtype"]},
                dimension_names=("snapshot", *(f"dim{i}" for i in range(len(shape)))),
                overwrite=True,
            )
        for name, dtype, fill in ((fmt.STEP, "int64", -1), (fmt.WALL_TIME, "float64", np.nan)):
            self.group.create_array(
                name,
                shape=(0,),
                dtype=dtype,
                chunks=(scalar_chunk,),
                fill_value=fill,
                dimension_names=("snapshot",),
                overwrite=True,
            )
        self._scalar_chunk = scalar_chunk

    def _cut_back(self, n: int) -> None:
        """Resize every array to ``n`` snapshots (drops whole shards past it)."""
        for path in self._array_paths():
            arr = self.group[path]
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def _array_paths(self) -> list[str]:
        return (
            [f"{fmt.PARAMS}/{p['name']}" for p in self.parameters]
            + [fmt.STEP, fmt.WALL_TIME]
            + [f"{fmt.METRICS}/{m}" for m in self.metric_names]
        )

    @staticmethod
    def _stored(dtype: str) -> str:
        return fmt.STORED_DTYPES.get(dtype, dtype)

    def _allocate_buffers(self) -> None:
        self._arrays = {p["name"]: self.group[f"{fmt.PARAMS}/{p['name']}"] for p in self.parameters}
        self._encoders = {
            name: ChunkEncoder(_compressor(arr)) for name, arr in self._arrays.items()
        }
        # encoded inner chunks of the current shard, from its first snapshot on
        self._chunks: dict[str, list[bytes]] = {name: [] for name in self._arrays}
        if self.written % self.k:
            self._load_partial_shard()
        self._steps = np.empty(self.k, dtype=np.int64)
        self._walls = np.empty(self.k, dtype=np.float64)
        self._metrics: list[MetricsLike] = []
        self.pending = 0
        self._scalar_chunk = self.group[fmt.STEP].chunks[0]

    def _shard_path(self, name: str, shard: int) -> Any:
        arr = self._arrays[name]
        return arr.store_path / arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))

    def _load_partial_shard(self) -> None:
        """Resuming inside a shard: keep the committed inner chunks' bytes to write them again."""
        shard, n = divmod(self.written, self.k)
        for name in self._arrays:
            buf = sync(self._shard_path(name, shard).get(prototype=default_buffer_prototype()))
            try:
                chunks = split_shard(buf.to_bytes(), self.k)[:n] if buf is not None else [None]
            except ValueError:
                chunks = [None]
            if any(c is None for c in chunks):
                raise StoreError(
                    f"The store at '{self.location}' says {self.written} snapshots are committed, "
                    f"but shard {shard} of '{name}' lacks some of them. The store is damaged; "
                    f"record to a new path."
                )
            self._chunks[name] = list(chunks)  # type: ignore[arg-type]

    # -- appending -------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Snapshots committed so far (pending rows not included)."""
        return self.written

    def append(
        self,
        state: Mapping[str, np.ndarray],
        step: int,
        wall_time: float,
        metrics: MetricsLike | None = None,
    ) -> bool:
        """Buffer one snapshot (first writing the previous shard if it is complete).

        Args:
            state: name -> array in the stored dtype and shape (bfloat16 as uint16 bits).
            step: optimizer step of the snapshot.
            wall_time: seconds since the epoch.
            metrics: scalars, or a callable returning them that is called at flush time (so the
                recorder can still add values logged after the capture).

        Returns:
            Whether the snapshot holds a NaN or infinite value (it is stored anyway).
        """
        if self.pending and (self.written + self.pending) % self.k == 0:
            self.flush()  # the previous shard is complete: write it whole
        i = self.pending
        finite = True
        for p in self.parameters:
            name = p["name"]
            value = state[name]
            if finite and p["dtype"] in ("float32", "float16"):
                finite = bool(np.isfinite(value).all())
            elif finite and p["dtype"] == "bfloat16":
                finite = not _bf16_nonfinite(value)
            self._chunks[name].append(self._encoders[name](value))
        self._steps[i] = step
        self._walls[i] = wall_time
        self._metrics.append(metrics if metrics is not None else {})
        self.pending += 1
        self.last_step = int(step)
        if not finite:
            self.nonfinite += 1
        return not finite

    def flush_due(self) -> float | None:
        """Seconds until a time flush is due (<= 0: due now); ``None`` when nothing is pending."""
        if not self.pending or self.flush_every_s is None:
            return None
        return self._last_flush + self.flush_every_s - time.monotonic()

    def flush(self) -> None:
        """Write the pending rows and commit them (data first, ``committed`` last)."""
        n, start = self.pending, self.written
        self._last_flush = time.monotonic()
        if n == 0:
            return
        end = start + n
        metrics = [m() if callable(m) else m for m in self._metrics]
        new_names = sorted({k for m in metrics for k in m} - set(self.metric_names))
        for name in new_names:
            self.group.create_array(
                f"{fmt.METRICS}/{name}",
                shape=(start,),
                dtype="float64",
                chunks=(self._scalar_chunk,),
                fill_value=np.nan,
                dimension_names=("snapshot",),
                overwrite=True,
            )
        self.metric_names += new_names
        shard = start // self.k
        for name, arr in self._arrays.items():
            arr.resize((end, *arr.shape[1:]))
            data = assemble_shard(self._chunks[name], self.k)
            sync(
                self._shard_path(name, shard).set(
                    default_buffer_prototype().buffer.from_array_like(data)
                )
            )
            if end % self.k == 0:
                self._chunks[name] = []
        for name, values in ((fmt.STEP, self._steps), (fmt.WALL_TIME, self._walls)):
            arr = self.group[name]
            arr.resize((end,))
            arr[start:end] = values[:n]
        for name in self.metric_names:
            arr = self.group[f"{fmt.METRICS}/{name}"]
            arr.resize((end,))
            arr[start:end] = np.array([_as_float(m.get(name)) for m in metrics])
        self.written, self.pending = end, 0
        self._metrics = []
        self._commit()

    def _commit(self, **extra: Any) -> None:
        self.group.attrs.update(
            {
                "committed": self.written,
                "metrics": self.metric_names,
                "dropped": self.dropped,
                "report_dropped": self.report_dropped,
                "nonfinite": self.nonfinite,
                **extra,
            }
        )

    def truncate_after_step(self, step: int) -> int:
        """Drop committed snapshots whose step is greater than ``step`` (a resumed run replays
        them). ``committed`` is lowered before any array shrinks. Returns the new length."""
        self.flush()
        if self.written == 0:
            return 0
        steps = self.group[fmt.STEP][: self.written]
        keep = int(np.searchsorted(steps, step, side="right"))
        if keep < self.written:
            self.written = keep
            self._commit()
            self._cut_back(keep)
            self.last_step = int(steps[keep - 1]) if keep else None
            self._chunks = {name: [] for name in self._arrays}
            if keep % self.k:
                self._load_partial_shard()
        return self.written

    def close(self) -> None:
        """Flush everything and mark the store as closed cleanly."""
        self.flush()
        self._commit(closed=True)


def _compressor(array: zarr.Array) -> Any:
    """The compressor of a params array's inner chunks, from its metadata."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        raise StoreError(
            f"Expected the params array '{array.path}' to be sharded (hyperlapse format), but its "
            f"codecs are {codecs}. The store was not written by hyperlapse; use another path."
        )
    inner = codecs[0].codecs
    if not isinstance(inner[0], BytesCodec) or inner[0].endian.value != "little" or len(inner) > 2:
        raise StoreError(f"Unsupported inner codecs {inner} in '{array.path}'.")
    return inner[1] if len(inner) == 2 else None


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _bf16_nonfinite(bits: np.ndarray) -> bool:
    # bfloat16: exponent bits 7..14 all ones means inf or NaN.
    return bool(((bits & 0x7F80) == 0x7F80).any())


def _is_empty_dir(location: str | os.PathLike) -> bool:
    if fmt.is_url(location):
        return False
    path = fmt.local_path(location)
    return path.is_dir() and not any(path.iterdir())
