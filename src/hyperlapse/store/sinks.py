"""Shard sinks: how a snapshot's bytes reach the ``params/<name>`` shards, behind one interface.

:class:`~hyperlapse.store.writer.StoreWriter` owns the commit protocol (grow the arrays, write
the scalars, sync, commit ``committed``); a sink owns the parameter shards. Two sinks, chosen
once when the writer opens (:func:`open_sink`):

* :class:`InPlaceSink` ("buffered" / "odirect"): local stores with uncompressed parameter
  chunks. Each shard file is created with its final size and index when its first snapshot
  arrives, and every snapshot is written into its slot at once (:mod:`hyperlapse.store.inplace`).
  Nothing is written at a flush: it only names the files to make durable.
* :class:`ZarrSink` ("zarr"): object stores and compressed stores. Each snapshot of each
  parameter is encoded when it arrives (:mod:`hyperlapse.store.shards`) and kept until its shard
  is complete; a flush writes the current shard objects through Zarr's store API (atomically
  replaced), the committed inner chunks byte for byte the same.

A sink is told the snapshots in order (:meth:`put`), what to make durable at a flush
(:meth:`flush`, returning store keys to fsync), where to continue after a resume or a
truncation (:meth:`restart`) and how to end (:meth:`finish`: the last partial shard lists only
the chunks it holds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import CorruptStoreError, StoreError
from . import format as fmt
from .inplace import DIRECT_MIN_BYTES, PAGE, ShardFile, aligned_buffer, direct_io_supported
from .location import StoreLocation
from .shards import ChunkEncoder, assemble_shard, chunk_crc_ok, split_shard

__all__ = ["InPlaceSink", "ShardSink", "ZarrSink", "open_sink"]


class ShardSink:
    """What :class:`~hyperlapse.store.writer.StoreWriter` needs from a way of writing shards.

    Attributes:
        name: ``"buffered"``, ``"odirect"`` or ``"zarr"`` (the attrs' ``writer_io``).
        next: index of the next snapshot :meth:`put` takes.
        bytes_written: bytes of shard data written so far (indexes and rewrites included).
        payload_bytes: encoded bytes of the snapshots taken so far (each counted once).
    """

    name = "zarr"

    def __init__(self, loc: StoreLocation, arrays: Mapping[str, zarr.Array], k: int,
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.loc = loc
        self.arrays = dict(arrays)
        self.k = k
        #: parameters of no element: their arrays hold no chunk
        self.empty = {name for name, shape in shapes.items() if math.prod(shape) == 0}
        self.next = 0
        self.bytes_written = 0
        self.payload_bytes = 0
        self.names = list(self.arrays)
        # snapshot index -> the CRC32C each parameter's inner chunk carries (format version 3)
        self._crcs: dict[int, np.ndarray] = {}

    def checksums(self, start: int, end: int) -> np.ndarray:
        """``(end - start, P)`` uint32: the CRC32C of the inner chunks of snapshots
        ``[start, end)`` (taken by :meth:`put`), for the ``checksums`` array."""
        return np.stack([self._crcs.pop(t) for t in range(start, end)])

    def put(self, state: Mapping[str, np.ndarray]) -> None:
        """Take snapshot :attr:`next` (name -> array in the stored dtype)."""
        raise NotImplementedError

    def flush(self, start: int, end: int) -> list[str]:
        """Snapshots ``[start, end)`` are to be committed: write what is still to be written;
        return the store keys to make durable."""
        raise NotImplementedError

    def _forget(self, written: int) -> None:
        self._crcs = {t: row for t, row in self._crcs.items() if t < written}

    def restart(self, written: int) -> None:
        """Continue after ``written`` committed snapshots (resume, truncation): forget anything
        taken past them; inside a shard, check and reuse its committed chunks.

        Raises:
            CorruptStoreError: a committed chunk of that shard is missing or damaged.
        """
        raise NotImplementedError

    def finish(self, written: int) -> tuple[list[str], list[Callable[[], None]]]:
        """Closing with ``written`` snapshots: (keys to make durable, calls to run once they
        are: cutting a last shard file after its new index)."""
        return [], []

    def rebind(self, loc: StoreLocation, arrays: Mapping[str, zarr.Array]) -> None:
        """The store was moved (``mode="replace"`` without a descriptor path): new handles."""
        self.loc, self.arrays = loc, dict(arrays)

    def close(self) -> None:
        """Release open files (idempotent)."""

    def _chunk_key(self, name: str, shard: int) -> str:
        """The shard's key inside its array (``c/<shard>/0/...``)."""
        arr = self.arrays[name]
        return arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))

    def _key(self, name: str, shard: int) -> str:
        """The shard's key in the store."""
        return f"{fmt.PARAMS}/{name}/{self._chunk_key(name, shard)}"

    def _damaged(self, written: int, shard: int, name: str, why: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"The store at '{self.loc}' says {written} snapshots are committed, but shard "
            f"{shard} of '{name}' lacks some of them or fails its checksum{why}. The store is "
            f"damaged; record to a new path."
        )


