"""Zarr v3 shards of snapshot chunks, encoded by the writer itself.

A ``params/<name>`` array has ``shards=(k, *shape)`` and inner ``chunks=(1, *shape)``: one inner
chunk per snapshot. Per the Zarr v3 sharding spec (index at the end, index codecs ``bytes`` +
``crc32c``), a shard object is the concatenated encoded inner chunks followed by an index of
``(offset, nbytes)`` little-endian uint64 pairs, one per inner chunk in C order
(``2**64 - 1`` for a missing chunk), and the index's CRC32C.

Encoding each snapshot once, when it arrives, and assembling shards from the kept bytes does two
things Zarr's own ``Array.__setitem__`` cannot: the compression cost is spread evenly over the
run instead of arriving in one burst per shard, and a partially filled shard can be written
again with more snapshots while the bytes of those already committed stay the same *by
construction*. The result is plain Zarr: ``zarr.open_array`` reads it (tested).
"""

from __future__ import annotations

import google_crc32c
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, ZstdCodec

MISSING = 2**64 - 1

__all__ = ["ChunkEncoder", "assemble_shard", "parse_index", "split_shard"]


class ChunkEncoder:
    """Encode one snapshot of a parameter as an inner chunk: little-endian bytes, compressed,
    followed by its CRC32C (format version 2).

    Args:
        zarr_codec: the compressor declared in the array's metadata (``BloscCodec`` or
            ``ZstdCodec``); the same compression is applied through numcodecs, which is what
            Zarr itself uses to decode it.
        crc: append the little-endian CRC32C of the (compressed) bytes, as Zarr's ``crc32c``
            codec does.
    """

    def __init__(self, zarr_codec: BloscCodec | ZstdCodec | None, crc: bool = False) -> None:
        self.crc = crc
        if zarr_codec is None:
            self._codec = None
        elif isinstance(zarr_codec, BloscCodec):
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[zarr_codec.shuffle.value]
            self._codec = numcodecs.Blosc(
                cname=zarr_codec.cname.value,
                clevel=zarr_codec.clevel,
                shuffle=shuffle,
                blocksize=zarr_codec.blocksize,
            )
        elif isinstance(zarr_codec, ZstdCodec):
            self._codec = numcodecs.Zstd(level=zarr_codec.level, checksum=zarr_codec.checksum)
        else:  # pragma: no cover - format.default_compressor returns one of the above
            raise TypeError(f"unsupported compressor {zarr_codec!r}")

    def __call__(self, snapshot: np.ndarray) -> bytes:
        """Shapes: ``snapshot`` is one parameter's ``(*shape)`` array in the stored dtype."""
        data = np.ascontiguousarray(snapshot, dtype=snapshot.dtype.newbyteorder("<"))
        if data.dtype == np.bool_:
            data = data.view(np.uint8)
        if self._codec is None:
            out = data.tobytes()
        else:
            # numcodecs' Blosc takes the element size (for the shuffle) from the array itself
            out = bytes(self._codec.encode(data.reshape(-1)))
        if self.crc:
            out += np.uint32(google_crc32c.value(out)).astype("<u4").tobytes()
        return out


def assemble_shard(chunks: list[bytes], k: int) -> np.ndarray:
    """A shard object (as uint8 array) holding inner chunks ``0..len(chunks)-1`` of ``k``.

    Built with numpy copies, which release the GIL, so the training thread is not held up.
    """
    index = np.full((k, 2), MISSING, dtype="<u8")
    sizes = np.array([len(c) for c in chunks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    index[: len(chunks), 0] = offsets[:-1]
    index[: len(chunks), 1] = sizes
    index_bytes = index.tobytes()
    crc = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
    out = np.empty(int(offsets[-1]) + len(index_bytes) + 4, dtype=np.uint8)
    for chunk, start, end in zip(chunks, offsets[:-1], offsets[1:], strict=True):
        out[start:end] = np.frombuffer(chunk, dtype=np.uint8)
    out[offsets[-1] :] = np.frombuffer(index_bytes + crc, dtype=np.uint8)
    return out


def split_shard(data: bytes | np.ndarray, k: int) -> list[bytes | None]:
    """The ``k`` inner chunks of a shard object (``None`` where missing).

    Raises:
        ValueError: the shard's index checksum does not match (a damaged shard).
    """
    data = data.tobytes() if isinstance(data, np.ndarray) else data
    index = parse_index(data, k)
    return [None if off == MISSING else data[int(off) : int(off) + int(n)] for off, n in index]


def parse_index(tail: bytes, k: int) -> np.ndarray:
    """The ``(k, 2)`` (offset, nbytes) index from the last ``16 * k + 4`` bytes of a shard.

    Raises:
        ValueError: the bytes are too short or their checksum does not match (a damaged shard).
    """
    size = 16 * k
    if len(tail) < size + 4:
        raise ValueError(f"shard is {len(tail)} bytes, shorter than its {size + 4}-byte index")
    index_bytes, crc = tail[-size - 4 : -4], tail[-4:]
    if np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes() != crc:
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(index_bytes, dtype="<u8").reshape(k, 2)


def chunk_crc_ok(chunk: bytes) -> bool:
    """Whether an inner chunk's trailing CRC32C matches its bytes (format version 2)."""
    if len(chunk) < 4:
        return False
    return np.uint32(google_crc32c.value(chunk[:-4])).astype("<u4").tobytes() == chunk[-4:]
