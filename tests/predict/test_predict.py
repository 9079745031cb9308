from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import hyperlapse
from hyperlapse import TrajectoryRecorder, describe_mlp, open_trajectory
from hyperlapse.cli import main
from hyperlapse.errors import ArchitectureError, ConfigError, MissingDependencyError
from hyperlapse.predict import FEATURES, FeatureExtractor, Predictor, cross_validate, fit_predictor
from hyperlapse.predict.features import PermutedRun, WeightStats, snapshot_indices


class FakeRun:
    """A trajectory in memory: what the features read (len, weights, metrics, architecture)."""

    def __init__(self, widths, scale, T=10, seed=0):
        torch.manual_seed(0)  # one shared initialisation, scaled up by a run-specific factor
        net = nn.Sequential(*[m for a, b in zip(widths[:-1], widths[1:], strict=True)
                              for m in (nn.Linear(a, b), nn.Tanh())][:-1])
        self.architecture = describe_mlp(net)
        g = torch.Generator().manual_seed(seed)
        growth = torch.linspace(1, scale, T)
        self._w = {n: (p.detach()[None] * growth.view(-1, *[1] * p.dim())
                       + 0.01 * torch.randn(T, *p.shape, generator=g)).numpy()
                   for n, p in net.named_parameters()}
        self.metrics = {"loss": np.exp(-np.linspace(0, scale, T))}
        self.attrs = {"scale": float(scale), "big": int(scale > 2)}
        self.location = f"fake-{seed}"

    def __len__(self):
        return len(self.metrics["loss"])

    def weights(self, name):
        return self._w[name]


def _runs(n=40, widths=(3, 6, 5, 2)):
    scales = np.linspace(1, 3, n)
    return [FakeRun(list(widths), s, seed=i) for i, s in enumerate(scales)], scales


@pytest.mark.parametrize("length,snapshots,k", [(21, "all", 16), (21, 0.2, 5), (7, 0.5, 2),
                                                (1, "all", 3), (50, "last", 1)])
def test_snapshot_indices(length, snapshots, k):
    idx = snapshot_indices(length, snapshots, k)
    assert len(idx) == k and idx.min() >= 0 and idx.max() < length
    assert np.all(np.diff(idx) >= 0)
    if snapshots == "last":
        assert idx.tolist() == [length - 1]
    else:
        frac = 1.0 if snapshots == "all" else snapshots
        assert idx[0] == 0 and idx[-1] == max(1, int(np.ceil(frac * length))) - 1


def test_stats_are_invariant_to_hidden_permutations_and_flat_is_not():
    runs, _ = _runs(4)
    perm = [PermutedRun(r, torch.Generator().manual_seed(i)) for i, r in enumerate(runs)]
    idx = [np.arange(10)] * 4
    a, b = WeightStats()(runs, idx), WeightStats()(perm, idx)
    assert np.array_equal(a, b)  # bit-identical: a model sees exactly the same rows
    flat = FEATURES["flat"]()
    assert not np.allclose(flat(runs, idx), flat(perm, idx))
    # the permuted run computes the same function
    r, p = runs[0], perm[0]
    x = torch.randn(5, 3)

    def forward(run, t):
        h = x
        for i, layer in enumerate(run.architecture["layers"]):
            h = h @ torch.from_numpy(run.weights(layer["weight"])[t]).T + torch.from_numpy(
                run.weights(layer["bias"])[t])
            h = torch.tanh(h) if i < len(run.architecture["layers"]) - 1 else h
        return h

    assert torch.allclose(forward(r, 3), forward(p, 3), atol=1e-5)


@pytest.mark.parametrize("features", ["stats", "loss-curve", "flat"])
def test_rank_learns_and_save_load_roundtrip(features, tmp_path):
    runs, scales = _runs(40)
    tr, te = list(range(0, 40, 2)), list(range(1, 40, 2))
    p = fit_predictor([runs[i] for i in tr], scales[tr], "rank", features=features,
                      model="linear", snapshots="all")
    assert p.score([runs[i] for i in te], scales[te]) > 0.8
    p.save(tmp_path / "m.pt")
    q = Predictor.load(tmp_path / "m.pt")
    assert repr(q) == repr(p)
    assert np.array_equal(q.predict(runs), p.predict(runs))


def test_classify_and_regress_with_targets_from_attrs():
    runs, scales = _runs(40)
    p = fit_predictor(runs, "attr:big", "classify", model="gbt", snapshots=0.5)
    assert p.score(runs, [r.attrs["big"] for r in runs]) > 0.9
    y = np.stack([scales, 2 * scales], 1)
    r = fit_predictor(runs, y, "regress", model="linear", snapshots="last")
    mse = r.score(runs, y)
    assert len(mse) == 2 and mse[0] < np.var(scales) / 4
    cv = cross_validate(runs, scales, "rank", folds=4, model="linear")
    assert len(cv["scores"]) == 4 and cv["metric"] == "kendall_tau" and cv["mean"] > 0.5


