from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlapse import describe_mlp


def make_run(num: int = 5, widths=(3, 7, 5, 2), seed: int = 0, steps_between: int = 3):
    """A short training run of a small tanh MLP: (architecture, [state dicts], steps, model)."""
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(nn.Tanh())
    model = nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, widths[0], generator=g)
    y = (X[:, 0] > 0).long() % widths[-1]
    states, steps = [], []
    for t in range(num):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        steps.append(t * steps_between)
        for _ in range(steps_between):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
    return describe_mlp(model), states, steps, model


@pytest.fixture
def small_run():
    return make_run()


@pytest.fixture(scope="session")
def run_factory():
    return make_run
