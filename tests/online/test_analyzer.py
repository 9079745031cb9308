from __future__ import annotations

import copy
import math

import pytest
import torch
from online_helpers import assert_json_close

from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.graph.parameter_graph import ParameterGraph
from hyperlapse.graph.permute import node_permutation, permute_hidden
from hyperlapse.online.analyzer import OnlineEncoder
from hyperlapse.report.metrics import auc_ap
from hyperlapse.report.schema import SCORE_FIELDS, check_report
from hyperlapse.train.forecast import (
    NUM_LAGS,
    baseline_scores,
    edge_features,
    forecast_metrics,
    forecast_targets,
)

KW = dict(d=4, refine_steps=2, dtype=torch.float64, num_hubs=3)


def _strip(report):
    return {k: v for k, v in report.items() if k != "timing"}


def _run(arch, states, steps, before_last=None, **kw):
    online = OnlineEncoder(arch, **{**KW, **kw})
    reports, zs = [], []
    for t, (state, step) in enumerate(zip(states, steps, strict=True)):
        if t == len(states) - 1 and before_last is not None:
            before_last.update(encoder=copy.deepcopy(online.encoder), z=online.z.clone())
        reports.append(online.update(state, step, {"loss": 1.0 / (step + 1)}))
        zs.append(online.z.clone())
    return reports, torch.stack(zs), online


@pytest.fixture(scope="module")
def base(run_factory):
    arch, states, steps, _ = run_factory(num=4)
    before_last = {}
    reports, zs, online = _run(arch, states, steps, before_last)
    return arch, states, steps, reports, zs, online, before_last


def test_reports_follow_the_schema_and_score_only_from_t_minus_1(base):
    arch, states, steps, reports, zs, online, before_last = base
    for t, report in enumerate(reports):
        check_report(report)
        assert report["index"] == t and report["step"] == steps[t]
        assert [layer["width"] for layer in report["layers"]] == arch["widths"]
        assert report["metrics"]["loss"] == pytest.approx(1.0 / (steps[t] + 1))
        for layer in report["layers"]:
            assert layer["radius_mean"] > 0
    assert all(reports[0]["scores"][k] is None for k in SCORE_FIELDS)
    assert reports[0]["layers"][1]["drift_mean"] is None
    assert all(0 <= reports[-1]["scores"][k] <= 1 for k in ("link_auc", "link_ap", "sign_acc"))
    assert reports[1]["weights"][0]["sign_flips"] is not None
    # the head's link AUC of snapshot t is that of the head (as it was before t) on z_{t-1},
    # over every edge (the forecast candidates)
    enc = before_last["encoder"]
    assert torch.equal(before_last["z"], zs[-2])
    graph = ParameterGraph.from_state_dict(states[-1], arch)
    with torch.no_grad():
        logits = enc.link_head(before_last["z"], graph.edge_index)
    auc, ap = auc_ap(logits, graph.links(online.config.link_q))
    scores = reports[-1]["scores"]
    assert scores["head_link_auc"] == pytest.approx(auc, abs=1e-12)
    assert scores["head_link_ap"] == pytest.approx(ap, abs=1e-12)
    # baselines: the shared definition, from the snapshots <= t-1 only
    ws = [ParameterGraph.from_state_dict(st, arch).edge_weight.double() for st in states]
    layer = graph.edge_layer
    q = online.config.link_q
    f = edge_features(ws[-5:-1], layer, 1, q=q)
    want = forecast_metrics(
        baseline_scores(f, "persistence"), forecast_targets(ws[-2], ws[-1], layer, q)
    )
    for target in ("link", "new_link", "sign_flip"):
        got = scores["baselines"]["persistence"]
        assert got[f"{target}_ap"] == pytest.approx(want[target]["ap"], abs=1e-12)
        assert scores["base_rate"][target] == pytest.approx(want[target]["base_rate"])
    # an untrained change-aware decoder is exactly the extrapolation baseline
    for key in ("link_ap", "new_link_ap", "sign_flip_ap", "sign_flip_auc"):
        assert scores[key] == scores["baselines"]["extrapolation"][key]
    assert set(scores["baselines"]) == {"persistence", "extrapolation", "edgebank", "logistic"}


