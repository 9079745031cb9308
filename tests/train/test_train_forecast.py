"""One definition of forecasting targets and baselines; the change-aware decoder starts there."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import one_thread  # noqa: F401 (autouse fixture)

from hyperlapse import describe_mlp
from hyperlapse.errors import ConfigError
from hyperlapse.geometry.ball import make_manifold
from hyperlapse.graph.links import top_fraction
from hyperlapse.graph.permute import node_permutation, permute_hidden
from hyperlapse.graph.temporal import TemporalParameterGraph
from hyperlapse.nn.change_decoder import ChangeDecoder
from hyperlapse.train.forecast import (
    BASELINES,
    EDGE_FEATURES,
    TARGETS,
    RunForecasts,
    baseline_scores,
    decoder_scores,
    edge_features,
    fit_change_decoder,
    fit_logistic,
    forecast_metrics,
    forecast_targets,
    link_thresholds,
    select_reference,
)
from hyperlapse.train.synthetic import make_mlp, toy_run


@pytest.fixture(scope="module")
def run():
    return toy_run(widths=(4, 8, 8, 3), snapshots=14, every=2, seed=0)


def _weights(run):
    return torch.stack([run.edge_weights(t) for t in range(len(run))]).double()


def test_targets_follow_the_per_layer_link_definition(run):
    w = _weights(run)
    layer = run.edge_layer
    ft = forecast_targets(w[3], w[8], layer)
    links3 = top_fraction(w[3], layer, 3, 0.2)
    links8 = top_fraction(w[8], layer, 3, 0.2)
    assert torch.equal(ft.labels["link"], links8)
    assert torch.equal(ft.candidates["new_link"], (~links3).nonzero().squeeze(1))
    assert torch.equal(ft.labels["new_link"], links8[~links3])
    flips = (torch.sign(w[3]) != torch.sign(w[8]))[ft.candidates["sign_flip"]]
    assert torch.equal(ft.labels["sign_flip"], flips)
    # the link threshold is the smallest |w| that is a link, per layer
    thr = link_thresholds(w[3], layer)
    for l in range(3):
        sel = layer == l
        assert torch.all(thr[sel] == w[3][sel & links3].abs().min())
    assert ft.base_rate("link") == pytest.approx(float(links8.double().mean()))


def test_baselines_are_per_layer_normalised_and_extrapolate(run):
    w = _weights(run)
    layer = run.edge_layer
    f = edge_features(w[:6], layer, horizon=3)
    thr = link_thresholds(w[5], layer)
    persistence = baseline_scores(f, "persistence")
    torch.testing.assert_close(persistence["link"], w[5].abs() / thr)
    ext = baseline_scores(f, "extrapolation")
    w_hat = w[5] + 3 * (w[5] - w[4])
    torch.testing.assert_close(ext["new_link"], w_hat.abs() / thr)
    torch.testing.assert_close(ext["sign_flip"], -torch.sign(w[5]) * w_hat / thr)
    # scaling one layer's weights leaves every score unchanged (normalised per layer)
    scaled = w[:6].clone()
    scaled[:, layer == 0] *= 7.0
    g = edge_features(scaled, layer, horizon=3)
    for name in ("persistence", "extrapolation"):
        for target, s in baseline_scores(g, name).items():
            torch.testing.assert_close(s, baseline_scores(f, name)[target])
    with pytest.raises(ConfigError, match="horizon"):
        edge_features(w[:2], layer, horizon=0)
    with pytest.raises(ConfigError, match="logistic"):
        baseline_scores(f, "logistic")


def test_logistic_baseline_recovers_a_linear_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    y = (x[:, 1] - 0.5 * x[:, 2] + 0.2 * torch.randn(2000, generator=g, dtype=torch.float64)) > 0
    beta, _, norm = fit_logistic(x, y)
    coef = beta / norm[1]
    assert abs(float(coef[0])) < 0.3 * float(coef[1])
    assert float(coef[2]) / float(coef[1]) == pytest.approx(-0.5, abs=0.1)


def test_every_baseline_is_causal_and_scored_on_the_same_candidates(run):
    rf = RunForecasts(_weights(run), run.edge_layer, gap=2.0)
    b = rf.baselines(8, 2)
    assert set(b) == set(BASELINES)
    # changing the future (snapshots > t) changes no score at origin t
    w2 = _weights(run)
    w2[9:] = torch.randn_like(w2[9:])
    rf2 = RunForecasts(w2, run.edge_layer, gap=2.0)
    b2 = rf2.baselines(8, 1)
    b1 = rf.baselines(8, 1)
    for name in BASELINES:
        for target in TARGETS:
            assert torch.equal(b1[name][target], b2[name][target])
    m = forecast_metrics(b["persistence"], rf.targets(8, 2))
    assert set(m) == set(TARGETS)
    for target in TARGETS:
        assert m[target]["candidates"] == rf.targets(8, 2).candidates[target].numel()


@pytest.mark.parametrize("dim", [0, 4])
def test_untrained_decoder_is_exactly_the_reference_baseline(run, dim):
    rf = RunForecasts(_weights(run), run.edge_layer, gap=2.0)
    choice = select_reference([rf], [1, 3], stop=10)
    assert set(choice) == {1, 3} and all(set(c) == set(TARGETS) for c in choice.values())
    z = torch.randn(len(run), run.num_nodes, 4, dtype=torch.float64) * 0.1 if dim else None
    torch.manual_seed(0)
    dec = ChangeDecoder(dim, len(EDGE_FEATURES), manifold=make_manifold()).double()
    for h in (1, 3):
        got = decoder_scores(dec, rf, z, run.edge_index, 10, h, choice)
        f = rf.features(10, h)
        for target in TARGETS:
            want = baseline_scores(f, choice[h][target])[target]
            assert torch.equal(got[target], want)
        # the full path (MLP evaluated, as during training) gives exactly the same
        zt = None if z is None else z[10]
        full = dec(zt, run.edge_index, f, rf.reference(10, h, choice[h]))
        assert dec.correction_is_zero() and torch.equal(full.detach()[:, 1], got["new_link"])


def test_decoder_training_keeps_the_baseline_unless_held_out_data_improve(run):
    rf = RunForecasts(_weights(run), run.edge_layer, gap=2.0)
    torch.manual_seed(0)
    dec = ChangeDecoder(0, len(EDGE_FEATURES), manifold=make_manifold()).double()
    losses = fit_change_decoder(dec, [(rf, None, run.edge_index)], [1, 2], stop=12, epochs=20)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    info = dec.fit_info
    assert info["validation_examples"] > 0
    best = max(ap for _, ap in info["validation_ap"])
    chosen = dict(info["validation_ap"])[info["epoch"]]
    assert chosen == best  # the kept epoch (0 = untrained = baseline) is the best held out
    with pytest.raises(ConfigError, match="No training origin"):
        fit_change_decoder(dec, [(rf, None, run.edge_index)], [1], start=20, epochs=1)


def test_features_and_decoder_are_equivariant_to_hidden_permutations(run):
    arch = describe_mlp(make_mlp(run.widths))
    states = [run.source[t] for t in range(len(run))]
    _, perms = permute_hidden(states[0], arch, generator=torch.Generator().manual_seed(3))
    perm_run = TemporalParameterGraph.from_states(
        [permute_hidden(s, arch, perms)[0] for s in states], arch, steps=run.steps
    )
    node_perm = node_permutation(run.widths, perms)  # new -> old
    # match edges of the permuted graph to the original ones by their (old) endpoints
    src, dst = node_perm[perm_run.edge_index[0]], node_perm[perm_run.edge_index[1]]
    key = {(int(a), int(b)): i for i, (a, b) in enumerate(run.edge_index.T.tolist())}
    edge_perm = torch.tensor([key[(int(a), int(b))] for a, b in zip(src, dst, strict=True)])
    rf, rf_p = (RunForecasts(_weights(r), r.edge_layer, gap=2.0) for r in (run, perm_run))
    torch.testing.assert_close(rf_p.features(9, 2), rf.features(9, 2)[edge_perm])
    z = torch.randn(len(run), run.num_nodes, 4, dtype=torch.float64) * 0.2
    z_p = z[:, node_perm]
    torch.manual_seed(0)
    dec = ChangeDecoder(4, len(EDGE_FEATURES), manifold=make_manifold()).double()
    with torch.no_grad():
        dec.g[-1].weight.normal_()  # a non-trivial correction
    a = decoder_scores(dec, rf, z, run.edge_index, 9, 2)
    b = decoder_scores(dec, rf_p, z_p, perm_run.edge_index, 9, 2)
    for target in TARGETS:
        torch.testing.assert_close(b[target], a[target][edge_perm])


def test_logistic_fit_on_thinned_negatives_ranks_like_the_full_fit(run):
    from hyperlapse.train.forecast import fit_logistic_targets, logistic_baseline

    rf = RunForecasts(_weights(run), run.edge_layer, gap=2.0)
    examples = [(rf.features(s, 1), rf.targets(s, 1)) for s in range(3, 9)]
    full = fit_logistic_targets(examples)
    thin = fit_logistic_targets(examples, max_rows=200)
    f, tg = rf.features(10, 1), rf.targets(10, 1)
    a = forecast_metrics(logistic_baseline(f, full), tg)
    b = forecast_metrics(logistic_baseline(f, thin), tg)
    assert abs(a["link"]["auc"] - b["link"]["auc"]) < 0.05


def test_forecast_window_is_run_forecasts_at_every_origin():
    """One forecasting window: the online scorer's bounded window gives, at every origin, the
    features and baselines of the offline RunForecasts (horizon 1), in bounded memory."""
    from hyperlapse.train.forecast import BASELINES, ForecastWindow, RunForecasts

    g = torch.Generator().manual_seed(0)
    layer = torch.tensor([0] * 12 + [1] * 6)
    w = torch.cumsum(torch.randn(9, 18, generator=g, dtype=torch.float64) * 0.3, dim=0)
    rf = RunForecasts(w, layer, q=0.25, gap=5.0)
    win = ForecastWindow(layer, q=0.25)
    sizes = []
    for t in range(w.shape[0]):
        win.push(w[t], gap=5)
        sizes.append(len(win.state()))
        if t == 0:
            continue
        torch.testing.assert_close(win.features(), rf.features(t, 1), rtol=0, atol=0)
        got, want = win.baselines(), rf.baselines(t, 1)
        assert set(got) == set(want) <= set(BASELINES)
        for name in want:
            for target in want[name]:
                torch.testing.assert_close(got[name][target], want[name][target])
    assert max(sizes[5:]) == min(sizes[5:])  # bounded: stops growing
    with pytest.raises(ConfigError, match="fit_origins"):
        ForecastWindow(layer, fit_origins=9)
