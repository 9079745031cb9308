from __future__ import annotations

import pytest


@pytest.mark.slow
def test_board_latency_quick(tmp_path, load_benchmark):
    module = load_benchmark("board_latency")
    res = module.main(["--quick", "--out", str(tmp_path / "b.json")])
    assert (tmp_path / "b.json").exists() and (tmp_path / "b.md").exists()
    lat = res["latency"]
    assert lat["snapshots"] == 4 and 0 < lat["api_s"]["median"] < 30
    load = res["first_load"]["seconds"]["folder"]
    assert 0 < load["api_runs_s"]["min"] <= load["api_runs_s"]["max"]
    assert set(res["memory"]["ratio_to_smallest"]) == {"20", "60"}
