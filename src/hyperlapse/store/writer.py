"""The single writer of a trajectory store: the commit protocol.

:class:`StoreWriter` is synchronous and single-threaded; the recorder drives it from its
background thread. It holds the store's write lock (:mod:`hyperlapse.store.lock`) from opening
to :meth:`StoreWriter.close`. The parameter shards are written by a shard sink chosen once at
opening (:mod:`hyperlapse.store.sinks`: filled in place on local uncompressed stores, assembled
and written through Zarr elsewhere; :attr:`StoreWriter.io_path`, stored as ``writer_io``).

A flush

1. grows the arrays if the new length exceeds their capacity (geometrically: the capacity at
   least doubles, so array metadata is written O(log T) times in a run of T snapshots);
2. has the sink write what the commit needs (the current shard objects on the Zarr path;
   nothing in place) and writes the new entries of ``step``, ``wall_time`` and ``metrics/*``
   (one chunk each: constant cost);
3. with ``fsync=True``, fsyncs every file written since the last commit (and new folders);
4. writes the group attrs with the new ``committed`` (one atomic ``zarr.json`` replace), and
   fsyncs it.

A flush happens when a shard is complete and at least every ``flush_every_s`` seconds while
snapshots are pending. A crash at any point leaves every committed snapshot readable: readers
trust ``committed`` only, never the arrays' shapes or slots past it. :meth:`StoreWriter.close`
makes the last fill-in-place shard list only the chunks it holds and sets every array's length
to ``committed`` (no chunk listing: the same cost at any T), so a closed store has exact shapes
for xarray and plain Zarr.

``mode`` says what to do with an existing store: "append" continues it, "create" refuses it,
"replace" builds the new store beside it and swaps it in at the first commit
(:mod:`hyperlapse.store.replace`).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync

from ..errors import (
    ConfigError,
    CorruptStoreError,
    HyperlapseError,
    NotAStoreError,
    StoreError,
    StoreExistsError,
)
from . import format as fmt
from .location import LocationLike, StoreLocation
from .lock import WriterLock
from .replace import Replacement, finish_interrupted_replace
from .sinks import open_sink

MetricsLike = Mapping[str, Any] | Callable[[], Mapping[str, Any]]

#: ``StoreWriter(mode=)``: "append" continues an existing store (creating one where there is
#: none), "create" refuses an existing one, "replace" builds a new one beside it and swaps it in
#: at its first commit.
MODES = ("append", "create", "replace")
#: Keys of the ``counters=`` mapping of append/flush/close, stored in the attrs at commit.
COUNTERS = ("dropped", "report_dropped", "recording_cost", "writes")

#: Below this ``flush_every_s``, :func:`short_flush_warning` warns about write amplification
#: (measured in benchmarks/results/store_v2.md).
SHORT_FLUSH_S = 0.1

#: Array config of the writer's handles: every chunk is written, even one equal to the fill
#: value, so a missing chunk below ``committed`` always means damage (format version 2).
_WRITE_ALL = {"write_empty_chunks": True}


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
            dtype ("float32", "float16", "bfloat16", or a numpy dtype name for integer and bool
            tensors, see ``format.SUPPORTED_DTYPES``).
        architecture: ``describe_mlp`` output or ``None``.
        config: the recorder's configuration (stored in attrs).
        snapshots_per_chunk: shard length k along time for new stores (``None``: from size).
        flush_every_s: time flush interval; ``None`` writes whole shards only.
        fsync: fsync the data of every flush before its commit, and the commit itself (local
            folders; object stores acknowledge a PUT only once it is stored). ``False`` still
            survives a process crash, but not a power loss or a kernel crash.
        compression: compressor of new stores' parameter chunks: "auto" (the measured
            compressor per dtype), "none", "lz4" or "zstd" (docs/recording.md has each one's
            cost). "none" on a local store selects the fill-in-place path (the recorder's
            "auto" resolves to it there: ``format.resolve_compression``). A resumed store keeps
            the codecs it was created with.
        mode: "append" (create the store, or continue an existing one after ``committed``),
            "create" (raise ``StoreExistsError`` if a store, even an empty one, is there) or
            "replace" (build the new store beside the old one, which stays whole and readable
            until the new one's first commit is durable; then swap it in and delete the old
            one; local stores: :mod:`hyperlapse.store.replace`).

    Attributes:
        recording_cost: set by the recorder; when not ``None`` every commit stores it in the
            attrs under ``"recording_cost"``.
        bytes_written: bytes of data objects written so far (shards, scalar chunks).
        payload_bytes: encoded bytes of the snapshots appended so far (each counted once);
            ``bytes_written / payload_bytes`` is the write amplification of time flushes.

    Raises:
        NotAStoreError: something that is not a hyperlapse store exists at ``location``.
        IncompatibleStoreError: the existing store holds other parameters or architecture.
        StoreLockedError: another writer holds the store.
        StoreExistsError: ``mode="create"`` and a store exists at ``location``.
        CorruptStoreError: the existing store is damaged.
        ConfigError: a parameter's dtype cannot be stored.
        StoreError: the location cannot be written.
    """

    def __init__(
        self,
        location: LocationLike,
        parameters: list[dict[str, Any]],
        *,
        architecture: dict[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        snapshots_per_chunk: int | None = None,
        flush_every_s: float | None = 2.0,
        fsync: bool = True,
        compression: str = "auto",
        mode: str = "append",
    ) -> None:
        if mode not in MODES:
            raise ConfigError(
                f"Expected mode to be one of {list(MODES)}, but got {mode!r}. 'append' continues "
                f"an existing store (or creates one), 'create' refuses an existing one, "
                f"'replace' replaces it once the new run's first snapshot is committed."
            )
        self.mode = mode
        #: where the store is (as given); ``_loc`` is where this writer does its IO: the same
        #: place, or while replacing a descriptor path of the new store's folder
        self._where = StoreLocation.of(location)
        self._loc = self._where
        self.location = self._where.shown
        self.compression = fmt.check_compression(compression)
        self.parameters = [
            {"name": p["name"], "shape": [int(s) for s in p["shape"]], "dtype": str(p["dtype"])}
            for p in parameters
        ]
        _check_parameters(self.parameters)
        self.flush_every_s = flush_every_s
        self.fsync = bool(fsync) and not self._where.is_url
        self.recording_cost: dict[str, Any] | None = None
        #: which thread writes snapshot bytes ("inline" / "background"), set by the recorder;
        #: stored in the attrs on commit when not ``None``
        self.writes: str | None = None
        self.dropped = 0
        self.report_dropped = 0
        self.nonfinite = 0
        self._scalar_bytes = 0  # bytes of step/wall_time/metrics chunks written
        self.flushes = 0
        self._dirty: set[str] = set()
        self._lock: WriterLock | None = None
        self._replacing: Replacement | None = None
        creating = False
        where = self._where
        try:
            if not where.is_url:
                finish_interrupted_replace(where)
            fresh = not fmt.store_exists(where) or _is_empty_dir(where)
            if not fresh and mode == "create":
                raise self._exists_error()
            if not fresh and mode == "replace" and where.is_url:
                raise StoreError(
                    f"Expected a local store for mode='replace', but '{self.location}' is a URL: "
                    f"object stores cannot swap a store atomically. Delete the old store (or "
                    f"record to a new URL) and try again."
                )
            if not fresh and mode == "replace":
                self._replacing = Replacement.begin(where, self._existing_attrs_or_damage())
                self._lock = self._replacing.new_lock
                self._loc = self._replacing.new
                creating = True
                self._create(architecture, dict(config or {}), snapshots_per_chunk)
            else:
                existing = None if fresh else self._existing_attrs()
                lock = WriterLock(where)
                lock.acquire(existing)
                self._lock = lock
                if fmt.store_exists(where) and not _is_empty_dir(where):
                    if mode != "append":  # created by someone else meanwhile
                        raise self._exists_error()
                    existing = self._existing_attrs()  # re-read under the lock
                if existing is not None:
                    self._resume(existing, architecture)
                else:
                    creating = True
                    self._create(architecture, dict(config or {}), snapshots_per_chunk)
            self._allocate_buffers()
        except BaseException as exc:
            if creating:  # still holding the lock: nobody else can be writing there
                self._remove_half_made()
            self.release()
            if isinstance(exc, HyperlapseError) or not isinstance(exc, OSError):
                raise
            if isinstance(exc, FileNotFoundError) and where.is_url:
                raise
            raise StoreError(
                f"Expected a writable location for the trajectory store, but writing to "
                f"'{self.location}' failed ({type(exc).__name__}: {exc}). Choose a writable "
                f"path (check permissions and free space) and try again."
            ) from exc
        self._last_flush = time.monotonic()

    # -- opening ---------------------------------------------------------------------------
    def _existing_attrs(self) -> dict[str, Any] | None:
        if not self._where.is_url:
            fmt.check_location(self._where)
        return fmt.read_attrs(fmt.make_store(self._where, read_only=True), self.location)

    def _existing_attrs_or_damage(self) -> dict[str, Any] | None:
        """The attrs of the store to be replaced; ``None`` if it is damaged (replacing it is
        fine) but never anything that is not a hyperlapse store (that is refused)."""
        try:
            return self._existing_attrs()
        except NotAStoreError:
            raise
        except StoreError:
            return None

    def _exists_error(self) -> StoreExistsError:
        try:
            attrs = self._existing_attrs()
        except NotAStoreError:
            raise
        except StoreError as exc:
            what = f"a store that cannot be read ({type(exc).__name__})"
        else:
            n = fmt.committed(attrs or {})
            what = f"a store with {n} committed snapshot{'s' if n != 1 else ''}"
        return StoreExistsError(
            f"Expected no store at '{self.location}' (mode='{self.mode}'), but found {what}. "
            f"Use mode='append' to continue it, mode='replace' to replace it (the old one stays "
            f"until the new run's first snapshot is committed), or choose another path."
        )

    def _take_counters(self, counters: Mapping[str, Any] | None) -> None:
        """Counters the recorder passes with append/flush/close, stored at the next commit."""
        if not counters:
            return
        unknown = set(counters) - set(COUNTERS)
        if unknown:
            raise ConfigError(
                f"Expected counters among {list(COUNTERS)}, but got {sorted(unknown)}."
            )
        for key, value in counters.items():
            if key == "recording_cost":
                value = None if value is None else dict(value)
            setattr(self, key, value)

    def _remove_half_made(self) -> None:
        """A failed creation leaves nothing behind that would block a retry at the same path."""
        if self._loc.is_url:
            try:
                sync(self._loc.make_store(read_only=False).delete_dir(""))
            except Exception:  # noqa: BLE001 - best effort; the original error is raised
                pass
            return
        path = self._loc.local()
        if path.is_dir():
            for child in path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _create(
        self, architecture: dict[str, Any] | None, config: dict[str, Any], k: int | None
    ) -> None:
        if k is None:
            biggest = max(
                max(math.prod(p["shape"]), 1) * np.dtype(self._stored(p["dtype"])).itemsize
                for p in self.parameters
            )
            k = fmt.snapshots_per_chunk_for(biggest)
        self.k = int(k)
        self.architecture = architecture
        assert self._lock is not None
        attrs = {
            "format": fmt.FORMAT,
            "version": fmt.VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "store_id": uuid.uuid4().hex,  # tells a reader that another store took this place
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
            "writer": self._lock.owner,
        }
        store = self._loc.make_store(read_only=False)
        self.group = zarr.open_group(store, mode="w-", attributes=attrs)  # "w" would
        # delete the folder, and with it the flock held on it
        self.written = 0
        self.last_step: int | None = None
        self.metric_names: list[str] = []
        self.capacity = self.k
        self._high = self.capacity
        self._create_arrays()

    def _resume(self, attrs: dict[str, Any], architecture: dict[str, Any] | None) -> None:
        if attrs["version"] != fmt.VERSION:
            raise fmt.IncompatibleStoreError(
                f"Expected a store of format version {fmt.VERSION} to append to, but the store at "
                f"'{self.location}' has version {attrs['version']}. hyperlapse reads it but does "
                f"not append to it (that would mix formats); record to a new path."
            )
        fmt.check_compatible(attrs, self.parameters, architecture, self.location)
        self.architecture = architecture
        self._clean_partials()
        self.group = fmt.open_group(self._loc, read_only=False)
        self.k = int(attrs["snapshots_per_chunk"])
        self.written = fmt.committed(attrs)
        self.dropped = int(attrs.get("dropped", 0))
        self.report_dropped = int(attrs.get("report_dropped", 0))
        self.nonfinite = int(attrs.get("nonfinite", 0))
        self.metric_names = list(attrs.get("metrics", []))
        if self.written == 0:
            self.metric_names = []
            self.capacity = self.k
            self._create_arrays()  # nothing committed: start the arrays afresh
        else:
            shapes = {}
            for path in self._array_paths():
                try:
                    arr = self.group[path]
                    shapes[path] = arr.shape[0]
                except Exception as exc:  # noqa: BLE001 - zarr raises several types
                    raise CorruptStoreError(
                        f"The store at '{self.location}' is damaged: its array '{path}' cannot "
                        f"be opened ({type(exc).__name__}: {exc}). Record to a new path."
                    ) from exc
                fmt.check_array_metadata(arr, path, attrs, self.location)
            short = {p: s for p, s in shapes.items() if s < self.written}
            if short:
                path, size = next(iter(short.items()))
                raise CorruptStoreError(
                    f"The store at '{self.location}' is damaged: {self.written} snapshots are "
                    f"committed but the array '{path}' holds {size}. Record to a new path."
                )
            self.capacity = min(shapes.values())
        self._high = max(shapes.values()) if self.written else self.capacity
        steps = self.group[fmt.STEP]
        self.last_step = int(steps[self.written - 1]) if self.written else None
        self._commit(closed=False)

    def _clean_partials(self) -> None:
        """Remove the temp files (``*.partial``) a killed writer left behind."""
        if self._loc.is_url:
            return
        for path in self._loc.local().rglob("*.partial"):
            try:
                path.unlink()
            except OSError:
                pass

    def _create_arrays(self) -> None:
        scalar_chunk = max(self.k, (fmt.SCALAR_CHUNK // self.k) * self.k)
        dims = fmt.dimension_names(self.parameters, self.architecture)
        for p in self.parameters:
            stored = self._stored(p["dtype"])
            shape = tuple(p["shape"])
            inner = tuple(max(s, 1) for s in shape)  # a zero-size tensor still needs a chunk
            self.group.create_array(
                f"{fmt.PARAMS}/{p['name']}",
                shape=(self.capacity, *shape),
                dtype=stored,
                chunks=(1, *inner),
                shards=(self.k, *inner),
                compressors=fmt.param_compressors(stored, self.compression),
                fill_value=0,
                attributes={"hyperlapse_dtype": p["dtype"], "coordinates": fmt.STEP},
                dimension_names=dims[p["name"]],
                overwrite=True,
            )
        for name, dtype, fill in ((fmt.STEP, "int64", -1), (fmt.WALL_TIME, "float64", np.nan)):
            self._create_scalar(name, dtype, fill, scalar_chunk)
        names = [p["name"] for p in self.parameters]
        self.group.create_array(
            fmt.CHECKSUMS,
            shape=(self.capacity, len(names)),
            dtype="uint32",
            chunks=(scalar_chunk, len(names)),
            compressors=[Crc32cCodec()],
            fill_value=0,
            dimension_names=(fmt.SNAPSHOT_DIM, fmt.PARAMETER_DIM),
            attributes={"parameters": names, "coordinates": fmt.STEP},
            overwrite=True,
        )
        self._scalar_chunk = scalar_chunk

    def _create_scalar(self, name: str, dtype: str, fill: Any, chunk: int) -> None:
        self.group.create_array(
            name,
            shape=(self.capacity,),
            dtype=dtype,
            chunks=(chunk,),
            compressors=[Crc32cCodec()],
            fill_value=fill,
            dimension_names=(fmt.SNAPSHOT_DIM,),
            attributes={} if name == fmt.STEP else {"coordinates": fmt.STEP},
            overwrite=True,
        )

    def _array_paths(self) -> list[str]:
        return (
            [f"{fmt.PARAMS}/{p['name']}" for p in self.parameters]
            + [fmt.STEP, fmt.WALL_TIME, fmt.CHECKSUMS]
            + [f"{fmt.METRICS}/{m}" for m in self.metric_names]
        )

    def _handle(self, path: str) -> zarr.Array:
        # open_array ignores config=; with_config is what makes zarr write all-NaN chunks
        return zarr.open_array(self.group.store, path=path, mode="r+").with_config(_WRITE_ALL)

    @staticmethod
    def _stored(dtype: str) -> str:
        return fmt.STORED_DTYPES.get(dtype, dtype)

    def _allocate_buffers(self) -> None:
        arrays = {p["name"]: self.group[f"{fmt.PARAMS}/{p['name']}"] for p in self.parameters}
        self._arrays = arrays  # handles for resizing
        self._sink = open_sink(self._loc, arrays, self.k, self.written, fsync=self.fsync)
        self._steps = np.empty(self.k, dtype=np.int64)
        self._walls = np.empty(self.k, dtype=np.float64)
        self._metrics: list[MetricsLike] = []
        self.pending = 0
        self._scalars = {p: self._handle(p) for p in self._array_paths()[len(self.parameters) :]}
        self._scalar_chunk = self._scalars[fmt.STEP].chunks[0]

    @property
    def io_path(self) -> str | None:
        """How parameter snapshots reach the files: "buffered" or "odirect" (filled in place)
        or "zarr" (:func:`hyperlapse.store.sinks.open_sink`); ``None`` before the arrays
        are open."""
        sink = getattr(self, "_sink", None)
        return None if sink is None else sink.name

    # -- appending -------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Snapshots committed so far (pending rows not included)."""
        return self.written

    def append(
        self,
        state: Mapping[str, np.ndarray] | None,
        step: int,
        wall_time: float,
        metrics: MetricsLike | None = None,
        *,
        finite: bool | None = None,
        counters: Mapping[str, Any] | None = None,
    ) -> bool:
        """Buffer one snapshot (first writing the previous shard if it is complete).

        Args:
            state: name -> array in the stored dtype and shape (bfloat16 as uint16 bits), or
                ``None`` when :meth:`write_data` already wrote this snapshot's bytes.
            step: optimizer step of the snapshot.
            wall_time: seconds since the epoch.
            metrics: scalars, or a callable returning them that is called at flush time (so the
                recorder can still add values logged after the capture).
            finite: with ``state=None``: what :meth:`write_data` returned.
            counters: any of ``dropped``, ``report_dropped``, ``recording_cost``, ``writes``,
                stored in the attrs from the next commit on.

        Returns:
            Whether the snapshot holds a NaN or infinite value (it is stored anyway).
        """
        self._take_counters(counters)
        if self.pending and (self.written + self.pending) % self.k == 0:
            self.flush()  # the previous shard is complete: write it whole
        i = self.pending
        if state is not None:
            finite = self.write_data(state)
        elif self._sink.next <= self.written + i:
            raise ValueError("append(None) without a snapshot written by write_data()")
        self._steps[i] = step
        self._walls[i] = wall_time
        self._metrics.append(metrics if metrics is not None else {})
        self.pending += 1
        self.last_step = int(step)
        if not finite:
            self.nonfinite += 1
        return not finite

    def write_data(self, state: Mapping[str, np.ndarray]) -> bool:
        """Hand the next snapshot's bytes to the shard sink now (fill-in-place: written into
        its slot with its CRC32C); :meth:`append` with ``state=None`` must follow for it, in
        the same order.

        On the fill-in-place paths this half touches only the shard files (starting the next
        shard's files at a shard boundary) and the sink's counters, so one other thread may
        call it while this writer's thread appends, flushes and commits earlier snapshots (the
        recorder's inline writes: the training thread writes, the writer thread commits). A
        snapshot counts only once :meth:`append` has taken it; a commit makes it durable, so a
        crash between the two leaves bytes in an uncommitted slot, which readers never look at.

        Returns:
            Whether the snapshot is finite (no NaN or infinite value).
        """
        self._sink.put(state)
        return self._finite_state(state)

    def _finite_state(self, state: Mapping[str, np.ndarray]) -> bool:
        """Whether no parameter of the snapshot holds a NaN or infinite value."""
        return all(_finite(state[p["name"]], p["dtype"]) for p in self.parameters)

    def flush_due(self) -> float | None:
        """Seconds until a time flush is due (<= 0: due now); ``None`` when nothing is pending."""
        if not self.pending or self.flush_every_s is None:
            return None
        return self._last_flush + self.flush_every_s - time.monotonic()

    def _grow(self, end: int) -> None:
        """Capacity for ``end`` snapshots: at least double, whole shards (O(log T) resizes)."""
        if end <= self.capacity:
            return
        new = max(end, 2 * self.capacity)
        new = -(-new // self.k) * self.k
        self._set_length(new)

    def _set_length(self, length: int) -> None:
        """Set every array's length (one metadata write each, concurrently). Chunks are not
        listed or deleted here, so this costs the same at any run length."""
        arrays = {}
        for path in self._array_paths():
            arrays[path] = self._arrays[path.split("/", 1)[1]] if path.startswith(
                fmt.PARAMS
            ) else self._scalars[path]
            self._dirty.add(f"{path}/zarr.json")

        async def resize_all() -> None:
            await asyncio.gather(*(
                arr.async_array.resize((length, *arr.shape[1:]), delete_outside_chunks=False)
                for arr in arrays.values()
            ))

        sync(resize_all())
        self.capacity = length
        self._high = max(self._high, length)

    def flush(self, commit: bool = True, counters: Mapping[str, Any] | None = None) -> None:
        """Write the pending rows and commit them (data first, ``committed`` last).

        ``commit=False`` writes them but neither syncs nor commits (:meth:`close` syncs
        everything together and commits once, after trimming). ``counters``: as for
        :meth:`append`."""
        self._take_counters(counters)
        n, start = self.pending, self.written
        self._last_flush = time.monotonic()
        if n == 0:
            return
        end = start + n
        self._check_lease()
        metrics = [m() if callable(m) else m for m in self._metrics]
        new_names = sorted({k for m in metrics for k in m} - set(self.metric_names))
        if commit:
            self._grow(end)
        elif end > self.capacity:  # closing: the exact length now, no doubling to undo
            self._set_length(end)
        for name in new_names:
            path = f"{fmt.METRICS}/{name}"
            self._create_scalar(path, "float64", np.nan, self._scalar_chunk)
            self._scalars[path] = self._handle(path)
            if start:  # earlier snapshots: not logged
                self._write_scalar(path, 0, np.full(start, np.nan))
        self.metric_names += new_names
        self._dirty.update(self._sink.flush(start, end))
        self._write_scalar(fmt.CHECKSUMS, start, self._sink.checksums(start, end))
        self._write_scalar(fmt.STEP, start, self._steps[:n])
        self._write_scalar(fmt.WALL_TIME, start, self._walls[:n])
        for name in self.metric_names:
            values = np.array([_as_float(m.get(name)) for m in metrics])
            self._write_scalar(f"{fmt.METRICS}/{name}", start, values)
        if commit:
            self._sync_dirty()
        self.written, self.pending = end, 0
        self._metrics = []
        self.flushes += 1
        if commit:
            self._commit()

    def _write_scalar(self, path: str, start: int, values: np.ndarray) -> None:
        arr = self._scalars[path]
        arr[start : start + len(values)] = values
        c = self._scalar_chunk
        row = (0,) * (arr.ndim - 1)
        for i in range(start // c, (start + len(values) - 1) // c + 1):
            self._dirty.add(f"{path}/{arr.metadata.encode_chunk_key((i, *row))}")
            self._scalar_bytes += c * arr.dtype.itemsize * math.prod(arr.shape[1:])

    def _sync_dirty(self) -> None:
        """fsync the files written since the last commit and their folders (``fsync=True``)."""
        dirty, self._dirty = self._dirty, set()
        if not self.fsync:
            return
        root = self._loc.local()
        files = [root / key for key in sorted(dirty)]
        folders = sorted({path.parent for path in files})
        if len(files) > 1:  # concurrent fsyncs: the disk handles them together
            with ThreadPoolExecutor(min(8, len(files))) as pool:
                list(pool.map(_fsync, files))
                list(pool.map(_fsync, folders))
        else:
            for path in files + folders:
                _fsync(path)

    def _check_lease(self) -> None:
        """Lease mode: before writing, make sure no other writer took the store over."""
        if self._lock is not None and self._lock.mode == "lease":
            attrs = fmt.read_attrs(self.group.store, self.location)
            self._lock.renew(attrs.get("writer"))

    def _commit(self, **extra: Any) -> None:
        assert self._lock is not None
        owner = self._lock.renew(None)
        update = {
            "committed": self.written,
            "metrics": self.metric_names,
            "dropped": self.dropped,
            "report_dropped": self.report_dropped,
            "nonfinite": self.nonfinite,
            "writer": owner,
            "write_amplification": round(self.write_amplification, 3),
            **({"writer_io": self.io_path} if self.io_path is not None else {}),
            **({"writes": self.writes} if self.writes is not None else {}),
            **extra,
        }
        if self.recording_cost is not None:
            update["recording_cost"] = dict(self.recording_cost)
        self.group.attrs.update(update)
        if self.fsync:
            root = self._loc.local()
            _fsync(root / "zarr.json")
            _fsync(root)
        swap = self._replacing is not None and not self._replacing.swapped
        if swap and (self.written > 0 or extra.get("closed")):
            self._swap_in()

    def _swap_in(self) -> None:
        """mode="replace": the new store's first commit is durable; it takes the old one's
        place (atomically where the OS can exchange two folders) and the old one is deleted."""
        assert self._replacing is not None
        if self._replacing.swap(self.fsync):  # no descriptor path: follow the folder's new name
            self._loc = self._where
            self.group = zarr.open_group(self._loc.make_store(read_only=False), mode="r+")
            self._arrays = {name: self.group[f"{fmt.PARAMS}/{name}"] for name in self._arrays}
            self._scalars = {path: self._handle(path) for path in self._scalars}
            self._sink.rebind(self._loc, self._arrays)

    def truncate_after_step(self, step: int) -> int:
        """Drop committed snapshots whose step is greater than ``step`` (a resumed run replays
        them). ``committed`` is lowered first; later flushes overwrite the dropped entries.
        Returns the new length."""
        self.flush()
        if self.written == 0:
            return 0
        steps = self._scalars[fmt.STEP][: self.written]
        keep = int(np.searchsorted(steps, step, side="right"))
        if keep < self.written:
            self.written = keep
            self._commit()
            self.last_step = int(steps[keep - 1]) if keep else None
            self._sink.restart(keep)
        return self.written

    def close(self, counters: Mapping[str, Any] | None = None) -> None:
        """Flush everything, trim the arrays to ``committed``, mark the store closed, and give
        the write lock back (also when one of these steps fails). ``counters``: as for
        :meth:`append`."""
        try:
            self._take_counters(counters)
            # Three rounds of syncs, whatever the run's length: (1) the data, the last shard's
            # new index and the arrays' final lengths; (2) the cut of that shard (only after
            # its new index is durable); (3) the commit.
            self.flush(commit=False)
            keys, cuts = self._sink.finish(self.written)
            self._dirty.update(keys)
            if self.capacity != self.written:
                high = self._high
                self._set_length(self.written)
                self._delete_beyond(high)
            self._sync_dirty()
            _parallel(cuts)
            self._sink.close()
            self._commit(closed=True, writer=None)
        finally:
            self.release()

    def _delete_beyond(self, high: int) -> None:
        """Delete the chunks between ``committed`` and ``high`` (the longest the arrays have
        been): stale after a truncation, never read. Bounded by ``high - committed``."""
        n = self.written
        deletes = []
        for path in self._array_paths():
            arr = self._arrays[path.split("/", 1)[1]] if path.startswith(
                fmt.PARAMS
            ) else self._scalars[path]
            c = arr.metadata.chunk_grid.chunk_shape[0] if not path.startswith(fmt.PARAMS) else (
                self.k
            )
            for i in range(-(-n // c), -(-high // c)):
                key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
                deletes.append(arr.store_path / key)

        async def delete_all() -> None:
            await asyncio.gather(*(key.delete() for key in deletes))

        if deletes:
            sync(delete_all())

    def write_probes(self, probes: np.ndarray) -> bool:
        """Store a small batch of probe inputs ``[B, n_0]`` with the run (once: a resumed run
        keeps the first batch). Returns whether they were written now.

        The analysis then measures the input-space geometry on these (the training
        distribution) instead of Gaussian noise.
        """
        if self.group.attrs.get("probes") is not None:
            return False
        data = np.ascontiguousarray(probes, dtype=np.float32)
        arr = self.group.create_array(
            fmt.PROBES,
            shape=data.shape,
            chunks=data.shape,
            dtype="float32",
            compressors=[Crc32cCodec()],
            dimension_names=("probe", "probe_input"),
            overwrite=True,
        )
        arr.with_config(_WRITE_ALL)[...] = data
        if self.fsync:
            root = self._loc.local()
            for key in (f"{fmt.PROBES}/zarr.json", f"{fmt.PROBES}/c/0/0"):
                if (root / key).exists():
                    _fsync(root / key)
        self.group.attrs.update({"probes": {"num": int(data.shape[0]),
                                            "features": int(data.shape[1])}})
        return True

    def release(self) -> None:
        """Give the write lock back without committing anything (idempotent). A replacement
        that never reached its first commit is deleted: the old store stays as it was."""
        sink = getattr(self, "_sink", None)
        if sink is not None:
            sink.close()
        replacing, self._replacing = self._replacing, None
        if replacing is not None:
            replacing.end()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
            self._lock = None

    @property
    def write_amplification(self) -> float:
        """Bytes written per byte of snapshot data (1.0 plus rewrites: partial shards on the
        zarr path; indexes and shared O_DIRECT pages in place)."""
        return self.bytes_written / max(self.payload_bytes, 1)

    @property
    def bytes_written(self) -> int:
        """Bytes of data objects written so far (shards, scalar chunks)."""
        sink = getattr(self, "_sink", None)
        return self._scalar_bytes + (sink.bytes_written if sink is not None else 0)

    @property
    def payload_bytes(self) -> int:
        """Encoded bytes of the snapshots taken so far (each counted once)."""
        sink = getattr(self, "_sink", None)
        return sink.payload_bytes if sink is not None else 0


def short_flush_warning(flush_every_s: float | None, io_path: str = "zarr") -> str | None:
    """The warning text for a ``flush_every_s`` short enough to amplify writes, else ``None``
    (always ``None`` for the fill-in-place paths, where a time flush rewrites nothing).

    Callers on the training thread (the recorder) emit it; the writer itself only counts the
    amplification (:attr:`StoreWriter.write_amplification`), since it runs on a background
    thread where a warning turned into an error would stop the recording.
    """
    if io_path != "zarr" or flush_every_s is None or not 0 < flush_every_s < SHORT_FLUSH_S:
        return None
    return (
        f"flush_every_s={flush_every_s} rewrites the current partial shard every "
        f"{flush_every_s} s: at short intervals the bytes written grow to about (seconds to "
        f"fill a shard) / (2 * flush_every_s) times the data (measured: 32x at a commit per "
        f"snapshot with 64-snapshot shards; 11-19x and 2.5-6x slower training at 0.05 s). Use "
        f"flush_every_s >= {SHORT_FLUSH_S} (or None) unless you need that crash bound."
    )


def _check_parameters(parameters: list[dict[str, Any]]) -> None:
    for p in parameters:
        if p["dtype"] not in fmt.SUPPORTED_DTYPES:
            raise ConfigError(
                f"Expected every recorded tensor to have one of the dtypes "
                f"{list(fmt.SUPPORTED_DTYPES)}, but '{p['name']}' is {p['dtype']}. Record "
                f"without it (e.g. buffers=False) or convert it; nothing was written."
            )


def _parallel(calls: list[Callable[[], Any]]) -> None:
    """Run blocking calls (fsyncs) concurrently: the disk handles them together."""
    if len(calls) > 1:
        with ThreadPoolExecutor(min(8, len(calls))) as pool:
            for future in [pool.submit(call) for call in calls]:
                future.result()
    elif calls:
        calls[0]()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # deleted by a resize (outside the new shape)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value: np.ndarray, dtype: str) -> bool:
    """Whether one parameter's snapshot holds no NaN or infinite value (integers: always)."""
    if dtype in ("float32", "float16", "float64"):
        return bool(np.isfinite(value).all())
    if dtype == "bfloat16":
        return not _bf16_nonfinite(value)
    return True


def _bf16_nonfinite(bits: np.ndarray) -> bool:
    # bfloat16: exponent bits 7..14 all ones means inf or NaN.
    return bool(((bits & 0x7F80) == 0x7F80).any())


def _is_empty_dir(location: LocationLike) -> bool:
    where = StoreLocation.of(location)
    if where.is_url:
        return False
    path = where.local()
    return path.is_dir() and not any(path.iterdir())
