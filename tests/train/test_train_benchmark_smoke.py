"""Smoke test of benchmarks/link_sign_prediction.py --quick (its smallest setting)."""

from __future__ import annotations

import json

import pytest
from train_helpers import one_thread  # noqa: F401 (autouse fixture)


@pytest.mark.slow
def test_quick_benchmark_writes_a_complete_report(tmp_path, load_benchmark):
    pytest.importorskip("sklearn")
    module = load_benchmark("link_sign_prediction")
    out = tmp_path / "result.json"
    module.main(["--quick", "--workers", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["machine"]["threads_per_job"] == 1
    methods = {"persistence", "extrapolation", "edgebank", "logistic", *module.MODELS}
    cells = {(r["task"], r["method"]) for r in report["summary"]}
    for task in ("digits", "diabetes", "moons"):
        assert {(task, m) for m in methods} <= cells
    for r in report["summary"]:
        assert 0.0 < r["base_rate"] < 1.0
        if r["ap"] is not None:  # null where a target had no positive
            assert 0.0 <= r["ap"] <= 1.0 and 0.0 <= r["auc"] <= 1.0
    # the models start from a closed-form baseline: a model never kept below its start on the
    # held-out window is reported as is; the verdict lists exist for every model
    assert set(report["verdicts"]) == set(module.MODELS)
    assert "| moons | 5 | 2 |" in module.table(report["summary"], "new_link")
    md = out.with_suffix(".md").read_text()
    assert "## New links" in md and "## Sign flips" in md and "shared" in md


@pytest.mark.slow
def test_quick_geometry_check(tmp_path, load_benchmark):
    pytest.importorskip("sklearn")
    module = load_benchmark("link_sign_prediction")
    out = tmp_path / "geo.json"
    report = module.main(["--quick", "--workers", "1", "--geometry-dims", "2", "--out", str(out)])
    kinds = {(r["task"], r["manifold"]) for r in report["results"]}
    assert {(t, m) for t in ("digits", "diabetes", "moons") for m in ("poincare", "euclidean")} \
        == kinds
    assert all(0.0 <= r["head_link_auc"] <= 1.0 for r in report["results"])
    assert json.loads(out.read_text())["settings"]["dims"] == [2]
