"""Smoke test of benchmarks/report_quantities.py --quick (its smallest setting)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
def test_quick_report_quantities(tmp_path, load_benchmark):
    pytest.importorskip("sklearn")
    module = load_benchmark("report_quantities")
    out = tmp_path / "rq.json"
    threads = torch.get_num_threads()
    try:
        module.main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script runs single-threaded
    report = json.loads(out.read_text())
    summary = report["runs"][0]["summary"]
    for key in ("spearman_radius_importance", "partial_spearman_radius_importance"):
        assert -1.0 <= summary[key] <= 1.0
    vol = report["volumes"][0]
    assert vol["after"]["grid"] > 0 and vol["after"]["data"] > 0
