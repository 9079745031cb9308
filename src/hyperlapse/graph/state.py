"""Check a state dict against an MLP architecture and pull out its layers' tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ArchitectureError
from ..spec import LayerSpec, MlpSpec, as_mlp_spec

__all__ = ["check_architecture", "check_state", "layer_tensors"]


def check_architecture(architecture: Any) -> tuple[list[int], tuple[LayerSpec, ...]]:
    """Validate an MLP description (:func:`hyperlapse.arch.describe_mlp` dict or
    :class:`~hyperlapse.spec.MlpSpec`).

    Returns:
        ``(widths, layers)``, the layers as :class:`~hyperlapse.spec.LayerSpec`.

    Raises:
        ArchitectureError: if ``architecture`` is None or not an MLP description.
    """
    spec = as_mlp_spec(architecture)
    return list(spec.widths), spec.layers


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}


def check_state(
    state: dict[str, Tensor], architecture: MlpSpec | Mapping[str, Any] | None, *,
    explain: bool = False,
) -> None | tuple[bool, str]:
    """Check that ``state`` holds every parameter of ``architecture`` with the right shape.

    Raises ArchitectureError naming the first missing or mis-shaped parameter; with
    ``explain=True`` returns ``(ok, reason)`` instead of raising.

    Example:
        >>> from torch import nn
        >>> from hyperlapse import describe_mlp
        >>> net = nn.Linear(3, 2)
        >>> check_state({"weight": torch.zeros(2, 3)}, describe_mlp(net), explain=True)[0]
        False
    """
    try:
        as_mlp_spec(architecture).check_shapes(_shapes(state), source="state dict")
    except ArchitectureError as exc:
        if explain:
            return False, str(exc)
        raise
    return (True, "") if explain else None


def layer_tensors(
    state: dict[str, Tensor], architecture: MlpSpec | Mapping[str, Any] | None
) -> tuple[list[Tensor], list[Tensor]]:
    """Weights ``[n_{l+1}, n_l]`` and biases ``[n_{l+1}]`` of every layer, detached float32.

    Biases of ``bias=False`` layers are zeros. Tensors stay on their device.
    """
    spec = as_mlp_spec(architecture)
    check_state(state, spec)
    weights, biases = [], []
    for layer in spec.layers:
        w = torch.as_tensor(state[layer.weight]).detach().to(torch.float32)
        weights.append(w)
        if layer.bias is None:
            biases.append(w.new_zeros(w.shape[0]))
        else:
            biases.append(torch.as_tensor(state[layer.bias]).detach().to(torch.float32))
    return weights, biases
