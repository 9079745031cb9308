"""fit_encoder: reduces the loss, is seedable, accepts runs in every form, stays quiet."""

from __future__ import annotations

import pytest
import torch
from train_helpers import one_thread  # noqa: F401 (autouse fixture)

from hyperlapse import fit_encoder
from hyperlapse.errors import ConfigError
from hyperlapse.nn.encoder import TemporalEncoder
from hyperlapse.train.embed import embed_refined
from hyperlapse.train.fit import encoder_loss
from hyperlapse.train.synthetic import toy_run


@pytest.fixture(scope="module")
def runs():
    return [toy_run(snapshots=8, seed=s) for s in (0, 1)]


def test_fit_reduces_the_loss(runs, capsys):
    untrained = fit_encoder(runs, d=3, epochs=0, seed=0, progress=False)
    before = encoder_loss(untrained, runs)
    enc = fit_encoder(runs, d=3, epochs=12, seed=0, lr=1e-2, progress=False)
    after = encoder_loss(enc, runs)
    assert after["total"] < 0.8 * before["total"]
    assert after["link"] < before["link"]
    assert len(enc.history) == 12 and enc.history[-1]["total"] < enc.history[0]["total"]
    assert capsys.readouterr().err == ""


def test_fit_is_seedable_and_leaves_the_global_rng_alone(runs):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = fit_encoder(runs[0], d=2, epochs=1, seed=5, progress=False)
    assert torch.equal(torch.rand(1), expected)
    b = fit_encoder(runs[0], d=2, epochs=1, seed=5, progress=False)
    c = fit_encoder(runs[0], d=2, epochs=1, seed=6, progress=False)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert any(
        not torch.equal(v, w)
        for v, w in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_fit_accepts_graph_lists_and_continues_an_encoder(runs):
    graphs = [runs[0][t] for t in range(4)]
    enc = fit_encoder(graphs, d=2, epochs=1, progress=False, manifold="euclidean")
    assert isinstance(enc, TemporalEncoder) and enc.config.manifold == "euclidean"
    again = fit_encoder(graphs, epochs=1, progress=False, encoder=enc)
    assert again is enc and len(enc.history) == 1
    with pytest.raises(ConfigError, match="horizon"):
        fit_encoder(graphs[:1], progress=False)


def test_fit_and_embed_read_a_recorded_store(tmp_path):
    from hyperlapse import TrajectoryRecorder, open_trajectory
    from hyperlapse.train.synthetic import make_mlp

    torch.manual_seed(0)
    model = make_mlp([3, 5, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    with TrajectoryRecorder(tmp_path / "run.zarr", model, every=1) as rec:
        rec.attach(opt)
        for _ in range(4):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    traj = open_trajectory(tmp_path / "run.zarr")
    enc = fit_encoder(traj, d=2, epochs=1, progress=False)
    emb = embed_refined(enc, traj, refine_steps=1)
    assert emb.z.shape == (len(traj), 10, 2)
    assert emb.steps.tolist() == list(traj.steps)
