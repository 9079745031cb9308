"""Property test: random shapes, dtypes and operation sequences (append / flush / close and
reopen / truncate) read back exactly through ``open_trajectory`` and plain zarr."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperlapse import open_trajectory
from hyperlapse.store.writer import StoreWriter

DTYPES = ["float32", "float16", "bfloat16", "bool", "int8", "uint8", "int64"]

shapes = st.lists(st.integers(0, 3), min_size=0, max_size=2)
params = st.lists(st.tuples(shapes, st.sampled_from(DTYPES)), min_size=1, max_size=3)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.just(("flush", 0)),
        st.just(("reopen", 0)),
        st.tuples(st.just("truncate"), st.integers(0, 4)),
    ),
    min_size=1,
    max_size=12,
)


def _value(shape: list[int], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("int8", "uint8", "int64"):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, dtype=dtype)
    bits = rng.integers(0, 2**16 if dtype != "float32" else 2**32, shape, dtype=np.uint64)
    stored = {"float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}[dtype]
    out = bits.astype(stored)
    return out if dtype == "bfloat16" else out.view(dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=params, ops=ops, k=st.integers(1, 4), flush_every=st.sampled_from([None, 0.0]))
def test_random_operation_sequences(params, ops, k, flush_every) -> None:
    spec = [{"name": f"p{i}", "shape": s, "dtype": d} for i, (s, d) in enumerate(params)]
    root = Path(tempfile.mkdtemp())
    path = root / "run.zarr"
    try:
        writer = StoreWriter(path, spec, snapshots_per_chunk=k, flush_every_s=flush_every)
        expected: list[tuple[int, dict[str, np.ndarray]]] = []  # (step, state) committed+pending
        step = 0
        for op, arg in ops:
            if op == "append":
                for _ in range(arg):
                    state = {p["name"]: _value(p["shape"], p["dtype"], step * 7 + i)
                             for i, p in enumerate(spec)}
                    writer.append(state, step, float(step), {"m": step} if step % 2 else {})
                    if flush_every is not None:
                        writer.flush()
                    expected.append((step, state))
                    step += 1
            elif op == "flush":
                writer.flush()
            elif op == "reopen":
                writer.close()
                writer = StoreWriter(path, spec, flush_every_s=flush_every)
            else:  # truncate: keep snapshots with step <= a committed step
                writer.flush()
                if expected:
                    keep_step = expected[min(arg, len(expected) - 1)][0]
                    writer.truncate_after_step(keep_step)
                    expected = [e for e in expected if e[0] <= keep_step]
                    step = keep_step + 1
        writer.close()
        traj = open_trajectory(path)
        assert len(traj) == len(expected)
        assert traj.steps.tolist() == [s for s, _ in expected]
        if any(s % 2 for s, _ in expected):
            m = traj.metrics["m"]
            for (s, _), v in zip(expected, m, strict=True):
                assert (v == s) if s % 2 else np.isnan(v)
        g = zarr.open_group(path, mode="r")
        for t, (_, state) in enumerate(expected):
            got = traj[t]
            for p in spec:
                want = state[p["name"]]
                have = got[p["name"]]
                if p["dtype"] == "bfloat16":
                    have = have.view(torch.int16).numpy().view(np.uint16)
                else:
                    have = have.numpy()
                assert have.shape == want.shape and have.tobytes() == want.tobytes()
                plain = g[f"params/{p['name']}"]
                assert plain.shape[0] == len(expected)  # closed: exact shape
                assert plain[t].tobytes() == want.tobytes()
        assert traj.verify() == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