def test_deterministic_for_a_fixed_seed(base):
    arch, states, steps, r1, z1, _, _ = base
    r2, z2, _ = _run(arch, states, steps)
    # bit-identical across processes (see test_analyze); within one process the second run
    # can differ in the last bit (float64), hence the tolerance
    assert_json_close([_strip(r) for r in r1], [_strip(r) for r in r2], tol=1e-12)
    assert torch.allclose(z1, z2, rtol=0, atol=1e-13)
    online = OnlineEncoder(arch, **{**KW, "seed": 4})
    online.update(states[0], 0)
    assert not torch.equal(z1[0], online.z)


def test_equivariant_to_permuting_hidden_neurons(base):
    arch, states, steps, r1, z1, _, _ = base
    g = torch.Generator().manual_seed(1)
    _, perms = permute_hidden(states[0], arch, generator=g)
    permuted = [permute_hidden(s, arch, perms)[0] for s in states]
    r2, z2, _ = _run(arch, permuted, steps)
    node_perm = node_permutation(arch["widths"], perms)  # new -> old
    assert not torch.equal(node_perm, torch.arange(len(node_perm)))
    assert torch.allclose(z2, z1[:, node_perm], atol=1e-6)
    for a, b in zip(r1, r2, strict=True):
        b = _strip(b)
        b["hubs"] = dict(b["hubs"], nodes=[int(node_perm[n]) for n in b["hubs"]["nodes"]])
        a = _strip(a)
        # the index within a layer is not invariant (it is the neuron's position)
        a["hubs"].pop("index")
        b["hubs"].pop("index")
        # per-neuron lists are in node order: the same values, permuted
        for key in ("importance", "in_norm", "out_norm"):
            if a["neurons"] is not None:
                assert_json_close(sorted(a["neurons"].pop(key)), sorted(b["neurons"].pop(key)), key)
        assert_json_close(a, b)


def test_cost_per_snapshot_is_bounded(run_factory):
    arch, states, steps, _ = run_factory(num=7)
    online = OnlineEncoder(arch, **{**KW, "window": 2, "geometry_every": 0})
    sizes = []
    for state, step in zip(states, steps, strict=True):
        online.update(state, step)
        held = online.retained()
        assert all(not t.requires_grad and t.grad_fn is None for t in held)
        assert len(online._state.history) <= 2
        sizes.append((len(held), sum(t.numel() for t in held)))
        opt_state = online._optimizer.state_dict()["state"]
        sizes[-1] += (
            sum(v.numel() for s in opt_state.values() for v in s.values() if torch.is_tensor(v)),
        )
    # from the moment the window (2) and the forecasters' history (NUM_LAGS + 1 snapshots) are
    # full, nothing kept between snapshots grows
    assert len(set(sizes[NUM_LAGS + 1 :])) == 1, sizes


def test_pretrained_encoder_from_path(tmp_path, small_run):
    arch, states, steps, _ = small_run
    first = OnlineEncoder(arch, **KW)
    path = tmp_path / "enc.pt"
    first.encoder.save(path)
    online = OnlineEncoder(arch, encoder=path, refine_steps=2)
    assert online.mode == "pretrained" and online._optimizer is None
    before = {k: v.clone() for k, v in online.encoder.state_dict().items()}
    report = online.update(states[0], 0)
    assert report["encoder"]["mode"] == "pretrained" and report["encoder"]["train"] is None
    assert all(torch.equal(before[k], v) for k, v in online.encoder.state_dict().items())


@pytest.mark.slow
def test_learns_a_static_run(run_factory):
    """Self-supervised on the run: links of an unchanging network become predictable."""
    arch, states, steps, _ = run_factory(num=1, widths=(4, 12, 12, 3))
    online = OnlineEncoder(arch, d=4, geometry_every=0)
    aucs = [online.update(states[0], t)["scores"]["head_link_auc"] for t in range(6)]
    # scored over every edge (all non-links are negatives), not only the sampled ones the head
    # trains on: measured 0.53 at t = 1 -> 0.69-0.71 from t = 3
    assert aucs[-1] > 0.65 and aucs[-1] > aucs[1] + 0.1, aucs


