from __future__ import annotations

import pytest


@pytest.mark.slow
def test_online_scaling_quick(tmp_path, capsys, load_benchmark):
    module = load_benchmark("online_scaling")
    out = tmp_path / "r.json"
    res = module.main(["--quick", "--out", str(out)])
    assert out.exists()
    small = res["sizes"]["64-64-32-10"]
    assert set(small["per_snapshot"]["seconds"]) == {"T=3", "T=6"}
    assert small["reencode"]["speedup"] > 0
    assert res["training_slowdown"]["with_live_report"]["dropped"] == 0
    assert res["training_slowdown"]["with_live_report"]["reported"] == 3  # steps 0, 10, 20
    assert res["machine"]["cpu_count"] >= 1


def test_analysis_threads_quick(tmp_path, load_benchmark):
    module = load_benchmark("analysis_threads")
    res = module.main(["--quick", "--out", str(tmp_path / "t.json")])
    assert (tmp_path / "t.json").exists()
    for label in ("1", "default"):
        s = res["seconds_per_snapshot"][label]
        assert 0 < s["min"] <= s["median"] <= s["max"]
    assert res["default_over_one_thread"] > 0


@pytest.mark.slow
def test_sweep_cost_quick(tmp_path, load_benchmark):
    pytest.importorskip("distributed")
    module = load_benchmark("sweep_cost")
    res = module.main(["--quick", "--out", str(tmp_path / "s.json")])
    for label in ("in-process", "local-cluster"):
        s = res["seconds_per_store"][label]
        assert 0 < s["min"] <= s["median"] <= s["max"]


def test_compression_cost_quick(tmp_path, load_benchmark):
    module = load_benchmark("compression_cost")
    res = module.main(["--quick", "--out", str(tmp_path / "c.json")])
    f32 = res["choices"]["float32"]
    assert f32["none"]["stored_over_raw"] > 1.0  # raw bytes plus a 4-byte checksum per chunk
    assert f32["auto"]["stored_over_raw"] < f32["none"]["stored_over_raw"]
    for row in f32.values():
        if isinstance(row, dict):
            assert 0 < row["ms_per_mb"]["min"] <= row["ms_per_mb"]["median"]


def test_drift_interval_quick(tmp_path, load_benchmark):
    module = load_benchmark("drift_interval")
    res = module.main(["--quick", "--out", str(tmp_path / "d.json")])
    assert set(res["intervals"]) == {"2", "20"}
    assert res["raw_rate_ratio"] > 0 and res["intervals"]["20"]["snapshots"] == 3
