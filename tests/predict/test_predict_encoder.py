"""features="encoder": the temporal encoder as a metanetwork inside fit_predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_predict import _record, _runs
from torch import nn

from hyperlapse.cli import main
from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.predict import EncoderFeatures, Predictor, fit_predictor
from hyperlapse.predict.features import PermutedRun

FAST = {"d": 4, "epochs": 25, "layers": 1, "heads": 1, "lr": 0.02, "batch_size": 16,
        "max_snapshots": 3}


@pytest.fixture(scope="module")
def fitted():
    runs, scales = _runs(40)
    p = fit_predictor(runs[::2], scales[::2], "regress", features="encoder",
                      feature_options=FAST, seed=0)
    return p, runs, scales


def _assert_round_trip(p, runs, tmp_path):
    """Saved and loaded, the predictor has the same configuration and the same predictions."""
    p.save(tmp_path / "p.pt")
    q = Predictor.load(tmp_path / "p.pt")
    np.testing.assert_array_equal(q.predict(runs), p.predict(runs))
    assert q.features.config() == p.features.config()


def test_the_metanetwork_learns_and_round_trips(fitted, tmp_path):
    p, runs, scales = fitted
    assert p.model_name == "head" and p.k == 3 and isinstance(p.features, EncoderFeatures)
    losses = [h["loss"] for h in p.features.history]
    assert len(losses) == FAST["epochs"] and losses[-1] < 0.5 * losses[0]
    mse = p.score(runs[1::2], scales[1::2])  # held-out runs
    assert mse < 0.5 * np.var(scales)  # beats predicting the mean
    _assert_round_trip(p, runs, tmp_path)


def test_predictions_are_invariant_to_hidden_permutations(fitted):
    p, runs, _ = fitted
    perm = [PermutedRun(r, torch.Generator().manual_seed(i)) for i, r in enumerate(runs)]
    # float32 sums in another order: equal up to rounding, amplified a little by the head
    np.testing.assert_allclose(p.predict(perm), p.predict(runs), rtol=1e-3, atol=1e-4)
    assert not np.array_equal(perm[0].weights("0.weight"), runs[0].weights("0.weight"))


def test_classify_mixed_architectures_and_a_sklearn_model_on_the_readout():
    small, s1 = _runs(12, widths=(3, 4, 2))
    deep, s2 = _runs(12, widths=(3, 6, 5, 4, 2))
    runs = small + deep
    labels = np.array([int(s > 2) for s in np.concatenate([s1, s2])])
    p = fit_predictor(runs, labels, "classify", features="encoder",
                      feature_options={**FAST, "epochs": 2}, seed=1)
    assert set(p.predict(runs)) <= {0, 1}
    g = fit_predictor(runs, labels, "classify", features="encoder", model="linear",
                      feature_options={**FAST, "epochs": 2}, seed=1)
    assert g.transform(runs).shape == (24, 2 * 4 * (FAST["d"] + 2))


def test_seeds_and_manifolds(fitted):
    _, runs, scales = fitted
    opts = {**FAST, "epochs": 2}
    a, b = (fit_predictor(runs[:16], scales[:16], "rank", features="encoder",
                          feature_options=opts, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.predict(runs), b.predict(runs))  # deterministic
    flat = fit_predictor(runs[:16], scales[:16], "rank", features="encoder",
                         feature_options={**opts, "manifold": "euclidean"}, seed=3)
    assert flat.features.network.encoder.config.manifold == "euclidean"
    assert not np.array_equal(flat.predict(runs), a.predict(runs))


def test_bad_options_are_clear():
    runs, scales = _runs(8)
    with pytest.raises(ConfigError, match="positive epochs"):
        fit_predictor(runs, scales, "rank", features="encoder", feature_options={"epochs": 0})
    with pytest.raises(ConfigError, match="model='head' only with a trainable extractor"):
        fit_predictor(runs, scales, "rank", features="stats", model="head")
    with pytest.raises(ConfigError, match="not been fitted"):
        EncoderFeatures()(runs, [np.arange(2)] * len(runs))
    p = fit_predictor(runs, scales, "rank", features="encoder",
                      feature_options={**FAST, "epochs": 1})
    deeper, _ = _runs(2, widths=(3, 6, 5, 4, 2))
    with pytest.raises(ArchitectureError, match=r"has \[3, 6, 5, 4, 2\].*need 8 identity"):
        p.predict(deeper)


def test_cli_fit_with_the_encoder(tmp_path, capsys):
    for i, lr in enumerate(np.linspace(0.001, 0.2, 6)):
        _record(tmp_path / f"run{i}.zarr", i, float(lr))
    out = tmp_path / "enc.pt"
    assert main(["predict", "fit", str(tmp_path / "run*.zarr"), "--target", "metric:loss",
                 "--task", "rank", "--features", "encoder", "--epochs", "2", "--dim", "4",
                 "--manifold", "euclidean", "--folds", "2", "--out", str(out)]) == 0
    assert "features='encoder'" in capsys.readouterr().out
    assert main(["predict", "apply", str(out), str(tmp_path / "run*.zarr")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6


PROBED = {**FAST, "probes": 9, "epochs": 3}


@pytest.fixture(scope="module")
def probed():
    runs, scales = _runs(24, widths=(2, 6, 5, 1))
    p = fit_predictor(runs[::2], scales[::2], "regress", features="encoder",
                      feature_options=PROBED, seed=0)
    return p, runs, scales


def test_probe_features_widen_the_node_features_and_round_trip(probed, tmp_path):
    p, runs, _ = probed
    from hyperlapse.graph.parameter_graph import NODE_FEATURES
    from hyperlapse.nn.probes import probe_inputs

    assert p.features.fitted["in_features"] == NODE_FEATURES + 9
    saved = torch.tensor(p.features.fitted["probe_inputs"]["2"], dtype=torch.float64)
    assert torch.equal(saved, probe_inputs(2, 9))  # the 3 x 3 grid, saved with the model
    _assert_round_trip(p, runs, tmp_path)


def test_probe_readout_is_invariant_to_hidden_permutations(probed):
    p, runs, _ = probed
    perm = [PermutedRun(r, torch.Generator().manual_seed(i)) for i, r in enumerate(runs)]
    assert not np.array_equal(perm[0].weights("0.weight"), runs[0].weights("0.weight"))
    np.testing.assert_allclose(p.transform(perm), p.transform(runs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.predict(perm), p.predict(runs), rtol=1e-3, atol=1e-4)


def test_probe_features_change_what_the_encoder_reads(probed):
    p, runs, scales = probed
    plain = fit_predictor(runs[::2], scales[::2], "regress", features="encoder",
                          feature_options={**PROBED, "probes": 0}, seed=0)
    assert plain.features.fitted["in_features"] + 9 == p.features.fitted["in_features"]
    assert "probe_inputs" not in plain.features.fitted
    assert not np.allclose(plain.transform(runs), p.transform(runs))


def test_a_predictor_file_from_before_probes_still_loads(tmp_path):
    runs, scales = _runs(8)
    p = fit_predictor(runs, scales, "rank", features="encoder",
                      feature_options={**FAST, "epochs": 1})
    p.save(tmp_path / "new.pt")
    blob = torch.load(tmp_path / "new.pt", weights_only=True)
    for key in ("probes", "probe_kind", "probe_seed", "probe_norm"):
        del blob["features"]["config"][key]  # what an older hyperlapse wrote
    torch.save(blob, tmp_path / "old.pt")
    q = Predictor.load(tmp_path / "old.pt")
    assert q.features.options["probes"] == 0
    np.testing.assert_array_equal(q.predict(runs), p.predict(runs))


def test_probe_outputs_are_the_models_own_outputs_on_the_probes():
    from hyperlapse.nn.probes import probe_inputs
    from hyperlapse.predict.features import ProbeOutputs

    runs, _ = _runs(3, widths=(2, 6, 5, 3))
    idx = [np.array([0, 9])] * 3
    rows = ProbeOutputs(probes=16)(runs, idx)
    assert rows.shape == (3, 2 * 16 * 3)
    x = probe_inputs(2, 16)
    for run, row in zip(runs, rows, strict=True):
        for j, t in enumerate(idx[0]):
            net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(),
                                nn.Linear(5, 3)).double()
            net.load_state_dict({n: torch.from_numpy(np.asarray(run.weights(n)[t],
                                                                dtype=np.float64))
                                 for n, _ in net.named_parameters()})
            with torch.no_grad():
                want = net(x).reshape(-1).numpy()
            np.testing.assert_allclose(row[j * 48:(j + 1) * 48], want, rtol=1e-12, atol=1e-12)
    perm = [PermutedRun(r, torch.Generator().manual_seed(i)) for i, r in enumerate(runs)]
    np.testing.assert_allclose(ProbeOutputs(probes=16)(perm, idx), rows, atol=1e-12)


def test_bad_probe_options_are_clear():
    runs, scales = _runs(6, widths=(2, 4, 1))
    with pytest.raises(ConfigError, match="probes to be an int >= 0"):
        EncoderFeatures(probes=-1)
    with pytest.raises(ConfigError, match="probe_kind"):
        EncoderFeatures(probes=4, probe_kind="halton")
    with pytest.raises(ConfigError, match="probes >= 1"):
        fit_predictor(runs, scales, "rank", features="probe-outputs",
                      feature_options={"probes": 0})
    for run in runs:
        run.architecture["layers"][0]["activation"] = "swish"
    with pytest.raises(ArchitectureError, match="'swish'"):
        fit_predictor(runs, scales, "rank", features="encoder",
                      feature_options={**FAST, "epochs": 1, "probes": 4})


def test_cli_fit_with_probes(tmp_path, capsys):
    for i, lr in enumerate(np.linspace(0.001, 0.2, 6)):
        _record(tmp_path / f"run{i}.zarr", i, float(lr))
    runs = str(tmp_path / "run*.zarr")
    for extra in (["--features", "encoder", "--epochs", "1", "--dim", "4", "--probes", "8"],
                  ["--features", "probe-outputs", "--probes", "8", "--model", "linear"]):
        out = tmp_path / "p.pt"
        assert main(["predict", "fit", runs, "--target", "metric:loss", "--task", "rank",
                     "--folds", "0", "--out", str(out), *extra]) == 0
        assert Predictor.load(out).features.config()["probes"] == 8
        assert main(["predict", "apply", str(out), runs]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 7  # fit line + 6 runs
