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

A caller may instead describe the recorded parameters itself (the recorder's ``architecture=``):
:func:`check_recorded_architecture` validates such a description against the recorded shapes,
and :func:`describe_population` describes MLPs stacked along a leading run axis.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from typing import Any

from torch import nn

from .errors import ArchitectureError, ConfigError

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
    # sin(w0 x) (SIREN, e.g. hyperlapse.zoo.Sine): the frequency is part of the function, so a
    # recorded network can be evaluated again (hyperlapse.geometry.pullback.activation_fn)
    w0 = getattr(module, "w0", None)
    if name == "sine" and isinstance(w0, numbers.Real) and not isinstance(w0, bool):
        return f"sine({float(w0)!r})"
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
        is the lower-case class name of the activation that follows the layer, or ``None``
        (``"leaky_relu(<slope>)"`` and, for a module named ``Sine`` with a float ``w0``
        attribute computing ``sin(w0 x)``, ``"sine(<w0>)"`` carry their parameter).
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


def describe_population(member: dict[str, Any], runs: int) -> dict[str, Any]:
    """The architecture of ``runs`` MLPs of one shape stored with a leading run axis.

    Every parameter that ``member`` (a :func:`describe_mlp` dict) names is recorded as
    ``[runs, *shape]``. Graph analysis applies per run (``hyperlapse.zoo`` splits the runs),
    never to the stacked tensors, so the kind is ``"population"``, not ``"mlp"``.

    Example:
        >>> from torch import nn
        >>> d = describe_population(describe_mlp(nn.Linear(2, 1)), 5)
        >>> d["kind"], d["runs"], d["member"]["widths"]
        ('population', 5, [2, 1])
    """
    return {"kind": "population", "runs": int(runs), "member": member}


def check_recorded_architecture(
    architecture: Any, shapes: dict[str, tuple[int, ...]]
) -> dict[str, Any]:
    """Validate an architecture given to the recorder against the tensors it records.

    Args:
        architecture: ``{"kind": "mlp", "widths", "layers"}`` as :func:`describe_mlp` returns
            it (in a layer, ``bias``, ``in_features``/``out_features`` and ``activation`` may be
            left out: no bias, the widths, ``None``), or ``{"kind": "population", "runs": R,
            "member": <mlp>}`` (:func:`describe_population`) for parameters with a leading run
            axis.
        shapes: recorded tensor name -> shape. Tensors no layer names (buffers, curves) are
            allowed; they are recorded but are not part of the graph.

    Returns:
        The architecture in canonical form (plain JSON types, every layer key present), as it
        is stored.

    Raises:
        ConfigError: saying which field or which parameter's shape does not fit, and what to do.

    Example:
        >>> arch = {"kind": "mlp", "widths": [3, 2], "layers": [{"name": "0", "weight": "w"}]}
        >>> check_recorded_architecture(arch, {"w": (2, 3)})["layers"][0]["bias"] is None
        True
    """
    if not isinstance(architecture, Mapping):
        raise ConfigError(
            f"Expected architecture to be a dict ({{'kind': 'mlp', 'widths', 'layers'}} as "
            f"hyperlapse.describe_mlp returns, or hyperlapse.arch.describe_population(...)), but "
            f"got {type(architecture).__name__}."
        )
    kind = architecture.get("kind")
    if kind == "mlp":
        return _check_mlp_dict(architecture, shapes, ())
    if kind == "population":
        runs = architecture.get("runs")
        if not _is_count(runs):
            raise ConfigError(
                f"Expected architecture['runs'] of a population to be a positive int (the "
                f"length of every parameter's leading run axis), but got {runs!r}."
            )
        member = architecture.get("member")
        if not isinstance(member, Mapping) or member.get("kind") != "mlp":
            raise ConfigError(
                f"Expected architecture['member'] of a population to be one run's MLP "
                f"description (kind 'mlp', from hyperlapse.describe_mlp), but got "
                f"{_kind_of(member)}."
            )
        checked = _check_mlp_dict(member, shapes, (int(runs),))
        return {"kind": "population", "runs": int(runs), "member": checked}
    raise ConfigError(
        f"Expected architecture['kind'] to be 'mlp' or 'population', but got {kind!r}. Build it "
        f"with hyperlapse.describe_mlp(model) (or describe_population(member, runs))."
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict of kind {value.get('kind')!r}"
    return type(value).__name__


def _check_mlp_dict(
    arch: Mapping[str, Any], shapes: dict[str, tuple[int, ...]], lead: tuple[int, ...]
) -> dict[str, Any]:
    widths = arch.get("widths")
    if not isinstance(widths, (list, tuple)) or len(widths) < 2 or not all(map(_is_count, widths)):
        raise ConfigError(
            f"Expected architecture['widths'] to be a list of at least two positive ints "
            f"[n_0, ..., n_L], but got {widths!r}."
        )
    widths = [int(w) for w in widths]
    layers = arch.get("layers")
    if not isinstance(layers, (list, tuple)) or len(layers) != len(widths) - 1:
        got = f"{len(layers)} layers" if isinstance(layers, (list, tuple)) else repr(layers)
        raise ConfigError(
            f"Expected architecture['layers'] to list {len(widths) - 1} layers for widths "
            f"{widths}, but got {got}."
        )
    have = ", ".join(f"{n} {tuple(s)}" for n, s in list(shapes.items())[:6])
    out = []
    for l, layer in enumerate(layers):
        if not isinstance(layer, Mapping) or not isinstance(layer.get("weight"), str):
            raise ConfigError(
                f"Expected layer {l} of the architecture to be a dict naming its 'weight' "
                f"parameter, but got {layer!r}."
            )
        n_in, n_out = widths[l], widths[l + 1]
        for key, width in (("in_features", n_in), ("out_features", n_out)):
            if layer.get(key, width) != width:
                raise ConfigError(
                    f"Expected layer {l}'s {key} to be {width} (widths {widths}), but got "
                    f"{layer[key]!r}. Make the widths and the layers agree."
                )
        name = str(layer.get("name", l))
        bias = layer.get("bias")
        for param, want in ((layer["weight"], (n_out, n_in)), (bias, (n_out,))):
            if param is None:
                continue
            expected = lead + want
            role = "weight" if len(want) == 2 else "bias"
            if param not in shapes:
                raise ConfigError(
                    f"Expected the {role} of layer '{name}' ('{param}') among the recorded "
                    f"tensors, but it is not one of them (recorded: {have}"
                    f"{', ...' if len(shapes) > 6 else ''}). Name the parameters as "
                    f"model.named_parameters() does."
                )
            if tuple(shapes[param]) != expected:
                axis = " (leading run axis, then out x in)" if lead else ""
                raise ConfigError(
                    f"Expected '{param}' ({role} of layer '{name}', {n_in} -> {n_out} features) "
                    f"to have shape {expected}{axis}, but the model's tensor has shape "
                    f"{tuple(shapes[param])}. Describe the parameters as they are recorded, or "
                    f"fix the widths."
                )
        activation = layer.get("activation")
        if activation is not None and not isinstance(activation, str):
            raise ConfigError(
                f"Expected layer '{name}''s activation to be a name (e.g. 'relu') or None, but "
                f"got {activation!r}."
            )
        canon = {"name": name, "weight": layer["weight"], "bias": bias, "in_features": n_in,
                 "out_features": n_out, "activation": activation}
        extra = {k: v for k, v in layer.items() if k not in canon}
        out.append({**canon, **extra})
    result = {**{k: v for k, v in arch.items() if k not in ("widths", "layers")},
              "kind": "mlp", "widths": widths, "layers": out}
    try:
        return json.loads(json.dumps(result))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Expected an architecture of plain JSON values (it is stored in the store's "
            f"attributes), but it holds something else ({exc})."
        ) from None


#: The ``"activation"`` of a layer whose activation could not be determined (a functional
#: activation in a ``forward`` that could not be traced). Never analysed as the identity.
UNKNOWN_ACTIVATION = "unknown"


def activations_known(architecture: Mapping[str, Any] | None) -> bool:
    """Whether every layer's activation of a ``describe_mlp``-style dict is known.

    ``None`` means the identity (known); :data:`UNKNOWN_ACTIVATION` means it could not be
    determined, and geometry that depends on the map (pullback metric, ablations) must not be
    computed as if the layer were linear.

    Example:
        >>> activations_known({"layers": [{"activation": "relu"}, {"activation": None}]})
        True
        >>> activations_known({"layers": [{"activation": "unknown"}, {"activation": None}]})
        False
    """
    if not architecture:
        return False
    return all(
        layer.get("activation") != UNKNOWN_ACTIVATION for layer in architecture.get("layers", [])
    )
