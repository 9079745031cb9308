"""Check a state dict against an MLP architecture and pull out its layers' tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ArchitectureError

__all__ = ["check_architecture", "check_state", "layer_tensors"]


def check_architecture(architecture: Any) -> tuple[list[int], list[dict[str, Any]]]:
    """Validate an architecture dict from :func:`hyperlapse.arch.describe_mlp`.

    Returns:
        ``(widths, layers)``.

    Raises:
        ArchitectureError: if ``architecture`` is None or not an MLP description.
    """
    if architecture is None:
        raise ArchitectureError(
            "Expected an MLP architecture, got None: the model was not recognised as an MLP when "
            "it was recorded (hyperlapse.describe_mlp failed on it), so its parameters cannot be "
            "turned into a parameter graph. Record an nn.Sequential of nn.Linear layers and "
            "activations, or pass architecture=describe_mlp(model) yourself."
        )
    if not isinstance(architecture, dict) or architecture.get("kind") != "mlp":
        kind = architecture.get("kind") if isinstance(architecture, dict) else type(architecture)
        raise ArchitectureError(
            f"Expected an architecture dict with kind 'mlp' (from hyperlapse.describe_mlp), got "
            f"{kind!r}."
        )
    widths = [int(n) for n in architecture["widths"]]
    layers = list(architecture["layers"])
    if len(layers) != len(widths) - 1 or len(layers) == 0:
        raise ArchitectureError(
            f"Expected {len(widths) - 1} layers for widths {widths}, got {len(layers)}."
        )
    for l, layer in enumerate(layers):
        if (layer["in_features"], layer["out_features"]) != (widths[l], widths[l + 1]):
            raise ArchitectureError(
                f"Layer '{layer['name']}' maps {layer['in_features']} -> "
                f"{layer['out_features']} features, but widths {widths} say "
                f"{widths[l]} -> {widths[l + 1]}."
            )
    return widths, layers


def _check_param(state: dict[str, Tensor], name: str, shape: tuple[int, ...], layer: str) -> None:
    if name not in state:
        raise ArchitectureError(
            f"The state dict has no parameter '{name}' (layer '{layer}', expected shape "
            f"{shape}). Pass the state dict of the model the architecture describes "
            f"(it has {len(state)} entries, e.g. {sorted(state)[:4]})."
        )
    got = tuple(state[name].shape)
    if got != shape:
        raise ArchitectureError(
            f"Parameter '{name}' (layer '{layer}') has shape {got}, expected {shape}. The state "
            f"dict does not belong to the architecture described."
        )


def check_state(
    state: dict[str, Tensor], architecture: Any, *, explain: bool = False
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
        _, layers = check_architecture(architecture)
        for layer in layers:
            out_f, in_f = layer["out_features"], layer["in_features"]
            _check_param(state, layer["weight"], (out_f, in_f), layer["name"])
            if layer["bias"] is not None:
                _check_param(state, layer["bias"], (out_f,), layer["name"])
    except ArchitectureError as exc:
        if explain:
            return False, str(exc)
        raise
    return (True, "") if explain else None


def layer_tensors(state: dict[str, Tensor], architecture: Any) -> tuple[list[Tensor], list[Tensor]]:
    """Weights ``[n_{l+1}, n_l]`` and biases ``[n_{l+1}]`` of every layer, detached float32.

    Biases of ``bias=False`` layers are zeros. Tensors stay on their device.
    """
    check_state(state, architecture)
    _, layers = check_architecture(architecture)
    weights, biases = [], []
    for layer in layers:
        w = torch.as_tensor(state[layer["weight"]]).detach().to(torch.float32)
        weights.append(w)
        if layer["bias"] is None:
            biases.append(w.new_zeros(w.shape[0]))
        else:
            biases.append(torch.as_tensor(state[layer["bias"]]).detach().to(torch.float32))
    return weights, biases
