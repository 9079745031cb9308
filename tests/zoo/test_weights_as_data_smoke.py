from __future__ import annotations

import pytest


@pytest.mark.slow
def test_weights_as_data_quick(tmp_path, load_benchmark):
    module = load_benchmark("weights_as_data")
    out = tmp_path / "r.json"
    res = module.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")])
    assert out.exists() and out.with_suffix(".md").exists()
    build = res["build"]
    assert build["runs"] == 40 and build["speedup_wall"] > 1
    assert build["population"]["files"] < build["one_by_one"]["files_for_all_runs"]
    inr = res["tasks"]["digits-inr (random init)"]
    # stats features are invariant to hidden-neuron permutations: identical accuracy
    assert inr["stats T>1 (logistic regression), trained model applied to permuted test runs"][
        "per_seed"] == inr["stats T>1 (logistic regression)"]["per_seed"]
    name = "hyperbolic encoder + 64 probes T=1 (d=4)"
    # the metanetwork with probe features is equivariant by construction: its predictions on
    # the permuted test runs are the same up to float rounding (at most one run may flip)
    agreement = inr[f"{name}, trained model applied to permuted test runs"][
        "agreement_with_unpermuted_predictions"]
    n_test = len(inr[name]["predictions"][0])
    assert min(agreement) >= 1 - 1 / n_test - 1e-9
    assert {"hyperbolic encoder T=1 (d=4)", "hyperbolic encoder + 64 probes T>1 (d=4)",
            "Euclidean encoder + 64 probes T>1 (d=4, matched scales)",
            "probe outputs T=1, 64 probes (logistic regression)",
            "probe outputs T>1, 64 probes x 2 snapshots (logistic regression)"} <= set(inr)
    assert inr["hyperbolic encoder + 64 probes T>1 (d=4)"]["k"] == 2 and inr[name]["k"] == 1
    sines = res["tasks"]["sines"]
    assert {"hyperbolic encoder + 64 probes T>1 (d=4)", "hyperbolic encoder T>1 (d=2)",
            "probe outputs T=1, 64 probes (linear)"} <= set(sines)
    cost = res["encoder_cost"]
    assert cost["T>1"]["saved_MB"] > cost["T=1"]["saved_MB"] > 0
    assert len(res["tasks"]["sines"]["stats T>1 (linear)"]["mean"]) == 3
    assert "Kendall" in res["tasks"]["digits-generalisation"]["_metric"]
