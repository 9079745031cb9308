"""Describe an MLP's architecture without importing any geometry.

Shared by the recorder (which stores the description in the trajectory's attributes) and by
:mod:`hyperlapse.graph` (which turns it into a parameter graph). Supported models:

* ``nn.Sequential`` (possibly nested) of ``nn.Linear`` layers and parameter-free modules
  (activations, ``Dropout``, ``Flatten``, ``Identity``);
* any module whose ``nn.Linear`` layers, in registration order, form a chain (``out_features``
  of one equals ``in_features`` of the next) and whose other submodules hold no parameters.
  Activations are taken from parameter-free modules registered between two Linear layers;
  functional activations in ``forward`` cannot be seen and are recorded as ``None``.

Tied weights (the same ``nn.Linear`` used twice, e.g. ``Sequential(lin, ReLU(), lin)``, or one
parameter assigned to two layers) are described as the layers they are, in order of use, and
name the parameter under the name it is stored with (its first name in ``named_parameters``);
a layer that reuses another's weights says so in ``"tied_to"``.

``torch.compile`` and ``DistributedDataParallel`` wrappers are unwrapped first.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ArchitectureError

# Parameter-free modules that may sit between Linear layers without changing the graph.
_PASSIVE = (nn.Dropout, nn.Flatten, nn.Identity)


def unwrap_model(module: nn.Module) -> nn.Module:
    """Return the user's module under ``torch.compile`` / DDP / DataParallel wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            break
    return module


def _activation_name(module: nn.Module) -> str:
    name = type(module).__name__.lower()
    if isinstance(module, nn.LeakyReLU):
        return f"leaky_relu({module.negative_slope})"
    return name


def check_mlp(module: nn.Module, *, explain: bool = False):
    """Whether ``module`` is a supported MLP.

    Returns ``bool``, or ``(ok, reason)`` when ``explain=True``.
    """
    try:
        describe_mlp(module)
    except ArchitectureError as exc:
        return (False, str(exc)) if explain else False
    return (True, "") if explain else True


def describe_mlp(module: nn.Module) -> dict[str, Any]:
    """Describe an MLP as a JSON-serialisable dict.

    Returns:
        ``{"kind": "mlp", "widths": [n_0, ..., n_L], "layers": [{"name", "weight", "bias",
        "in_features", "out_features", "activation"}, ...]}`` where ``weight``/``bias`` are the
        qualified parameter names (``bias`` is ``None`` for ``bias=False``) and ``activation``
        is the lower-case class name of the activation that follows the layer, or ``None``.
        A layer whose weight (or bias) is a parameter of an earlier layer also has
        ``"tied_to"``: that layer's name; its ``weight``/``bias`` name the stored parameter.

    Raises:
        ArchitectureError: naming the first module that is not supported.

    Example:
        >>> from torch import nn
        >>> d = describe_mlp(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
        >>> d["widths"], d["layers"][0]["activation"], d["layers"][1]["activation"]
        ([4, 8, 3], 'relu', None)
    """
    module = unwrap_model(module)
    layers: list[dict[str, Any]] = []
    # a parameter is stored under its first name: tied layers must name that one
    stored = {}
    for pname, param in module.named_parameters():
        stored.setdefault(id(param), pname)
    owner: dict[int, str] = {}  # parameter -> the first layer that used it
    for name, sub in module.named_modules(remove_duplicate=False):
        if sub is module and not isinstance(sub, nn.Linear):
            if any(True for _ in sub.parameters(recurse=False)):
                raise ArchitectureError(
                    f"Expected an MLP whose parameters all live in nn.Linear layers, but the "
                    f"top-level {type(sub).__name__} holds parameters of its own. Move them into "
                    f"nn.Linear layers, or record without graph analysis."
                )
            continue
        if isinstance(sub, nn.Linear):
            prefix = f"{name}." if name else ""
            if layers and layers[-1]["out_features"] != sub.in_features:
                raise ArchitectureError(
                    f"Expected the Linear layers to form a chain, but '{name}' takes "
                    f"{sub.in_features} inputs while the previous Linear "
                    f"'{layers[-1]['name']}' has {layers[-1]['out_features']} outputs. "
                    f"hyperlapse supports feed-forward MLPs only (no skips or branches)."
                )
            layer = {
                "name": name,
                "weight": stored.get(id(sub.weight), prefix + "weight"),
                "bias": stored.get(id(sub.bias), prefix + "bias") if sub.bias is not None else None,
                "in_features": int(sub.in_features),
                "out_features": int(sub.out_features),
                "activation": None,
            }
            tied = [owner[id(p)] for p in (sub.weight, sub.bias) if id(p) in owner]
            if tied:
                layer["tied_to"] = tied[0]
            for p in (sub.weight, sub.bias):
                if p is not None:
                    owner.setdefault(id(p), name)
            layers.append(layer)
            continue
        if any(True for _ in sub.parameters(recurse=False)):
            raise ArchitectureError(
                f"Expected an MLP of nn.Linear layers and activations, but found "
                f"'{name}' ({type(sub).__name__}) with parameters of its own. hyperlapse still "
                f"records such a model, but the parameter-graph analysis needs an MLP."
            )
        if isinstance(sub, _PASSIVE) or len(list(sub.children())) > 0:
            continue
        if layers and layers[-1]["activation"] is None:
            layers[-1]["activation"] = _activation_name(sub)
    if not layers:
        raise ArchitectureError(
            f"Expected an MLP with at least one nn.Linear layer, but {type(module).__name__} "
            f"has none."
        )
    widths = [layers[0]["in_features"]] + [layer["out_features"] for layer in layers]
    return {"kind": "mlp", "widths": widths, "layers": layers}
