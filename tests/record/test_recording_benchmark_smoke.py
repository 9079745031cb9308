"""benchmarks/recording_overhead.py --quick runs and writes a consistent result file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "recording_overhead.py"


@pytest.mark.slow
def test_quick_benchmark(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)],
        check=True,
        timeout=300,
    )
    results = json.loads(out.read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["torch"]
    tiny = results["models"]["tiny"]
    v = tiny["variants"]
    assert set(v) == {
        "none",
        "bare_copy_10",
        "hyperlapse_1",
        "hyperlapse_10",
        "torch_save_1",
        "zarr_naive_1",
    }
    assert v["bare_copy_10"]["captures"] == 2 and tiny["bare_copy_ms"] > 0
    assert v["none"]["ratio_to_none"] == 1.0 and v["none"]["files"] == 0
    assert v["torch_save_1"]["files"] == tiny["steps"] == 20
    assert v["hyperlapse_1"]["captures"] == 21 and v["hyperlapse_10"]["captures"] == 3
    assert v["hyperlapse_1"]["files"] < v["zarr_naive_1"]["files"]  # shards, not chunks
    assert v["hyperlapse_1"]["blocked_ms_per_snapshot"] > 0
    ratios = results["store_ratio_to_float32"]
    assert 0 < ratios["float16"] < ratios["float32"]
    assert "| tiny | hyperlapse_1 |" in results["table_markdown"]
