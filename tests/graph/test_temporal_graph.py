from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hyperlapse import describe_mlp
from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.graph import ParameterGraph, TemporalParameterGraph


class FakeTrajectory:
    """Minimal stand-in for hyperlapse.Trajectory that counts reads."""

    def __init__(self, states, architecture, steps):
        self.states = states
        self.architecture = architecture
        self.steps = np.asarray(steps, dtype=np.int64)
        self.reads: list[int] = []

    def __len__(self):
        return len(self.states)

    def __getitem__(self, t):
        self.reads.append(t)
        return self.states[t]


def make_run(T=6, widths=(3, 5, 2), seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], widths[2]))
    states = []
    for _ in range(T):
        states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return net, states


def test_from_trajectory_is_lazy_and_slices():
    net, states = make_run(T=10)
    traj = FakeTrajectory(states, describe_mlp(net), steps=np.arange(10) * 5)
    tg = TemporalParameterGraph.from_trajectory(traj, start=1, stop=9, stride=3)
    assert traj.reads == []
    assert len(tg) == 3 and tg.steps.tolist() == [5, 20, 35]
    assert tg.num_nodes == 10 and tg.edge_index.shape == (2, 25) and tg.widths == [3, 5, 2]
    assert traj.reads == []
    g = tg[1]
    assert traj.reads == [4]
    expected = ParameterGraph.from_state_dict(states[4], describe_mlp(net))
    assert torch.equal(g.edge_weight, expected.edge_weight) and torch.equal(g.x, expected.x)
    assert torch.equal(g.edge_index, tg.edge_index)
    tg[1]
    assert traj.reads == [4]  # cached
    assert torch.equal(tg[-1].edge_weight, expected_weights(states[7], net))
    with pytest.raises(IndexError, match="out of range"):
        tg[3]


def test_slicing_is_lazy_and_composes():
    net, states = make_run(T=10)
    traj = FakeTrajectory(states, describe_mlp(net), steps=np.arange(10) * 5)
    tg = TemporalParameterGraph.from_trajectory(traj, start=1, stride=2)  # 1, 3, 5, 7, 9
    sub = tg[1:4]
    assert traj.reads == [] and len(sub) == 3 and sub.steps.tolist() == [15, 25, 35]
    assert torch.equal(sub[0].edge_weight, expected_weights(states[3], net))
    assert traj.reads == [3]
    assert tg[::2].steps.tolist() == [5, 25, 45]
    assert len(tg[4:1]) == 0


def expected_weights(state, net):
    return ParameterGraph.from_state_dict(state, describe_mlp(net)).edge_weight


def test_length_follows_a_growing_trajectory_when_stop_is_none():
    net, states = make_run(T=4)
    traj = FakeTrajectory(states[:2], describe_mlp(net), steps=[0, 1])
    tg = TemporalParameterGraph.from_trajectory(traj)
    assert len(tg) == 2
    traj.states = states
    traj.steps = np.arange(4)
    assert len(tg) == 4 and tg.steps.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("q", [0.2, 0.5])
def test_links_and_new_links_identity(q):
    net, states = make_run(T=5)
    tg = TemporalParameterGraph.from_states(states, describe_mlp(net))
    assert tg.steps.tolist() == list(range(5))
    assert not tg.new_links(0, q).any()
    for t in range(len(tg)):
        assert torch.equal(tg.links(t, q), tg[t].links(q))
        assert torch.equal(tg.edge_weights(t), tg[t].edge_weight)
    changed = 0
    for t in range(1, len(tg)):
        now, before, new = tg.links(t, q), tg.links(t - 1, q), tg.new_links(t, q)
        assert torch.equal(new, now & ~before)
        assert torch.equal(now, new | (now & before))
        changed += int(new.sum())
    assert changed > 0
    assert torch.equal(tg.new_links(-1, q), tg.new_links(4, q))
    assert [g.num_edges for g in tg] == [25] * 5


def test_errors_for_bad_inputs():
    net, states = make_run(T=2)
    traj = FakeTrajectory(states, None, steps=[0, 1])
    with pytest.raises(ArchitectureError, match="architecture is None"):
        TemporalParameterGraph.from_trajectory(traj)
    with pytest.raises(ConfigError, match="stride"):
        TemporalParameterGraph(
            FakeTrajectory(states, describe_mlp(net), [0, 1]), describe_mlp(net), stride=0
        )
    with pytest.raises(ConfigError, match="one step per state"):
        TemporalParameterGraph.from_states(states, describe_mlp(net), steps=[0])
    bad = [dict(states[0]), {k: v for k, v in states[1].items() if k != "2.weight"}]
    tg = TemporalParameterGraph.from_states(bad, describe_mlp(net))
    tg[0]
    with pytest.raises(ArchitectureError, match="no parameter '2.weight'"):
        tg[1]


def test_from_a_recorded_store_matches_the_live_parameters(tmp_path):
    hyperlapse = pytest.importorskip("hyperlapse")
    try:
        recorder_cls, open_trajectory = hyperlapse.TrajectoryRecorder, hyperlapse.open_trajectory
    except (ImportError, AttributeError):  # pragma: no cover - store not built yet
        pytest.skip("recorder/store not available")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    live = []
    with recorder_cls(tmp_path / "run.zarr", net, every=1) as rec:
        rec.attach(opt)
        live.append(ParameterGraph.from_module(net).edge_weight)
        for _ in range(3):
            loss = net(torch.randn(8, 3)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            live.append(ParameterGraph.from_module(net).edge_weight)
    tg = TemporalParameterGraph.from_trajectory(open_trajectory(tmp_path / "run.zarr"))
    assert len(tg) == 4 and tg.steps.tolist() == [0, 1, 2, 3]
    for t in range(4):
        assert torch.equal(tg.edge_weights(t), live[t])


def test_the_description_is_validated_once_not_per_snapshot(monkeypatch):
    from hyperlapse.spec import MlpSpec

    net, states = make_run(T=4)
    arch = describe_mlp(net)
    calls = []
    original = MlpSpec.from_json.__func__
    monkeypatch.setattr(MlpSpec, "from_json",
                        classmethod(lambda cls, d: calls.append(1) or original(cls, d)))
    tg = TemporalParameterGraph.from_states(states, arch)
    graphs = list(tg)
    assert len(calls) == 1
    assert tg.spec == MlpSpec.from_json(arch) and tg.architecture == arch
    # a spec and its JSON build the same graph
    for g, state in zip(graphs, states, strict=True):
        assert torch.equal(ParameterGraph.from_state_dict(state, arch).edge_weight, g.edge_weight)
        assert g.spec is tg.spec and g.architecture == arch