def test_errors(small_run):
    arch, states, _, _ = small_run
    with pytest.raises(ArchitectureError):
        OnlineEncoder(None)
    with pytest.raises(ConfigError, match="refine_steps"):
        OnlineEncoder(arch, refine_steps=-1)
    with pytest.raises(ConfigError, match="probe"):
        OnlineEncoder(arch, probes=torch.zeros(4, 5))
    with pytest.raises(ConfigError, match="encoder"):
        OnlineEncoder(arch, encoder=3)
    online = OnlineEncoder(arch, **KW)
    with pytest.raises(ArchitectureError):
        online.update({"nope": torch.zeros(1)}, 0)


def test_geometry_and_importance_on_data_probes(small_run):
    from hyperlapse.report.neurons import neuron_importance

    arch, states, steps, _ = small_run
    data = torch.randn(20, arch["widths"][0], generator=torch.Generator().manual_seed(0))
    online = OnlineEncoder(arch, **{**KW, "data_probes": data})
    report = online.update(states[1], steps[1])
    geo = report["geometry"]
    assert geo["probes"] == "random" and geo["data"]["num_probes"] == 20
    neurons = report["neurons"]
    assert neurons["probes"] == "data"
    want = neuron_importance(states[1], arch, data.double())
    assert neurons["importance"] == pytest.approx(want.tolist(), abs=1e-12)
    assert len(neurons["in_norm"]) == sum(arch["widths"][1:-1])
    assert neurons["importance_turnover"] is None
    assert online.update(states[2], steps[2])["neurons"]["importance_turnover"] is not None
    with pytest.raises(ConfigError, match="data probes"):
        OnlineEncoder(arch, data_probes=torch.zeros(3, 99))


def test_frozen_online_encoder_matches_offline_embedding_with_time_gaps(small_run):
    """Same encoder, no refinement, no training: online z_t == encoder.embed(run).z[t], the
    change features seeing the same gaps between optimizer steps."""
    from hyperlapse.graph.temporal import TemporalParameterGraph
    from hyperlapse.nn.encoder import TemporalEncoder

    arch, states, steps, _ = small_run
    steps = [0, 3, 9, 10, 30][: len(states)]
    run = TemporalParameterGraph.from_states(states, arch, steps=steps)
    torch.manual_seed(0)
    g = run[0]
    enc = TemporalEncoder(in_features=g.x.shape[1], num_identities=g.num_identities, d=4).double()
    online = OnlineEncoder(arch, encoder=enc, refine_steps=0, dtype=torch.float64,
                           geometry_every=0)
    zs = []
    for state, step in zip(states, steps, strict=True):
        online.update(state, step)
        zs.append(online.z)
    torch.testing.assert_close(torch.stack(zs), enc.embed(run).z)
    uniform = TemporalParameterGraph.from_states(states, arch, steps=list(range(len(states))))
    assert not torch.allclose(enc.embed(uniform).z[2:], enc.embed(run).z[2:])


def test_online_baselines_are_the_benchmarks(run_factory):
    """One definition: at every snapshot the online report's baselines equal RunForecasts's
    (the benchmark's) at origin t-1, horizon 1, on the same candidates."""
    from hyperlapse.train.forecast import BASELINES, RunForecasts

    arch, states, steps, _ = run_factory(num=8)
    online = OnlineEncoder(arch, **{**KW, "geometry_every": 0})
    reports = [online.update(s, st) for s, st in zip(states, steps, strict=True)]
    graphs = [ParameterGraph.from_state_dict(s, arch) for s in states]
    weights = torch.stack([g.edge_weight.double() for g in graphs])
    gap = float(steps[1] - steps[0])
    assert all(b - a == gap for a, b in zip(steps[:-1], steps[1:], strict=True))
    rf = RunForecasts(weights, graphs[0].edge_layer, q=online.config.link_q, gap=gap)
    for t in range(2, len(states)):
        want_all = rf.baselines(t - 1, 1)
        got = reports[t]["scores"]["baselines"]
        assert set(got) == set(want_all) == set(BASELINES) or t < 3
        for name, scores in want_all.items():
            want = forecast_metrics(scores, rf.targets(t - 1, 1))
            for target, m in want.items():
                for k in ("auc", "ap"):
                    a, b = got[name][f"{target}_{k}"], m[k]
                    assert (a is None and math.isnan(b)) or a == pytest.approx(b, abs=1e-9), (
                        t, name, target, k)


