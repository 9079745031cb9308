"""Outgrowing one run and one disk: many trajectories, object-store URLs, dask."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from torch import nn

import hyperlapse
from hyperlapse.errors import MissingDependencyError, NotAStoreError

STEPS, EVERY = 20, 4
STORED = [0, 4, 8, 12, 16, 20]  # 6 snapshots: two shards of 4


def _record(location, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    # snapshots_per_chunk=4: several shards per run, so chunked reads cross shard borders
    with hyperlapse.TrajectoryRecorder(location, model, every=EVERY, snapshots_per_chunk=4) as rec:
        rec.attach(optimizer)
        for _ in range(STEPS):
            loss = (model(x) - y).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.log(loss=loss.detach())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    finals = [_record(root / f"seed{seed}.zarr", seed) for seed in range(3)]
    return root, finals


def test_open_trajectories_by_glob_and_by_list(runs):
    root, finals = runs
    by_glob = hyperlapse.open_trajectories(str(root / "seed*.zarr"))
    by_list = hyperlapse.open_trajectories([root / f"seed{s}.zarr" for s in range(3)])
    assert [t.location for t in by_glob] == [t.location for t in by_list]
    for traj, final in zip(by_glob, finals, strict=True):
        assert traj.steps.tolist() == STORED
        for name, value in final.items():
            assert torch.equal(traj[-1][name], value)
    assert not torch.equal(by_glob[0][-1]["0.weight"], by_glob[1][-1]["0.weight"])
    with pytest.raises(NotAStoreError, match="matches nothing"):
        hyperlapse.open_trajectories(str(root / "nothing*.zarr"))


def test_memory_url_roundtrip():
    pytest.importorskip("fsspec")
    url = f"memory://hyperlapse-{uuid.uuid4().hex}/run.zarr"
    final = _record(url, seed=5)
    traj = hyperlapse.open_trajectory(url)
    assert traj.steps.tolist() == STORED
    for name, value in final.items():
        assert torch.equal(traj[-1][name], value)
    assert np.isfinite(traj.metrics["loss"][1:]).all()
    assert traj.attrs["closed"] is True
    # a second recorder on the same URL resumes the store: it appends after the last step
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    model.load_state_dict(final)
    with hyperlapse.TrajectoryRecorder(url, model, every=EVERY) as rec:
        with torch.no_grad():
            model[0].weight.add_(1.0)
        rec.capture(step=25)
    traj.refresh()
    assert traj.steps.tolist() == [*STORED, 25]
    assert torch.equal(traj[-1]["0.weight"], final["0.weight"] + 1.0)
    assert torch.equal(traj[-2]["0.weight"], final["0.weight"])


def test_url_whose_backend_is_missing_names_the_package(tmp_path):
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed: the missing-backend error cannot be provoked")
    model = nn.Linear(2, 2)
    with pytest.raises(MissingDependencyError, match="s3fs"):
        hyperlapse.TrajectoryRecorder("s3://bucket/run.zarr", model)


def test_dask_reads_the_same_values(runs):
    da = pytest.importorskip("dask.array")
    root, _ = runs
    trajs = hyperlapse.open_trajectories(str(root / "seed*.zarr"))
    views = [t.weights("0.weight") for t in trajs]
    expected = np.stack(
        [np.stack([t[i]["0.weight"].numpy() for i in range(len(t))]) for t in trajs]
    )
    # the lazy view (committed snapshots only), or the raw Zarr array sliced to them
    via_view = da.stack([da.from_array(v, chunks=v.shards) for v in views])
    via_zarr = da.stack([da.from_zarr(v.zarr, chunks=v.shards)[: len(v)] for v in views])
    for stack in (via_view, via_zarr):
        assert stack.shape == (3, 6, 10, 6)
        assert stack.chunks[1] == (4, 2)  # one task per shard, the last one partial
        np.testing.assert_array_equal(stack.compute(), expected)
    norms = np.sqrt((via_view**2).sum(axis=(2, 3))).compute()
    np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=(2, 3)), rtol=1e-6)
