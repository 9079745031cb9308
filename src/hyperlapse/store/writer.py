"""The single writer of a trajectory store: the commit protocol and its two IO paths.

:class:`StoreWriter` is synchronous and single-threaded; the recorder drives it from its
background thread. It holds the store's write lock (:mod:`hyperlapse.store.lock`) from opening
to :meth:`StoreWriter.close`. How a snapshot reaches the files (:attr:`StoreWriter.io_path`,
stored in the attrs as ``writer_io``):

* **fill-in-place** ("odirect" / "buffered"): local stores whose parameter chunks are
  uncompressed (fixed size). Each shard file is created with its final size and index when its
  first snapshot arrives, and every snapshot is written into its slot at once, from the
  caller's array (:mod:`hyperlapse.store.inplace`): one buffered ``pwritev`` (the default), or
  with ``HYPERLAPSE_WRITER_IO=odirect`` ``O_DIRECT`` from a page-aligned staging buffer where
  the filesystem accepts it (see :meth:`StoreWriter._choose_io` for why). Per snapshot this is
  one CRC32C and one write per parameter, whatever the run's length.
* **zarr**: object stores and compressed stores. Each snapshot of each parameter is compressed
  when it arrives (one inner chunk with its CRC32C, :mod:`hyperlapse.store.shards`) and kept
  until its shard is complete; a flush writes the current shard object, assembled from the
  kept bytes, through Zarr's store API (atomically replaced: temp file + rename, or one PUT).
  A time flush writes a partial shard; the next flush writes it again with more inner chunks,
  the committed ones byte for byte the same.

A flush

1. grows the arrays if the new length exceeds their capacity (geometrically: the capacity at
   least doubles, so array metadata is written O(log T) times in a run of T snapshots);
2. writes the current shard objects (zarr path only) and the new entries of ``step``,
   ``wall_time`` and ``metrics/*`` (one chunk each: constant cost);
3. with ``fsync=True``, fsyncs every file written since the last commit (and new folders);
4. writes the group attrs with the new ``committed`` (one atomic ``zarr.json`` replace), and
   fsyncs it.

A flush happens when a shard is complete and at least every ``flush_every_s`` seconds while
snapshots are pending. A crash at any point leaves every committed snapshot readable: readers
trust ``committed`` only, never the arrays' shapes or slots past it. :meth:`StoreWriter.close`
makes the last fill-in-place shard list only the chunks it holds and sets every array's length
to ``committed`` (no chunk listing: the same cost at any T), so a closed store has exact shapes
for xarray and plain Zarr.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.buffer import default_buffer_prototype
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
from .inplace import DIRECT_MIN_BYTES, PAGE, ShardFile, aligned_buffer, direct_io_supported
from .location import LocationLike, StoreLocation
from .lock import WriterLock
from .shards import ChunkEncoder, assemble_shard, chunk_crc_ok, split_shard

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
        self.bytes_written = 0
        self.payload_bytes = 0
        # counted by write_data, which may run on another thread (see write_data)
        self._data_bytes = 0
        self._data_payload = 0
        self.flushes = 0
        self._dirty: set[str] = set()
        self._lock: WriterLock | None = None
        self._replacing: _Replacement | None = None
        #: how parameter snapshots reach the files ("odirect", "buffered" or "zarr"); set once
        #: the arrays are open (:meth:`_choose_io`)
        self.io_path: str | None = None
        self._files: dict[str, ShardFile] = {}
        creating = False
        where = self._where
        try:
            if not where.is_url:
                finish_interrupted_replace(where)
            fresh = not fmt.store_exists(where) or _is_empty_dir(where)
            if not fresh and mode == "create":
                raise self._exists_error()
            if not fresh and mode == "replace":
                self._replacing = _Replacement.begin(where, self._existing_attrs_or_damage())
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
                    shapes[path] = self.group[path].shape[0]
                except Exception as exc:  # noqa: BLE001 - zarr raises several types
                    raise CorruptStoreError(
                        f"The store at '{self.location}' is damaged: its array '{path}' cannot "
                        f"be opened ({type(exc).__name__}: {exc}). Record to a new path."
                    ) from exc
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
            + [fmt.STEP, fmt.WALL_TIME]
            + [f"{fmt.METRICS}/{m}" for m in self.metric_names]
        )

    def _handle(self, path: str) -> zarr.Array:
        # open_array ignores config=; with_config is what makes zarr write all-NaN chunks
        return zarr.open_array(self.group.store, path=path, mode="r+").with_config(_WRITE_ALL)

    @staticmethod
    def _stored(dtype: str) -> str:
        return fmt.STORED_DTYPES.get(dtype, dtype)

    def _allocate_buffers(self) -> None:
        self._arrays = {p["name"]: self.group[f"{fmt.PARAMS}/{p['name']}"] for p in self.parameters}
        self._empty = {p["name"] for p in self.parameters if math.prod(p["shape"]) == 0}
        codecs = {name: _compressor(arr) for name, arr in self._arrays.items()}
        self._encoders = {name: ChunkEncoder(*c) for name, c in codecs.items()}
        # encoded inner chunks of the current shard, from its first snapshot on (zarr path)
        self._chunks: dict[str, list[bytes]] = {name: [] for name in self._arrays}
        self.io_path = self._choose_io(codecs)
        if self.io_path != "zarr":
            # fixed inner-chunk sizes: raw bytes + CRC32C
            self._cs = {
                name: math.prod(arr.shape[1:]) * arr.dtype.itemsize + 4
                for name, arr in self._arrays.items()
                if name not in self._empty
            }
            direct = self.io_path == "odirect"
            self._direct = {n for n, cs in self._cs.items() if direct and cs >= DIRECT_MIN_BYTES}
            self._stage = (
                aligned_buffer(max(self._cs[n] for n in self._direct) + 2 * PAGE)
                if self._direct
                else None
            )
            if self.written % self.k:
                self._resume_shards()
        elif self.written % self.k:
            self._load_partial_shard()
        self._next = self.written  # next slot write_data fills
        self._steps = np.empty(self.k, dtype=np.int64)
        self._walls = np.empty(self.k, dtype=np.float64)
        self._metrics: list[MetricsLike] = []
        self.pending = 0
        self._scalars = {p: self._handle(p) for p in self._array_paths()[len(self.parameters) :]}
        self._scalar_chunk = self._scalars[fmt.STEP].chunks[0]

    def _choose_io(self, codecs: dict[str, tuple[Any, bool]]) -> str:
        """"buffered" or "odirect" (fill-in-place shard files) for local stores whose parameter
        chunks are uncompressed, else "zarr" (shards assembled and written through Zarr's store
        API: object stores, compressed stores).

        Buffered ``pwrite`` is the default: measured on the 2-core machine
        (benchmarks/results/recording_overhead.md), ``O_DIRECT`` writes from the background
        thread slowed a 784-2048-10 loop recorded every 10 steps by +69 % against +24 %
        buffered, and were no better at 784-256-256-10. ``HYPERLAPSE_WRITER_IO`` = "odirect"
        asks for ``O_DIRECT`` (it wins where writes come fast enough to hit the kernel's
        dirty-page throttling, e.g. a wide model recorded every step; buffered where the
        filesystem refuses it); "buffered" or "zarr" force a path (tests, diagnosis)."""
        forced = os.environ.get("HYPERLAPSE_WRITER_IO", "auto")
        fixed = all(
            codec is None and crc for name, (codec, crc) in codecs.items()
            if name not in self._empty
        )
        posix = all(hasattr(os, f) for f in ("pwrite", "pwritev", "pread", "fdatasync"))
        if forced == "zarr" or self._loc.is_url or not fixed or not posix:
            return "zarr"
        root = self._loc.local() / fmt.PARAMS
        if forced != "odirect" or not direct_io_supported(root):
            return "buffered"
        return "odirect"

    def _shard_file(self, name: str, shard: int) -> Path:
        arr = self._arrays[name]
        key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
        return self._loc.local() / fmt.PARAMS / name / key

    def _start_shards(self, shard: int) -> None:
        """Fill-in-place: close the previous shard files and start shard ``shard`` of every
        parameter (its file gets its final size and index now)."""
        self._close_files()
        for name, cs in self._cs.items():
            path = self._shard_file(name, shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            stage = self._stage if name in self._direct else None
            self._files[name] = ShardFile.create(path, self.k, cs, stage)
            self._data_bytes += 16 * self.k + 4

    def _resume_shards(self) -> None:
        """Fill-in-place, resuming inside a shard: continue its files where ``committed`` ends."""
        self._close_files()
        shard, n = divmod(self.written, self.k)
        for name, cs in self._cs.items():
            path = self._shard_file(name, shard)
            stage = self._stage if name in self._direct else None
            try:
                self._files[name] = ShardFile.resume(path, self.k, cs, n, stage, self.fsync)
            except (OSError, ValueError) as exc:
                self._close_files()
                raise CorruptStoreError(
                    f"The store at '{self.location}' says {self.written} snapshots are "
                    f"committed, but shard {shard} of '{name}' lacks some of them or fails its "
                    f"checksum ({exc}). The store is damaged; record to a new path."
                ) from exc

    def _close_files(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def _shard_path(self, name: str, shard: int) -> Any:
        arr = self._arrays[name]
        return arr.store_path / arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))

    def _load_partial_shard(self) -> None:
        """Resuming inside a shard: keep the committed inner chunks' bytes to write them again."""
        shard, n = divmod(self.written, self.k)
        for name in self._arrays:
            if name in self._empty:
                self._chunks[name] = [b""] * n
                continue
            buf = sync(self._shard_path(name, shard).get(prototype=default_buffer_prototype()))
            try:
                chunks = split_shard(buf.to_bytes(), self.k)[:n] if buf is not None else [None]
            except ValueError:
                chunks = [None]
            if any(c is None or not chunk_crc_ok(c) for c in chunks):
                raise CorruptStoreError(
                    f"The store at '{self.location}' says {self.written} snapshots are committed, "
                    f"but shard {shard} of '{name}' lacks some of them or fails its checksum. The "
                    f"store is damaged; record to a new path."
                )
            self._chunks[name] = list(chunks)  # type: ignore[arg-type]

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
            finite = self.write_data(state) if self.io_path != "zarr" else self._encode(state)
        elif self.io_path == "zarr" or self._next <= self.written + i:
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
        """Fill-in-place paths: write the next snapshot's bytes (and CRC32C) into its slot now;
        :meth:`append` with ``state=None`` must follow for it, in the same order.

        This half touches only the shard files (starting the next shard's files at a shard
        boundary) and its own counters, so one other thread may call it while this writer's
        thread appends, flushes and commits earlier snapshots (the recorder's inline writes:
        the training thread writes, the writer thread commits). A snapshot counts only once
        :meth:`append` has taken it; a commit makes it durable, so a crash between the two
        leaves bytes in an uncommitted slot, which readers never look at.

        Returns:
            Whether the snapshot is finite (no NaN or infinite value).
        """
        i = self._next
        if i % self.k == 0:
            self._start_shards(i // self.k)
        for p in self.parameters:
            name = p["name"]
            if name in self._empty:
                continue
            self._data_bytes += self._files[name].write(_raw_bytes(state[name]))
            self._data_payload += self._cs[name]
        self._next = i + 1
        return self._finite_state(state)

    def _encode(self, state: Mapping[str, np.ndarray]) -> bool:
        """Zarr path: compress each parameter into its inner chunk, kept until its flush."""
        for p in self.parameters:
            name = p["name"]
            chunk = b"" if name in self._empty else self._encoders[name](state[name])
            self.payload_bytes += len(chunk)
            self._chunks[name].append(chunk)
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
        shard = start // self.k
        for name in self._arrays if self.io_path == "zarr" else ():
            if name in self._empty:
                continue
            data = assemble_shard(self._chunks[name], self.k)
            key = self._shard_path(name, shard)
            sync(key.set(default_buffer_prototype().buffer.from_array_like(data)))
            self.bytes_written += data.nbytes
            self._dirty.add(key.path)
        for name in self._arrays:
            if end % self.k == 0:
                self._chunks[name] = []
        if self.io_path != "zarr":  # written by write_data, made durable here (by path: the
            # files may be written meanwhile by another thread, see write_data)
            root = self._loc.local()
            for s in range(start // self.k, (end - 1) // self.k + 1):
                for name in self._cs:
                    self._dirty.add(str(self._shard_file(name, s).relative_to(root)))
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
        for i in range(start // c, (start + len(values) - 1) // c + 1):
            self._dirty.add(f"{path}/{arr.metadata.encode_chunk_key((i,))}")
            self.bytes_written += c * arr.dtype.itemsize

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
        old_root = self._loc.local()
        if self._replacing.swap(self.fsync):  # no descriptor path: follow the folder's new name
            self._loc = self._where
            self.group = zarr.open_group(self._loc.make_store(read_only=False), mode="r+")
            self._arrays = {name: self.group[f"{fmt.PARAMS}/{name}"] for name in self._arrays}
            self._scalars = {path: self._handle(path) for path in self._scalars}
            for f in self._files.values():
                f.path = self._loc.local() / f.path.relative_to(old_root)

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
            self._chunks = {name: [] for name in self._arrays}
            self._close_files()
            self._next = keep
            if keep % self.k:
                self._resume_shards() if self.io_path != "zarr" else self._load_partial_shard()
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
            cut = self._finish_shards()
            if self.capacity != self.written:
                high = self._high
                self._set_length(self.written)
                self._delete_beyond(high)
            self._sync_dirty()
            _parallel([f.cut_and_sync if self.fsync else f.cut for f in cut])
            self._close_files()
            self._commit(closed=True, writer=None)
        finally:
            self.release()

    def _finish_shards(self) -> list[ShardFile]:
        """Fill-in-place: the last, partial shard is to list only the chunks it holds. Writes
        its new index (ShardFile.finish) and returns the files to cut once that is durable."""
        files = list(self._files.values()) if self.written % self.k else []
        for f in files:  # the committed count, not the slots write_data started
            f.n = self.written % self.k
        cut = [f for f in files if f.finish(self.fsync)]
        for f in files:
            self._dirty.add(str(f.path.relative_to(self._loc.local())))
        return cut

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
        self._close_files()
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
        return (self.bytes_written + self._data_bytes) / max(
            self.payload_bytes + self._data_payload, 1
        )


_NEW = ".replacing"
_ASIDE = ".replaced"


class _Replacement:
    """mode="replace": a new store built beside the old one (``<name>.replacing``) and swapped
    in at its first commit. Until then the old store is untouched and readable (its lock is
    held, so no other writer changes it meanwhile); a crash leaves it whole, and the next
    writer deletes the leftover (:func:`finish_interrupted_replace`).

    The writer works in the new folder through a descriptor path (``/proc/self/fd/N``) that
    names the folder itself whatever it is called, so the swap changes no path the writer (or
    a thread writing shard files inline) uses.
    """

    def __init__(self, target: StoreLocation, old_lock: WriterLock) -> None:
        self.target = target
        self.old_lock = old_lock
        self.new_path = target.sibling(_NEW).local()
        self.new_lock = WriterLock(self.new_path)
        self.new_lock.acquire(None)  # creates the folder
        self._fd: int | None = os.open(
            self.new_path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        )
        handle = _descriptor_path(self._fd, self.new_path)
        self.follows = handle is not None  # the descriptor path follows the folder's renames
        self.new = target.at(handle or self.new_path)
        self.swapped = False

    @classmethod
    def begin(cls, target: StoreLocation, attrs: dict[str, Any] | None) -> _Replacement:
        old_lock = WriterLock(target)
        old_lock.acquire(attrs)  # StoreLockedError while another writer works on it
        try:
            return cls(target, old_lock)
        except BaseException:
            old_lock.release()
            raise

    def swap(self, fsync: bool) -> bool:
        """Put the new store at the target's path; delete the old one. Returns whether the
        writer must re-point its handles (no descriptor path)."""
        target = self.target.local()
        if _exchange(self.new_path, target):
            if fsync:
                _fsync(target.parent)
            self.swapped = True
            old = self.new_path  # the old store now has the temporary name
        else:  # rename aside, then into place (a crash in between: finish_interrupted_replace)
            old = target.with_name(target.name + _ASIDE)
            os.rename(target, old)
            os.rename(self.new_path, target)
            if fsync:
                _fsync(target.parent)
            self.swapped = True
        shutil.rmtree(old, ignore_errors=True)
        self.old_lock.release()
        self.new_lock.location = self.target.shown
        return not self.follows

    def end(self) -> None:
        """The writer is done: a replacement that was never swapped in is deleted."""
        if not self.swapped:
            shutil.rmtree(self.new_path, ignore_errors=True)
            self.new_lock.release()
        self.old_lock.release()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _descriptor_path(fd: int, path: Path) -> Path | None:
    """A path naming the folder open as ``fd`` whatever it is renamed to (Linux procfs), or
    ``None`` where there is none."""
    handle = Path(f"/proc/self/fd/{fd}")
    try:
        return handle if os.path.samestat(os.stat(handle), os.stat(path)) else None
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two folders (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the OS or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def finish_interrupted_replace(location: LocationLike) -> str | None:
    """Tidy what a ``mode="replace"`` writer that crashed left beside ``location`` (a local
    store); folders a live writer still holds are left alone. Returns what was done."""
    target = StoreLocation.of(location).local()
    new = target.with_name(target.name + _NEW)
    aside = target.with_name(target.name + _ASIDE)
    done = []
    with _unheld(new) as new_free, _unheld(aside) as aside_free:
        if aside_free and not os.path.lexists(target):
            # crashed between the two renames of a swap: the new store was committed
            if new_free:
                os.rename(new, target)
                done.append(f"moved the committed replacement {new.name} into place")
                new_free = False
            else:
                os.rename(aside, target)
                done.append(f"restored the original from {aside.name}")
                aside_free = False
        for leftover, free in ((new, new_free), (aside, aside_free)):
            if free:
                shutil.rmtree(leftover, ignore_errors=True)
                done.append(f"removed the leftover {leftover.name}")
    return "; ".join(done) or None


@contextlib.contextmanager
def _unheld(path: Path) -> Iterator[bool]:
    """Whether ``path`` is a folder no writer holds (its flock is taken for the block)."""
    if not path.is_dir() or path.is_symlink():
        yield False
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except (ImportError, OSError):  # no flock here: nothing can hold it
            pass
        yield True
    finally:
        os.close(fd)


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


def _compressor(array: zarr.Array) -> tuple[Any, bool]:
    """(compressor, crc) of a params array's inner chunks, from its metadata."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        raise StoreError(
            f"Expected the params array '{array.path}' to be sharded (hyperlapse format), but its "
            f"codecs are {codecs}. The store was not written by hyperlapse; use another path."
        )
    inner = list(codecs[0].codecs)
    crc = bool(inner) and isinstance(inner[-1], Crc32cCodec)
    if crc:
        inner.pop()
    endian = getattr(inner[0], "endian", None)  # None for 1-byte dtypes
    if not isinstance(inner[0], BytesCodec) or len(inner) > 2 or (
        endian is not None and endian.value != "little"
    ):
        raise StoreError(f"Unsupported inner codecs {inner} in '{array.path}'.")
    return (inner[1] if len(inner) == 2 else None), crc


def _raw_bytes(value: np.ndarray) -> np.ndarray:
    """The little-endian bytes of one snapshot of a parameter as a flat uint8 view (a copy
    only where the array is not contiguous or not little-endian)."""
    data = np.ascontiguousarray(value)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return data.reshape(-1).view(np.uint8)


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