def test_drift_noise_floor_is_the_drift_of_an_unchanged_snapshot(small_run):
    """The floor predicts exactly the drift the next update shows when the weights do not
    change (frozen encoder: nothing else moves), and measuring it leaves the run untouched."""
    arch, states, _, _ = small_run
    kw = {**KW, "train_encoder": False}
    online = OnlineEncoder(arch, noise_every=1, **kw)
    reports = [online.update(states[0], t) for t in range(3)]
    assert all(layer["drift_noise"] is None for layer in reports[0]["layers"])
    for floor, seen in zip(reports[1]["layers"], reports[2]["layers"], strict=True):
        assert floor["drift_noise"] > 0
        assert seen["drift_mean"] == pytest.approx(floor["drift_noise"], rel=1e-6, abs=1e-9)
        assert seen["drift_per_step"] == pytest.approx(seen["drift_mean"])  # 1 step apart
    # the measurement changes nothing downstream (trained encoder, real run)
    arch, states, steps, _ = small_run
    with_floor, zs_a, _ = _run(arch, states, steps, noise_every=1)
    without, zs_b, _ = _run(arch, states, steps, noise_every=0)
    assert torch.equal(zs_a, zs_b)
    assert all(layer["drift_noise"] is None for r in without for layer in r["layers"])
    gap = steps[1] - steps[0]
    layer = with_floor[1]["layers"][1]
    assert layer["drift_per_step"] == pytest.approx(layer["drift_mean"] / gap)


@pytest.mark.parametrize("gap", [1, 20])
def test_drift_noise_floor_is_measured_at_the_recording_interval(small_run, gap):
    """The encoder reads the time gap: a floor measured one step apart predicted nothing about
    snapshots 20 steps apart (it was the drift of another input)."""
    arch, states, _, _ = small_run
    online = OnlineEncoder(arch, noise_every=1, **{**KW, "train_encoder": False})
    reports = [online.update(states[0], gap * t) for t in range(3)]
    for floor, seen in zip(reports[1]["layers"], reports[2]["layers"], strict=True):
        assert seen["drift_mean"] == pytest.approx(floor["drift_noise"], rel=1e-6, abs=1e-9)


def test_a_reinitialisation_is_above_the_noise_floor():
    """Recorded every 20 steps, a fresh initialisation mid-run must read as change, not noise
    (with the floor measured at gap 1 it sat under a floor of 1.08 on this run)."""
    from torch import nn

    from hyperlapse import describe_mlp
    from hyperlapse.report.summary import structure_change

    torch.manual_seed(0)

    def make():
        return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                             nn.Linear(16, 2))

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.randn(256, 2)
    y = (X[:, 0] * X[:, 1] > 0).long()
    states, steps = [], []
    for i in range(241):
        if i % 20 == 0:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            steps.append(i)
        if i == 200:
            model = make()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    online = OnlineEncoder(describe_mlp(model), geometry_every=0)
    reports = [online.update(s, st) for s, st in zip(states, steps, strict=True)]
    reinit = next(c for c in structure_change(reports) if c["step_to"] == 220)
    assert reinit["noisy"] is False and reinit["drift"] > 1.5 * reinit["noise"]
    for layer in reports[steps.index(220)]["layers"]:
        if layer["type"] == "hidden":
            assert layer["drift_mean"] > layer["drift_noise"]
