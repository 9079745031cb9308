"""benchmarks/sweep_forecast.py --quick: every predictor, protocol and decision ran, and the
simulated sweeps' costs obey their definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_simulated_sweep_costs(load_benchmark) -> None:
    bench = load_benchmark("sweep_forecast")
    rng = np.random.default_rng(0)
    y = rng.uniform(0.5, 0.9, 40)
    # a perfect ranker keeps one run past the cut; a reversed one must keep them all
    assert bench.one_cut_cost(y, y) == pytest.approx(0.2 + 0.8 / 40)
    assert bench.one_cut_cost(y, -y) == pytest.approx(1.0)
    perfect = bench.halving_cost(y, {c: y for c in bench.CUTS})
    noisy = bench.halving_cost(y, {c: y + rng.normal(0, 0.2, 40) for c in bench.CUTS})
    # every run reaches the first rung, and keeping everything costs the full sweep
    assert 0.1 < perfect <= noisy <= 1.0
    assert perfect == pytest.approx(0.1 + (0.1 + 0.3 + 0.5) / 40)
    assert bench.recall_top(y, y) == 1.0
    assert bench.recall_top(y, -y) == 0.0


@pytest.mark.slow
def test_quick_sweep_forecast(tmp_path, load_benchmark) -> None:
    bench = load_benchmark("sweep_forecast")
    bench.main(["--quick", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    res = json.loads((tmp_path / "sweep_forecast.json").read_text())
    assert "shared" in res["machine"]["note"] and res["wall_s"] > 0
    tasks = res["config"]["tasks"]
    for proto in ("within", "transfer"):
        for task in tasks:
            for name in bench.BASELINES + bench.HYPERLAPSE:
                row = res["summary"][f"{proto}|{task}|{name}"]
                for cut in bench.CUTS:
                    k = row[f"kendall@{cut}"]
                    assert -1 <= k["mean"] <= 1 and k["n"] == len(res["config"]["seeds"])
                assert 0 < row["halving_cost"]["mean"] <= 1
                assert 0.2 < row["one_cut_cost@0.2"]["mean"] <= 1
            goal = res["goals"][f"{proto}|{task}"]
            assert goal["strongest_baseline"] in bench.BASELINES
            assert isinstance(goal["kendall_goal_met"], bool)
    # the extrapolation reads the same curve as ASHA: at the cut both see the same runs
    assert set(res["final_metric_range"]) == set(tasks)
    md = (tmp_path / "sweep_forecast.md").read_text()
    assert "Goals at 20 %" in md and "ASHA" in md
