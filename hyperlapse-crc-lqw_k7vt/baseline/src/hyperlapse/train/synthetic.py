"""Small recorded runs in memory, for tests, examples and benchmarks (no store involved)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..arch import describe_mlp
from ..graph.temporal import TemporalParameterGraph

__all__ = ["make_mlp", "train_states", "toy_run"]


def make_mlp(widths: Sequence[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """``Linear(n_0, n_1), act, ..., Linear(n_{L-1}, n_L)``."""
    layers: list[nn.Module] = []
    for l, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if l < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def train_states(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    steps: int,
    every: int = 1,
    lr: float = 0.1,
    batch_size: int | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Tensor]], list[int]]:
    """Train ``model`` with SGD (momentum 0.9) and keep a copy of its state every ``every`` steps.

    Returns:
        ``(states, steps)``: the snapshots (step 0 included) and their optimizer steps.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    states, taken = [], []
    n = inputs.shape[0]
    for step in range(steps + 1):
        if step % every == 0:
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            taken.append(step)
        if step == steps:
            break
        idx = torch.randperm(n, generator=gen)[: batch_size or n]
        loss = loss_fn(model(inputs[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return states, taken


def toy_run(
    widths: Sequence[int] = (4, 8, 8, 3),
    snapshots: int = 12,
    *,
    seed: int = 0,
    every: int = 2,
    lr: float = 0.2,
) -> TemporalParameterGraph:
    """A small classification run on Gaussian blobs, as a TemporalParameterGraph.

    Example:
        >>> tg = toy_run(snapshots=3)
        >>> len(tg), tg.widths
        (3, [4, 8, 8, 3])
    """
    gen = torch.Generator().manual_seed(seed)
    classes = widths[-1]
    centres = torch.randn(classes, widths[0], generator=gen) * 2.0
    labels = torch.randint(0, classes, (128,), generator=gen)
    inputs = centres[labels] + torch.randn(128, widths[0], generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_mlp(widths)
    states, steps = train_states(
        model,
        inputs,
        labels,
        F.cross_entropy,
        steps=(snapshots - 1) * every,
        every=every,
        lr=lr,
        batch_size=32,
        seed=seed,
    )
    return TemporalParameterGraph.from_states(states, describe_mlp(model), steps=steps)
