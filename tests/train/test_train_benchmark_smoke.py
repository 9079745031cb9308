"""Smoke test of benchmarks/link_sign_prediction.py --quick (its smallest setting)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from train_helpers import one_thread  # noqa: F401 (autouse fixture)

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "link_sign_prediction.py"


@pytest.mark.slow
def test_quick_benchmark_writes_a_complete_report(tmp_path):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("link_sign_prediction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    module.main(["--quick", "--workers", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["machine"]["cpu_count"] >= 1
    models = {(r["task"], r["model"], r.get("d")) for r in report["results"]}
    for task in ("digits", "diabetes", "moons"):
        assert (task, "baseline", None) in models
        assert (task, "poincare_c1", 2) in models and (task, "euclidean", 2) in models
        assert (task, "poincare_c0.1", 2) in models
    baseline = next(r for r in report["results"] if r["model"] == "baseline")
    # the trivial baseline scores every new-link candidate 0: chance level
    assert baseline["metrics"]["previous"]["new_link_auc"] == 0.5
    for r in report["results"]:
        for metrics in r["metrics"].values():
            assert 0.0 <= metrics["link_auc"] <= 1.0 and not math.isnan(metrics["sign_acc"])
    assert "poincare_c1" in module.compact_table(report["results"])
    timing = report["timing_784_256_256_10"]
    assert timing["forward_ms"] > 0 and timing["message_edges"] < timing["num_edges"]
