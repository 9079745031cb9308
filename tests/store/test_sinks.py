"""Both shard sinks write exactly the Zarr v3 shards the format functions describe: the in-place
sink's files and the Zarr sink's objects equal shards assembled independently from the encoded
snapshots (so the two implementations behind the one interface are interchangeable)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperlapse.store import format as fmt
from hyperlapse.store.shards import ChunkEncoder, assemble_shard
from hyperlapse.store.writer import StoreWriter

K = 4


@pytest.mark.parametrize(("compression", "io"), [("none", "buffered"), ("lz4", "zarr"),
                                                  ("zstd", "zarr"), ("none", "zarr")])
def test_shards_equal_reference_shards(tmp_path, monkeypatch, compression, io) -> None:
    monkeypatch.setenv("HYPERLAPSE_WRITER_IO", "zarr" if io == "zarr" else "auto")
    params = [{"name": "w", "shape": [3, 5], "dtype": "float32"}]
    rng = np.random.default_rng(1)
    snaps = [rng.standard_normal((3, 5)).astype(np.float32) for _ in range(6)]
    path = tmp_path / "run.zarr"
    w = StoreWriter(path, params, snapshots_per_chunk=K, compression=compression,
                    flush_every_s=None)
    assert w.io_path == io
    for t, s in enumerate(snaps):
        w.append({"w": s}, t, 0.0)
        if t == 1:
            w.flush()  # a time flush of a partial shard changes nothing in the result
    w.close()
    codecs = fmt.param_compressors("float32", compression)
    encode = ChunkEncoder(codecs[0] if len(codecs) == 2 else None, crc=True)
    chunks = [encode(s) for s in snaps]
    for shard, part in ((0, chunks[:K]), (1, chunks[K:])):
        got = (path / "params" / "w" / "c" / str(shard) / "0" / "0").read_bytes()
        assert got == assemble_shard(part, K).tobytes(), shard
