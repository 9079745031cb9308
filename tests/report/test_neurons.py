"""Ground truth for report quantities: ablation importance, weight norms, partial Spearman."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlapse import describe_mlp
from hyperlapse.report.neurons import (
    neuron_importance,
    partial_spearman,
    rank,
    top_turnover,
    weight_norms,
)


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)
    ).double()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("labels", [None, "class", "regression"])
def test_importance_matches_brute_force_ablation(seed, labels):
    net = _net(seed)
    arch = describe_mlp(net)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    if labels == "class":
        y = torch.randint(0, 2, (40,), generator=g)
    elif labels == "regression":
        y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    else:
        y = None
    got = neuron_importance(net.state_dict(), arch, x, y)

    def cost(model):
        with torch.no_grad():
            out = model(x)
            if y is None:
                return (out - net(x)).pow(2).sum(-1).mean()
            if labels == "class":
                return nn.functional.cross_entropy(out, y)
            return nn.functional.mse_loss(out, y)

    want = []
    for lin, nxt in ((0, 2), (2, 4)):  # zero a neuron's outgoing weights = ablate its output
        for j in range(net[lin].out_features):
            ablated = _net(seed)
            ablated.load_state_dict(net.state_dict())
            with torch.no_grad():
                ablated[nxt].weight[:, j] = 0
            want.append(float(cost(ablated) - cost(net)))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    norms = weight_norms(net.state_dict(), arch)
    torch.testing.assert_close(norms[:5, 0], net[0].weight.norm(dim=1))
    torch.testing.assert_close(norms[5:, 1], net[4].weight.norm(dim=0))


def test_partial_spearman_removes_what_the_controls_explain():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(300, generator=g, dtype=torch.float64)
    own = torch.randn(300, generator=g, dtype=torch.float64)
    x = c + 0.3 * torch.randn(300, generator=g, dtype=torch.float64)
    y = c + 0.3 * torch.randn(300, generator=g, dtype=torch.float64)
    assert partial_spearman(x, y) > 0.8 and abs(partial_spearman(x, y, c)) < 0.15
    # information beyond the control survives
    x2, y2 = c + own, c + own + 0.1 * torch.randn(300, generator=g, dtype=torch.float64)
    assert partial_spearman(x2, y2, c) > 0.8
    # invariant to monotone transforms (ranks)
    assert partial_spearman(x.exp(), y, c) == pytest.approx(partial_spearman(x, y, c))
    assert rank(torch.tensor([2.0, 2.0, 1.0])).tolist() == [2.5, 2.5, 1.0]
    assert top_turnover(None, x, 5) is None and top_turnover(x, x, 5) == 0
    assert top_turnover(x, -x, 5) == 5