def test_mixed_architectures():
    a, _ = _runs(10, (3, 6, 5, 2))
    b, _ = _runs(10, (3, 8, 2))
    p = fit_predictor(a + b, "attr:scale", "rank", features="stats", model="linear")
    assert p.predict(a[:2] + b[:2]).shape == (4,)
    with pytest.raises(ArchitectureError, match=r"\[3, 6, 5, 2\].*\[3, 8, 2\]"):
        fit_predictor(a + b, "attr:scale", "rank", features="flat")


def test_bad_input_errors():
    runs, scales = _runs(6)
    with pytest.raises(ConfigError, match="one target per trajectory"):
        fit_predictor(runs, scales[:3], "rank")
    with pytest.raises(ConfigError, match=r"runs \[2\] have none"):
        fit_predictor(runs, [1.0, 2.0, None, 1.0, 2.0, 3.0], "rank")
    with pytest.raises(ConfigError, match="numeric targets.*run 1"):
        fit_predictor(runs, [1.0, "cat", 2.0, 1.0, 2.0, 3.0], "regress")
    with pytest.raises(ConfigError, match="as many runs as folds"):
        cross_validate(runs, scales, "rank", folds=10)
    with pytest.raises(ConfigError, match="smallest class has 1"):
        cross_validate(runs, [0, 0, 0, 0, 0, 1], "classify", folds=2)
    with pytest.raises(ConfigError, match="at least two classes"):
        fit_predictor(runs, [1] * 6, "classify")
    with pytest.raises(ConfigError, match="snapshots"):
        fit_predictor(runs, scales, "rank", snapshots=1.5)
    with pytest.raises(ConfigError, match="task"):
        fit_predictor(runs, scales, "cluster")
    with pytest.raises(ConfigError, match="attribute 'nope'"):
        fit_predictor(runs, "attr:nope", "rank")
    with pytest.raises(ConfigError, match="features"):
        fit_predictor(runs, scales, "rank", features="encoder-not-yet")
    runs[2].architecture = None
    with pytest.raises(ArchitectureError, match="trajectory 2"):
        fit_predictor(runs, scales, "rank")


def test_missing_sklearn_is_a_clear_error(monkeypatch):
    runs, scales = _runs(6)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError,
                       match=r"pip install -e '\.\[predict\]' in the hyperlapse clone"):
        fit_predictor(runs, scales, "rank")


def test_a_registered_extractor_is_used_and_rebuilt_on_load(tmp_path, monkeypatch):
    class Final(FeatureExtractor):
        def __call__(self, trajectories, indices):
            return np.stack([t.metrics["loss"][i] for t, i in zip(trajectories, indices,
                                                                  strict=True)])

    monkeypatch.setitem(FEATURES, "final-loss", Final)
    Final.name = "final-loss"
    runs, scales = _runs(20)
    p = fit_predictor(runs, scales, "rank", features="final-loss", model="linear")
    p.save(tmp_path / "p.pt")
    assert isinstance(Predictor.load(tmp_path / "p.pt").features, Final)


def _record(path, seed, lr):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with TrajectoryRecorder(path, net, every=5) as rec:
        rec.attach(opt)
        for _ in range(20):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            rec.log(loss=loss.detach())


def test_cli_fit_and_apply_on_recorded_stores(tmp_path, capsys):
    for i, lr in enumerate(np.linspace(0.001, 0.2, 8)):
        _record(tmp_path / f"run{i}.zarr", i, float(lr))
    pattern = str(tmp_path / "run*.zarr")
    assert len(hyperlapse.open_trajectories(pattern)) == 8
    out = tmp_path / "m.pt"
    assert main(["predict", "fit", pattern, "--target", "metric:loss", "--task", "rank",
                 "--snapshots", "0.5", "--model", "linear", "--folds", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2-fold cross-validated kendall_tau" in text and out.exists()
    assert main(["predict", "apply", str(out), pattern, "--target", "metric:loss"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9 and lines[-1].startswith("score:")
    assert main(["predict", "fit", pattern, "--target", "metric:loss", "--task", "rank",
                 "--folds", "9", "--out", str(out)]) == 1
    assert "as many runs as folds" in capsys.readouterr().err
    assert open_trajectory(tmp_path / "run0.zarr").attrs["committed"] == 5  # stores untouched


def test_predict_help_explains():
    with pytest.raises(SystemExit):
        main(["predict", "fit", "--help"])


def test_top_level_names():
    assert hyperlapse.fit_predictor is fit_predictor
    assert hyperlapse.Predictor is Predictor
    assert callable(hyperlapse.open_zoo) and callable(hyperlapse.build_zoo)
