"""Smoke test of benchmarks/report_quantities.py --quick (its smallest setting)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "report_quantities.py"


@pytest.mark.slow
def test_quick_report_quantities(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(sys, "path", [str(SCRIPT.parent), *sys.path])
    spec = importlib.util.spec_from_file_location("report_quantities", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