class InPlaceSink(ShardSink):
    """Fill-in-place shard files (local, uncompressed): one ``pwrite`` per parameter and
    snapshot, from the caller's array. ``put`` touches only the shard files and this sink's
    counters, so another thread may call it while the writer's thread flushes and commits
    earlier snapshots (the recorder's inline writes)."""

    def __init__(self, loc: StoreLocation, arrays: Mapping[str, zarr.Array], k: int,
                 shapes: Mapping[str, tuple[int, ...]], *, direct: bool, fsync: bool) -> None:
        super().__init__(loc, arrays, k, shapes)
        self.name = "odirect" if direct else "buffered"
        self.fsync = fsync
        # fixed inner-chunk sizes: raw bytes + CRC32C
        self.cs = {
            name: math.prod(arr.shape[1:]) * arr.dtype.itemsize + 4
            for name, arr in self.arrays.items()
            if name not in self.empty
        }
        self.direct = {n for n, cs in self.cs.items() if direct and cs >= DIRECT_MIN_BYTES}
        self.stage = (
            aligned_buffer(max(self.cs[n] for n in self.direct) + 2 * PAGE) if self.direct else None
        )
        self.files: dict[str, ShardFile] = {}

    def path(self, name: str, shard: int) -> Path:
        return self.loc.local() / self._key(name, shard)

    def put(self, state: Mapping[str, np.ndarray]) -> None:
        i = self.next
        if i % self.k == 0:
            self._start(i // self.k)
        row = np.zeros(len(self.names), dtype=np.uint32)
        for j, name in enumerate(self.names):
            f = self.files.get(name)
            if f is None:  # zero-size tensor: no chunk
                continue
            self.bytes_written += f.write(_raw_bytes(state[name]))
            self.payload_bytes += self.cs[name]
            row[j] = f.last_crc
        self._crcs[i] = row
        self.next = i + 1

    def _start(self, shard: int) -> None:
        """Start shard ``shard`` of every parameter (its file gets its final size and index)."""
        self.close()
        for name, cs in self.cs.items():
            path = self.path(name, shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            stage = self.stage if name in self.direct else None
            self.files[name] = ShardFile.create(path, self.k, cs, stage)
            self.bytes_written += 16 * self.k + 4

    def flush(self, start: int, end: int) -> list[str]:
        # written by put already; made durable by path (put may meanwhile write the next ones)
        return [self._key(name, s) for s in range(start // self.k, (end - 1) // self.k + 1)
                for name in self.cs]

    def restart(self, written: int) -> None:
        self.close()
        self._forget(written)
        self.next = written
        shard, n = divmod(written, self.k)
        if not n:
            return
        for name, cs in self.cs.items():
            stage = self.stage if name in self.direct else None
            try:
                self.files[name] = ShardFile.resume(
                    self.path(name, shard), self.k, cs, n, stage, self.fsync
                )
            except (OSError, ValueError) as exc:
                self.close()
                raise self._damaged(written, shard, name, f" ({exc})") from exc

    def finish(self, written: int) -> tuple[list[str], list[Callable[[], None]]]:
        files = list(self.files.items()) if written % self.k else []
        for _, f in files:  # the committed count, not the slots put started
            f.n = written % self.k
        cut = [f for _, f in files if f.finish(self.fsync)]
        keys = [self._key(name, written // self.k) for name, _ in files]
        return keys, [f.cut_and_sync if self.fsync else f.cut for f in cut]

    def rebind(self, loc: StoreLocation, arrays: Mapping[str, zarr.Array]) -> None:
        old = self.loc.local()
        super().rebind(loc, arrays)
        for f in self.files.values():
            f.path = loc.local() / f.path.relative_to(old)

    def close(self) -> None:
        files, self.files = self.files, {}
        for f in files.values():
            f.close()


class ZarrSink(ShardSink):
    """Shards assembled from inner chunks encoded on arrival, written whole through Zarr's
    store API at each flush (a partial shard again at the next, committed chunks unchanged)."""

    name = "zarr"

    def __init__(self, loc: StoreLocation, arrays: Mapping[str, zarr.Array], k: int,
                 shapes: Mapping[str, tuple[int, ...]],
                 codecs: Mapping[str, tuple[Any, bool]]) -> None:
        super().__init__(loc, arrays, k, shapes)
        self.encoders = {name: ChunkEncoder(*c) for name, c in codecs.items()}
        # encoded inner chunks of the current shard, from its first snapshot on
        self.chunks: dict[str, list[bytes]] = {name: [] for name in self.arrays}

    def put(self, state: Mapping[str, np.ndarray]) -> None:
        if self.next % self.k == 0:
            self.chunks = {name: [] for name in self.arrays}
        row = np.zeros(len(self.names), dtype=np.uint32)
        for j, name in enumerate(self.names):
            chunk = b"" if name in self.empty else self.encoders[name](state[name])
            self.payload_bytes += len(chunk)
            self.chunks[name].append(chunk)
            if len(chunk) >= 4:  # the chunk's CRC32C, appended by the encoder
                row[j] = int.from_bytes(chunk[-4:], "little")
        self._crcs[self.next] = row
        self.next += 1

    def flush(self, start: int, end: int) -> list[str]:
        shard = start // self.k
        keys = []
        for name, arr in self.arrays.items():
            if name in self.empty:
                continue
            n = end - shard * self.k  # the chunks of this shard up to ``end``
            data = assemble_shard(self.chunks[name][:n], self.k)
            path = arr.store_path / self._chunk_key(name, shard)
            sync(path.set(default_buffer_prototype().buffer.from_array_like(data)))
            self.bytes_written += data.nbytes
            keys.append(self._key(name, shard))
        return keys

    def restart(self, written: int) -> None:
        self._forget(written)
        self.next = written
        shard, n = divmod(written, self.k)
        self.chunks = {name: [] for name in self.arrays}
        if not n:
            return
        for name, arr in self.arrays.items():
            if name in self.empty:
                self.chunks[name] = [b""] * n
                continue
            key = arr.store_path / self._chunk_key(name, shard)
            buf = sync(key.get(prototype=default_buffer_prototype()))
            try:
                chunks = split_shard(buf.to_bytes(), self.k)[:n] if buf is not None else [None]
            except ValueError:
                chunks = [None]
            if any(c is None or not chunk_crc_ok(c) for c in chunks):
                raise self._damaged(written, shard, name, "")
            self.chunks[name] = list(chunks)  # type: ignore[arg-type]


def open_sink(
    loc: StoreLocation,
    arrays: Mapping[str, zarr.Array],
    k: int,
    written: int,
    *,
    fsync: bool,
) -> ShardSink:
    """The sink for this store, chosen once, continuing after ``written`` snapshots.

    "buffered" (fill-in-place, buffered ``pwrite``) for local stores whose parameter chunks are
    uncompressed, else "zarr". Buffered is the default: measured on the 2-core machine
    (benchmarks/results/recording_overhead.md), ``O_DIRECT`` writes from the background thread
    slowed a 784-2048-10 loop recorded every 10 steps by +69 % against +24 % buffered, and were
    no better at 784-256-256-10. ``HYPERLAPSE_WRITER_IO`` = "odirect" asks for ``O_DIRECT`` (it
    wins where writes come fast enough to hit the kernel's dirty-page throttling, e.g. a wide
    model recorded every step; buffered where the filesystem refuses it); "buffered" or "zarr"
    force a path (tests, diagnosis).

    Raises:
        StoreError: a params array is not a hyperlapse shard array.
        CorruptStoreError: resuming inside a damaged shard.
    """
    shapes = {name: tuple(arr.shape[1:]) for name, arr in arrays.items()}
    codecs = {name: _compressor(arr) for name, arr in arrays.items()}
    forced = os.environ.get("HYPERLAPSE_WRITER_IO", "auto")
    fixed = all(
        codec is None and crc
        for name, (codec, crc) in codecs.items()
        if math.prod(shapes[name]) != 0
    )
    posix = all(hasattr(os, f) for f in ("pwrite", "pwritev", "pread", "fdatasync"))
    sink: ShardSink
    if forced == "zarr" or loc.is_url or not fixed or not posix:
        sink = ZarrSink(loc, arrays, k, shapes, codecs)
    else:
        direct = forced == "odirect" and direct_io_supported(loc.local() / fmt.PARAMS)
        sink = InPlaceSink(loc, arrays, k, shapes, direct=direct, fsync=fsync)
    sink.restart(written)
    return sink


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
