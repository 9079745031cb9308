"""Fill-in-place shard files: the local fast path for uncompressed parameter arrays.

With ``compression="none"`` every inner chunk of a ``params/<name>`` array has the same size
``cs = nbytes + 4`` (the raw little-endian bytes and their CRC32C), so the whole layout of a
shard of ``k`` snapshots is known before its first snapshot arrives: chunk ``i`` lies at
``i * cs``, and the shard index (Zarr v3 sharding, index at the end: ``(offset, nbytes)``
little-endian uint64 pairs and the index's CRC32C, :mod:`hyperlapse.store.shards`) at ``k * cs``.
A :class:`ShardFile` writes that index once, when the shard is started, and then writes every
snapshot straight into its slot (``pwrite``): no ``bytes`` copies, no reassembly of the shard
per flush, no rewrite of committed bytes (except, with ``O_DIRECT``, the one page a new chunk
shares with the previous one, rewritten with the same bytes).

The index lists all ``k`` chunks while the shard fills: slots beyond the store's ``committed``
count may hold zeros or a partial snapshot, which readers never look at (they read the first
``committed`` snapshots only). :meth:`ShardFile.finish` makes a closed store's last shard list
only the chunks it holds.

``O_DIRECT``: where the filesystem accepts it (:func:`direct_io_supported`), slots of at least
:data:`DIRECT_MIN_BYTES` are written with ``O_DIRECT`` from a page-aligned staging buffer, which
bypasses the page cache (and the kernel's dirty-page throttling when recording ~GB/s). An
``O_DIRECT`` write needs an aligned offset, length and address, so the shard's current partial
page is kept in memory and each write covers whole pages; the bytes past the data region (the
page holding the start of the index) go through an ordinary buffered descriptor.
"""

from __future__ import annotations

import mmap
import os
import uuid
from pathlib import Path

import google_crc32c
import numpy as np

from .shards import MISSING

#: Alignment of ``O_DIRECT`` offsets, lengths and buffers (the common page and block size).
PAGE = 4096
#: Slots smaller than this are written buffered even where ``O_DIRECT`` works: a direct write of
#: a few hundred bytes would cost a whole page and a device round trip per snapshot.
DIRECT_MIN_BYTES = 64 * 1024
_HAS_DIRECT = hasattr(os, "O_DIRECT")


def index_bytes(k: int, cs: int, n: int | None = None) -> bytes:
    """The encoded shard index (with its CRC32C) listing chunks ``0..n-1`` (all ``k`` when
    ``n`` is ``None``) at their fixed offsets ``i * cs``; the others are missing."""
    n = k if n is None else n
    index = np.full((k, 2), MISSING, dtype="<u8")
    index[:n, 0] = np.arange(n, dtype=np.uint64) * np.uint64(cs)
    index[:n, 1] = cs
    raw = index.tobytes()
    return raw + np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()


