"""A population of small MLPs trained at once: stacked parameters and batched matmuls.

Run ``r`` of a population is an ordinary MLP whose layer ``l`` holds ``weight[r]`` and
``bias[r]``. :class:`PopulationMLP` stacks them along a leading run axis, so one ``bmm`` per
layer runs every member, and an element-wise optimiser (SGD, Adam) on the stacked tensors is
the same optimiser run on each member separately (the loss is the *sum* of the members' losses,
so each member's gradient is its own). Parameter names match the per-run MLP
(``nn.Sequential``: ``0.weight``, ``0.bias``, ``2.weight``, ...), so a population store is the
store of one run with a leading run axis on every parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..arch import describe_mlp, describe_population
from ..errors import ConfigError

__all__ = ["Sine", "StackedLinear", "PopulationMLP", "run_generator", "population_recorder"]


class Sine(nn.Module):
    """``sin(w0 * x)``, the SIREN activation (``w0`` scales the first layer's frequencies)."""

    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sine": Sine, "identity": nn.Identity}


def _activation(name: str) -> nn.Module:
    if name.startswith("sine"):
        w0 = float(name[5:-1]) if name.startswith("sine(") else 1.0
        return Sine(w0)
    if name not in _ACTIVATIONS:
        raise ConfigError(
            f"Expected an activation in {sorted(_ACTIVATIONS)} or 'sine(w0)', but got {name!r}."
        )
    return _ACTIVATIONS[name]()


class StackedLinear(nn.Module):
    """``R`` independent linear layers: ``y[r] = x[r] @ weight[r].T + bias[r]``.

    Shapes:
        weight: ``[R, out, in]``, bias: ``[R, out]``; input ``[R, B, in]`` (or ``[B, in]``,
        shared by all runs); output ``[R, B, out]``.
    """

    def __init__(self, runs: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.runs, self.in_features, self.out_features = runs, in_features, out_features
        self.weight = nn.Parameter(torch.empty(runs, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(runs, out_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.runs, *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class PopulationMLP(nn.Sequential):
    """``runs`` MLPs of one architecture with stacked parameters.

    Args:
        runs: population size R.
        widths: ``[n_0, ..., n_L]`` of each member.
        activations: one name per hidden layer ("relu", "tanh", "sine", "sine(30)"), or one name
            for all of them. The output layer is linear.

    Each member is initialised like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) from its own
    generator (:meth:`init_runs`), so a run's initial weights depend only on its seed, never on
    which population it trains in.

    Example:
        >>> pop = PopulationMLP(3, [2, 8, 1], "tanh")
        >>> pop.init_runs([torch.Generator().manual_seed(s) for s in range(3)])
        >>> pop(torch.randn(5, 2)).shape
        torch.Size([3, 5, 1])
        >>> member = pop.member(1)
        >>> bool(torch.allclose(member(torch.ones(1, 2)), pop(torch.ones(1, 2))[1]))
        True
    """

    def __init__(self, runs: int, widths: Sequence[int], activations: str | Sequence[str]):
        widths = [int(w) for w in widths]
        if runs < 1 or len(widths) < 2 or min(widths) < 1:
            raise ConfigError(
                f"Expected runs >= 1 and at least two positive widths, got runs={runs}, "
                f"widths={widths}."
            )
        if isinstance(activations, str):
            activations = [activations] * (len(widths) - 2)
        if len(activations) != len(widths) - 2:
            raise ConfigError(
                f"Expected {len(widths) - 2} hidden activations for widths {widths}, got "
                f"{list(activations)}."
            )
        mods: list[nn.Module] = []
        for l in range(len(widths) - 1):
            mods.append(StackedLinear(runs, widths[l], widths[l + 1]))
            if l < len(widths) - 2:
                mods.append(_activation(activations[l]))
        super().__init__(*mods)
        self.runs, self.widths, self.activations = runs, widths, list(activations)

    def template(self) -> nn.Sequential:
        """One member as an ordinary ``nn.Sequential`` of ``nn.Linear`` (same parameter names)."""
        mods: list[nn.Module] = []
        for l in range(len(self.widths) - 1):
            mods.append(nn.Linear(self.widths[l], self.widths[l + 1]))
            if l < len(self.widths) - 2:
                mods.append(_activation(self.activations[l]))
        return nn.Sequential(*mods)

    def architecture(self) -> dict[str, Any]:
        """:func:`hyperlapse.describe_mlp` of one member."""
        return describe_mlp(self.template())

    def recorded_architecture(self) -> dict[str, Any]:
        """The stacked parameters as recorded: :func:`hyperlapse.arch.describe_population`."""
        return describe_population(self.architecture(), self.runs)

    @torch.no_grad()
    def init_runs(self, generators: Sequence[torch.Generator]) -> None:
        """Initialise member ``r`` from ``generators[r]`` (``nn.Linear``'s default law)."""
        if len(generators) != self.runs:
            raise ConfigError(f"Expected {self.runs} generators, got {len(generators)}.")
        for layer in self:
            if not isinstance(layer, StackedLinear):
                continue
            bound = 1.0 / math.sqrt(layer.in_features)
            for r, g in enumerate(generators):
                layer.weight[r].uniform_(-bound, bound, generator=g)
                layer.bias[r].uniform_(-bound, bound, generator=g)

    @torch.no_grad()
    def member(self, r: int) -> nn.Sequential:
        """Run ``r`` as a standalone ``nn.Sequential`` (a copy)."""
        net = self.template()
        net.load_state_dict(self.member_state(r))
        return net

    def member_state(self, r: int) -> dict[str, Tensor]:
        """Run ``r``'s parameters as a state dict (copies)."""
        return {name: p.detach()[r].clone() for name, p in self.named_parameters()}


def run_generator(seed: int, run: int) -> torch.Generator:
    """The generator of run ``run`` of a zoo with seed ``seed`` (independent of batching)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(run)) % (2**63))


def population_recorder(path: str, model: PopulationMLP, every: int, **kwargs: Any) -> Any:
    """A :class:`~hyperlapse.TrajectoryRecorder` for a population (stacked parameters).

    The store's ``architecture`` attribute describes the stacked parameters
    (:meth:`PopulationMLP.recorded_architecture`: kind ``"population"``, the run count and one
    run's MLP); the zoo also writes the per-run architecture into the ``population`` attrs.
    """
    from ..record.recorder import TrajectoryRecorder

    return TrajectoryRecorder(
        path, model, every, architecture=model.recorded_architecture(), **kwargs
    )
