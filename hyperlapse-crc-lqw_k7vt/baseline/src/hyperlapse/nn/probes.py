"""Probe features: every neuron's activations on a fixed set of probe inputs.

A recorded MLP is evaluated (from its recorded architecture,
:func:`hyperlapse.geometry.pullback.mlp_forward`) on ``P`` fixed probe inputs; each node of the
parameter graph gets its value on each probe: the probe coordinate for an input node, the
post-activation value for a hidden neuron, the output for an output neuron. Permuting a hidden
layer's neurons permutes their rows, so the features are permutation-equivariant by
construction (Kofinas et al., "Graph neural networks for learning equivariant representations
of neural networks", ICLR 2024). For an implicit neural representation (coordinates ->
intensity) the output node's features are the image at the probe points.

Probe inputs (:func:`probe_inputs`) depend only on the input dimension, the count, the kind and
a seed:

* ``"grid"``: a regular grid over ``[-1, 1]^n`` with ``m`` points per axis (``P = m^n``; for
  2-D INRs on an ``m x m`` pixel grid over ``[-1, 1]^2``, the pixel centres themselves);
* ``"uniform"``: seeded uniform points in ``[-1, 1]^n``;
* ``"normal"``: seeded standard normal samples;
* ``"auto"``: ``"grid"`` for 1-D and 2-D inputs when ``P`` is a perfect power, ``"uniform"``
  for other 1-D and 2-D inputs, ``"normal"`` above.

Normalisation (:func:`probe_node_features`, ``normalise``):

* ``"none"``: the raw values;
* ``"asinh"``: ``asinh(v)`` elementwise (about ``v`` near 0, ``log 2|v|`` for large ``|v|``:
  unbounded values are compressed, monotonically, without a data-dependent scale);
* ``"layer"``: each layer's values divided by their root mean square over the layer's neurons
  and the probes when it exceeds 1 (bounded activations such as sine and tanh stay as they
  are, and the values an INR outputs keep their scale; unbounded ones, ReLU layers and logits,
  are brought to unit scale). The scale is a statistic of the whole layer, so the features stay
  permutation-equivariant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..geometry.pullback import mlp_forward

__all__ = ["PROBE_KINDS", "PROBE_NORMALISATIONS", "probe_inputs", "probe_node_features",
           "probe_outputs"]

PROBE_KINDS = ("auto", "grid", "uniform", "normal")
PROBE_NORMALISATIONS = ("layer", "asinh", "none")


def _grid_side(count: int, dim: int) -> int | None:
    side = round(count ** (1.0 / dim))
    for m in (side - 1, side, side + 1):
        if m >= 1 and m**dim == count:
            return m
    return None


def check_probe_options(count: Any, kind: Any, normalise: Any = "layer") -> None:
    """Raise a :class:`~hyperlapse.errors.ConfigError` for a bad probe count, kind or
    normalisation."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(
            f"Expected probes to be an int >= 0 (the number of probe inputs; 0 = no probe "
            f"features), but got {count!r}."
        )
    if kind not in PROBE_KINDS:
        raise ConfigError(f"Expected probe_kind to be one of {PROBE_KINDS}, but got {kind!r}.")
    if normalise not in PROBE_NORMALISATIONS:
        raise ConfigError(
            f"Expected probe_norm to be one of {PROBE_NORMALISATIONS}, but got {normalise!r}."
        )


def probe_inputs(dim: int, count: int, *, kind: str = "auto", seed: int = 0) -> Tensor:
    """``count`` probe inputs of dimension ``dim`` (see the module docstring for the kinds).

    Returns a float64 tensor ``[count, dim]``, a function of ``(dim, count, kind, seed)`` only.

    Raises:
        ConfigError: a bad count or kind, or ``"grid"`` with a count that is not ``m^dim``.

    Example:
        >>> probe_inputs(2, 4, kind="grid").tolist()
        [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    """
    check_probe_options(count, kind)
    side = _grid_side(count, dim) if count else None
    if kind == "auto":
        kind = ("grid" if side else "uniform") if dim <= 2 else "normal"
    if kind == "grid":
        if side is None:
            near = max(1, round(count ** (1 / dim))) ** dim
            raise ConfigError(
                f"Expected a probe count that is a perfect power m^{dim} for a grid of "
                f"{dim}-D probes, but got {count}. Use e.g. {near} probes, or "
                f"probe_kind='uniform'."
            )
        axis = torch.linspace(-1.0, 1.0, side, dtype=torch.float64) if side > 1 else \
            torch.zeros(1, dtype=torch.float64)
        mesh = torch.meshgrid(*([axis] * dim), indexing="ij")
        return torch.stack(mesh, -1).reshape(-1, dim)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + dim)
    if kind == "uniform":
        return torch.rand(count, dim, generator=gen, dtype=torch.float64) * 2.0 - 1.0
    return torch.randn(count, dim, generator=gen, dtype=torch.float64)


def probe_outputs(state: Mapping[str, Tensor], architecture: Mapping[str, Any],
                  probes: Tensor) -> list[Tensor]:
    """Every layer's values on the probes: ``[probes, h_1, ..., h_L]`` (``[P, n_l]`` each,
    float64; hidden layers after their activation, the outputs last).

    Raises:
        ArchitectureError: an activation that cannot be evaluated, or a missing parameter.
    """
    x = probes.to(torch.float64)
    return [x, *mlp_forward(state, architecture, x, dtype=torch.float64)]


def probe_node_features(state: Mapping[str, Tensor], architecture: Mapping[str, Any],
                        probes: Tensor, *, normalise: str = "layer") -> Tensor:
    """Node features ``[N, P]`` in the node order of the parameter graph (layer by layer):
    row ``n`` is node ``n``'s value on each probe.

    Raises:
        ArchitectureError: an activation that cannot be evaluated, or a missing parameter.
        ConfigError: an unknown normalisation.
    """
    if normalise not in PROBE_NORMALISATIONS:
        raise ConfigError(
            f"Expected probe_norm to be one of {PROBE_NORMALISATIONS}, but got {normalise!r}."
        )
    rows = []
    for h in probe_outputs(state, architecture, probes):
        h = h.T  # [n_l, P]
        if normalise == "asinh":
            h = torch.asinh(h)
        elif normalise == "layer" and h.numel():
            rms = h.pow(2).mean().sqrt()
            if math.isfinite(float(rms)) and rms > 1.0:
                h = h / rms
        rows.append(h)
    return torch.cat(rows).to(torch.float32)