def shard_size(k: int, cs: int) -> int:
    """Bytes of a full fill-in-place shard of ``k`` chunks of ``cs`` bytes."""
    return k * cs + 16 * k + 4


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array of ``nbytes`` (rounded up to whole pages) at a page-aligned address
    (an anonymous memory map: always page-aligned)."""
    size = max(-(-nbytes // PAGE) * PAGE, PAGE)
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)


def direct_io_supported(folder: str | os.PathLike) -> bool:
    """Whether files in ``folder`` accept ``O_DIRECT`` writes (a probe file is written and
    removed). False where the platform has no ``O_DIRECT`` or the filesystem refuses it."""
    if not _HAS_DIRECT:
        return False
    probe = Path(folder) / f".odirect-probe-{uuid.uuid4().hex}.partial"  # tidied if left
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_DIRECT, 0o644)
    except OSError:
        return False
    try:
        os.pwrite(fd, aligned_buffer(PAGE), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        try:
            probe.unlink()
        except OSError:
            pass


class ShardFile:
    """One shard file of one parameter array, filled in place, snapshot after snapshot.

    Create one with :meth:`create` (a new shard) or :meth:`resume` (a shard holding committed
    snapshots). Writes are sequential: :meth:`write` appends chunk :attr:`n`.

    Args:
        path: the shard's file.
        k: snapshots per shard.
        cs: bytes per inner chunk (the snapshot's bytes + 4 for its CRC32C).
        fd: buffered read-write descriptor of the file.
        stage: shared page-aligned staging buffer of at least ``cs + 2 * PAGE`` bytes, or
            ``None`` to write buffered from the caller's array (no copy).
        n: chunks already in the file.
    """

    def __init__(
        self, path: Path, k: int, cs: int, fd: int, stage: np.ndarray | None, n: int
    ) -> None:
        self.path, self.k, self.cs, self.fd, self.n = path, k, cs, fd, n
        self.dirty = False
        #: CRC32C of the last chunk written (what its slot's last 4 bytes hold)
        self.last_crc = 0
        self.direct_fd: int | None = None
        self._stage = stage
        self._tail = np.zeros(PAGE, dtype=np.uint8)  # bytes of the current partial page
        self._tail_len = 0
        # pages below this are written directly; the rest (the index's page) buffered
        self._limit = (k * cs) // PAGE * PAGE
        if stage is not None:
            self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            start = n * cs
            self._tail_len = start % PAGE
            if self._tail_len:
                got = os.pread(fd, self._tail_len, start - self._tail_len)
                self._tail[: len(got)] = np.frombuffer(got, dtype=np.uint8)

    @classmethod
    def create(cls, path: Path, k: int, cs: int, stage: np.ndarray | None) -> ShardFile:
        """Start a shard: a file of its final size holding its final index (any stale file of
        the same name, beyond ``committed``, is replaced)."""
        fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
        try:
            _pwrite_all(fd, index_bytes(k, cs), k * cs)
            return cls(path, k, cs, fd, stage, 0)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def resume(
        cls, path: Path, k: int, cs: int, n: int, stage: np.ndarray | None, fsync: bool
    ) -> ShardFile:
        """Continue a shard holding ``n`` committed chunks.

        A shard in another layout (trimmed by :meth:`finish`, or written through Zarr) is first
        rewritten in the fill-in-place layout: committed chunks copied into a new file, which
        replaces the old one atomically (this reads at most one shard, once per resume).

        Raises:
            ValueError: the shard lacks one of the ``n`` chunks, or one fails its checksum.
        """
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            full = size == shard_size(k, cs) and os.pread(
                fd, 16 * k + 4, k * cs
            ) == index_bytes(k, cs)
            data = os.pread(fd, n * cs, 0) if full else os.pread(fd, size, 0)
        except BaseException:
            os.close(fd)
            raise
        if full:
            chunks = [memoryview(data)[i * cs : (i + 1) * cs] for i in range(n)]
        else:
            os.close(fd)
            from .shards import split_shard

            got = split_shard(data, k)[:n]
            chunks = [memoryview(c) if c is not None else None for c in got]
        for i, chunk in enumerate(chunks):
            if chunk is None or len(chunk) != cs or not _crc_ok(chunk):
                if full:
                    os.close(fd)
                raise ValueError(f"chunk {i} is missing, has the wrong size or fails its checksum")
        if full:
            return cls(path, k, cs, fd, stage, n)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            for i, chunk in enumerate(chunks):
                _pwrite_all(fd, chunk, i * cs)  # type: ignore[arg-type]
            _pwrite_all(fd, index_bytes(k, cs), k * cs)
            if fsync:
                os.fsync(fd)
            os.replace(tmp, path)
            if fsync:
                fsync_path(path.parent)
            return cls(path, k, cs, fd, stage, n)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    def write(self, data: np.ndarray) -> int:
        """Write the next chunk: ``data`` (the snapshot's raw little-endian bytes, uint8,
        contiguous) and its CRC32C. Returns the bytes written to the file."""
        cs, off = self.cs, self.n * self.cs
        if self.n >= self.k or len(data) != cs - 4:
            raise ValueError(f"chunk {self.n} of {len(data)} bytes does not fit the shard")
        self.last_crc = google_crc32c.value(data)
        crc = np.array([self.last_crc], dtype="<u4").view(np.uint8)
        self.n += 1
        self.dirty = True
        stage = self._stage
        if stage is None:
            return _pwritev_all(self.fd, [data, crc], off)
        # O_DIRECT: the partial page before ``off``, the chunk, zeros to the next page boundary
        head = self._tail_len
        page0 = off - head
        end = off + cs
        stage[:head] = self._tail[:head]
        stage[head : head + cs - 4] = data
        stage[head + cs - 4 : head + cs] = crc
        direct_end = min(-(-end // PAGE) * PAGE, self._limit)
        written = 0
        if direct_end > page0:
            if end < direct_end:  # bytes of the next (uncommitted) slot
                stage[end - page0 : direct_end - page0] = 0
            written += _pwrite_all(self.direct_fd, stage[: direct_end - page0], page0)
        if end > direct_end:  # the page that holds the start of the index: buffered
            start = max(direct_end, off)
            written += _pwrite_all(self.fd, stage[start - page0 : end - page0], start)
        tail_start = end // PAGE * PAGE
        self._tail_len = end - tail_start
        self._tail[: self._tail_len] = stage[tail_start - page0 : end - page0]
        return written

    def sync(self) -> None:
        """Make the written chunks (and the index) durable."""
        os.fdatasync(self.fd)
        self.dirty = False

    def finish(self, fsync: bool) -> bool:
        """First half of making the file a shard of exactly the ``n`` chunks written: the index
        listing them is written right after chunk ``n - 1``. Returns whether :meth:`cut` must
        follow (after the new index is durable).

        Crash-safe: until the cut, the file's last bytes are still the full index, and the new
        index goes to bytes no committed chunk uses. Where it would overlap the old index (a
        shard only a few small chunks short of full) the shard is instead rewritten into a new
        file that atomically replaces this one (bounded: such a shard holds less than ``k``
        chunks of under 16 KiB).
        """
        k, cs, n = self.k, self.cs, self.n
        if n == k:
            return False
        new_index = index_bytes(k, cs, n)
        if n * cs + len(new_index) <= k * cs:
            _pwrite_all(self.fd, new_index, n * cs)
            return True
        data = os.pread(self.fd, n * cs, 0)
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.partial")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            _pwrite_all(fd, data + new_index, 0)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        return False

    def cut(self) -> None:
        """Second half of :meth:`finish`: cut the file after the new index."""
        os.ftruncate(self.fd, self.n * self.cs + 16 * self.k + 4)

    def cut_and_sync(self) -> None:
        self.cut()
        os.fsync(self.fd)

    def close(self) -> None:
        for fd in (self.direct_fd, self.fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.direct_fd = None
        self.fd = -1


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder by path (a missing one is skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc_ok(chunk: memoryview) -> bool:
    body = np.frombuffer(chunk, dtype=np.uint8)
    return np.uint32(google_crc32c.value(body[:-4])).astype("<u4").tobytes() == bytes(body[-4:])


def _pwrite_all(fd: int | None, data: object, offset: int) -> int:
    """``os.pwrite`` until every byte is written (a short write continues)."""
    assert fd is not None
    view = memoryview(data).cast("B")  # type: ignore[arg-type]
    done = 0
    while done < len(view):
        try:
            done += os.pwrite(fd, view[done:], offset + done)
        except InterruptedError:  # pragma: no cover - retried by Python itself (PEP 475)
            continue
    return done


def _pwritev_all(fd: int, parts: list[np.ndarray], offset: int) -> int:
    total = sum(len(p) for p in parts)
    done = os.pwritev(fd, parts, offset)
    if done < total:  # short write: finish byte by byte range
        flat = np.concatenate(parts)
        done += _pwrite_all(fd, flat[done:], offset + done)
    return total

