"""Describe an MLP's architecture without importing any geometry.

Shared by the recorder (which stores the description in the trajectory's attributes) and by
:mod:`hyperlapse.graph` (which turns it into a parameter graph). Supported models:

* ``nn.Sequential`` (possibly nested) of ``nn.Linear`` layers and parameter-free modules
  (activations, ``Dropout``, ``Flatten``, ``Identity``): read in module order, no tracing;
* any module whose ``nn.Linear`` layers, in registration order, form a chain (``out_features``
  of one equals ``in_features`` of the next) and whose other submodules hold no parameters.
  Its ``forward`` is traced with ``torch.fx`` to find the activation applied to each layer's
  output: activation modules, functions (``F.relu``, ``torch.tanh``, ``F.leaky_relu(x, 0.2)``,
  ``torch.sin(w0 * x)``, ...) and tensor methods (``x.relu()``). A layer whose output reaches
  the next one through passive operations only (dropout, reshapes) is proven linear
  (activation None).

When the activation of a layer cannot be determined (the ``forward`` cannot be traced, e.g.
data-dependent control flow, or applies an operation hyperlapse cannot name), the layer's
activation is :data:`UNKNOWN_ACTIVATION` and a :class:`~hyperlapse.errors.HyperlapseWarning`
says why; analyses that depend on the map refuse such a description instead of treating the
layer as linear. Pass ``architecture=`` to the recorder to name the activations yourself.

Tied weights (the same ``nn.Linear`` used twice, e.g. ``Sequential(lin, ReLU(), lin)``, or one
parameter assigned to two layers) are described as the layers they are, in order of use, and
name the parameter under the name it is stored with (its first name in ``named_parameters``);
a layer that reuses another's weights says so in ``"tied_to"``.

``torch.compile`` and ``DistributedDataParallel`` wrappers are unwrapped first.

A caller may instead describe the recorded parameters itself (the recorder's ``architecture=``):
:func:`check_recorded_architecture` validates such a description against the recorded shapes,
and :func:`describe_population` describes MLPs stacked along a leading run axis. The typed
form of a description is :class:`hyperlapse.spec.MlpSpec`.
"""

from __future__ import annotations

import inspect
import numbers
import operator
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ArchitectureError, ConfigError, HyperlapseWarning
from .spec import (
    UNKNOWN_ACTIVATION,
    LayerSpec,
    MlpSpec,
    PopulationSpec,
    architecture_from_json,
)

__all__ = [
    "UNKNOWN_ACTIVATION",
    "activations_known",
    "check_mlp",
    "check_recorded_architecture",
    "describe_mlp",
    "describe_mlp_spec",
    "describe_population",
    "unwrap_model",
]

# Parameter-free modules that may sit between Linear layers without changing the graph.
_PASSIVE = (nn.Dropout, nn.Flatten, nn.Identity, nn.modules.dropout._DropoutNd)


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
        with warnings.catch_warnings():
            # the question is "is it an MLP"; unknown activations are describe_mlp's to report
            warnings.simplefilter("ignore", HyperlapseWarning)
            describe_mlp_spec(module)
    except ArchitectureError as exc:
        return (False, str(exc)) if explain else False
    return (True, "") if explain else True


def describe_mlp(module: nn.Module) -> dict[str, Any]:
    """Describe an MLP as a JSON-serialisable dict (:func:`describe_mlp_spec`, as JSON).

    Returns:
        ``{"kind": "mlp", "widths": [n_0, ..., n_L], "layers": [{"name", "weight", "bias",
        "in_features", "out_features", "activation"}, ...]}`` where ``weight``/``bias`` are the
        qualified parameter names (``bias`` is ``None`` for ``bias=False``) and ``activation``
        is the name of the activation applied to the layer's output (the lower-case class name
        of an activation module, or the function's name: ``"relu"``, ``"tanh"``, ...), ``None``
        when the output is proven to reach the next layer unchanged, or
        :data:`UNKNOWN_ACTIVATION` when it could not be determined (with a warning).
        ``"leaky_relu(<slope>)"`` and ``"sine(<w0>)"`` (``sin(w0 x)``: a module named ``Sine``
        with a float ``w0``, or ``torch.sin(w0 * x)`` in ``forward``) carry their parameter.
        A layer whose weight (or bias) is a parameter of an earlier layer also has
        ``"tied_to"``: that layer's name; its ``weight``/``bias`` name the stored parameter.

    Raises:
        ArchitectureError: naming the first module that is not supported.

    Warns:
        HyperlapseWarning: once, when some layer's activation could not be determined (why,
            and how to name it).

    Example:
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> d = describe_mlp(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
        >>> d["widths"], d["layers"][0]["activation"], d["layers"][1]["activation"]
        ([4, 8, 3], 'relu', None)
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1, self.fc2 = nn.Linear(2, 5), nn.Linear(5, 1)
        ...     def forward(self, x):
        ...         return self.fc2(F.leaky_relu(self.fc1(x), 0.2))
        >>> [layer["activation"] for layer in describe_mlp(Net())["layers"]]
        ['leaky_relu(0.2)', None]
    """
    return describe_mlp_spec(module).to_json()


def describe_mlp_spec(module: nn.Module) -> MlpSpec:
    """:func:`describe_mlp` as a typed :class:`~hyperlapse.spec.MlpSpec`."""
    module = unwrap_model(module)
    layers, modules, seen = _read_modules(module)
    acts, reasons = _activations(module, modules, seen)
    if reasons:
        _warn_unknown(module, layers, acts, reasons)
    return _spec(layers, acts)


def _activations(
    module: nn.Module, modules: list[nn.Linear], seen: list[str | None]
) -> tuple[list[str | None], list[str]]:
    """The activation after each of ``modules`` (the Linear layers of ``module``, in order),
    and why any is unknown. ``seen``: what the module order says."""
    if _is_plain(module):
        return seen, []
    inner = _container(module, modules) if _holds_only(module) else None
    if inner is not None:  # e.g. a LightningModule whose training_step calls self.net
        return _activations(inner, modules, _read_modules(inner)[2])
    try:
        graph = _trace(module)
    except Exception as exc:  # noqa: BLE001 - any failure of tracing means "could not see"
        why = f"torch.fx could not trace its forward ({type(exc).__name__}: {_first_line(exc)})"
        return [a if a is not None else UNKNOWN_ACTIVATION for a in seen], [why]
    return _traced_activations(graph, module, modules, len(modules))


def _holds_only(module: nn.Module) -> bool:
    """Whether ``module`` has no forward of its own to read: none at all (a LightningModule
    whose steps call a submodule), or only ``*args, **kwargs`` passed on."""
    if type(module).forward is nn.Module.forward:
        return True
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return all(p.kind in variadic for p in params)


def _container(module: nn.Module, modules: list[nn.Linear]) -> nn.Module | None:
    """The innermost proper submodule that holds every Linear layer, if any."""
    names = {id(sub): name for name, sub in module.named_modules()}
    parents = [names[id(m)].split(".")[:-1] for m in modules]
    prefix: list[str] = []
    for parts in zip(*parents, strict=False):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return module.get_submodule(".".join(prefix)) if prefix else None


def _spec(layers: list[LayerSpec], activations: list[str | None]) -> MlpSpec:
    layers = [replace(layer, activation=a) for layer, a in zip(layers, activations, strict=True)]
    widths = (layers[0].in_features, *(layer.out_features for layer in layers))
    return MlpSpec(widths, tuple(layers))


def _read_modules(
    module: nn.Module,
) -> tuple[list[LayerSpec], list[nn.Linear], list[str | None]]:
    """The Linear layers in registration order, their modules, and the activation module
    registered after each (None where there is none)."""
    layers: list[LayerSpec] = []
    modules: list[nn.Linear] = []
    seen: list[str | None] = []
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
            if layers and layers[-1].out_features != sub.in_features:
                raise ArchitectureError(
                    f"Expected the Linear layers to form a chain, but '{name}' takes "
                    f"{sub.in_features} inputs while the previous Linear "
                    f"'{layers[-1].name}' has {layers[-1].out_features} outputs. "
                    f"hyperlapse supports feed-forward MLPs only (no skips or branches)."
                )
            tied = [owner[id(p)] for p in (sub.weight, sub.bias) if id(p) in owner]
            layers.append(LayerSpec(
                name=name,
                weight=stored.get(id(sub.weight), prefix + "weight"),
                bias=stored.get(id(sub.bias), prefix + "bias") if sub.bias is not None else None,
                in_features=int(sub.in_features),
                out_features=int(sub.out_features),
                tied_to=tied[0] if tied else None,
            ))
            modules.append(sub)
            seen.append(None)
            for p in (sub.weight, sub.bias):
                if p is not None:
                    owner.setdefault(id(p), name)
            continue
        if any(True for _ in sub.parameters(recurse=False)):
            raise ArchitectureError(
                f"Expected an MLP of nn.Linear layers and activations, but found "
                f"'{name}' ({type(sub).__name__}) with parameters of its own. hyperlapse still "
                f"records such a model, but the parameter-graph analysis needs an MLP."
            )
        if isinstance(sub, _PASSIVE) or len(list(sub.children())) > 0:
            continue
        if seen and seen[-1] is None:
            seen[-1] = _activation_name(sub)
    if not layers:
        raise ArchitectureError(
            f"Expected an MLP with at least one nn.Linear layer, but {type(module).__name__} "
            f"has none."
        )
    return layers, modules, seen


def _is_plain(module: nn.Module) -> bool:
    """A bare ``nn.Linear``, or an ``nn.Sequential`` whose forward is the module order:
    containers are plain ``Sequential``s, leaves are childless and Linear layers keep
    ``nn.Linear.forward``. Module order is exact for these; nothing to trace."""
    for sub in module.modules():
        if isinstance(sub, nn.Sequential):
            if type(sub).forward is not nn.Sequential.forward:
                return False
        elif any(True for _ in sub.children()):
            return False
        elif isinstance(sub, nn.Linear) and type(sub).forward is not nn.Linear.forward:
            return False
    return isinstance(module, (nn.Sequential, nn.Linear))


# ---------------------------------------------------------------------------------- tracing
class _Tracer(torch.fx.Tracer):
    """Stops at Linear layers and at childless parameter-free modules (activation modules,
    ``hyperlapse.zoo.Sine``): their class names the activation, as in module order."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.Linear):
            return type(m).forward is nn.Linear.forward
        if not any(True for _ in m.children()) and not any(True for _ in m.parameters()):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(module: nn.Module) -> torch.fx.Graph:
    # arguments with defaults (flags such as return_hidden=False) are traced at their default
    try:
        params = inspect.signature(module.forward).parameters.values()
        concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        concrete = {}
    # tracing runs forward on proxies: keep train/eval flags as they are
    return _Tracer().trace(module, concrete_args=concrete or None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "no message"


# Any value is accepted for a parameter whose default is _ANY (softmax's dim: the module reading
# names nn.Softmax "softmax" whatever its dim, too).
_ANY = object()
# Functions applied to one tensor: name and the (parameter, default) pairs after the input,
# in positional order. A call with another value for one of them is not nameable ("inplace"
# is always allowed; leaky_relu's slope is part of its name).
_FUNCTIONS: dict[Any, tuple[str, tuple[tuple[str, Any], ...]]] = {
    F.relu: ("relu", ()), torch.relu: ("relu", ()), F.relu_: ("relu", ()),
    torch.relu_: ("relu", ()), F.tanh: ("tanh", ()), torch.tanh: ("tanh", ()),
    F.sigmoid: ("sigmoid", ()), torch.sigmoid: ("sigmoid", ()),
    F.gelu: ("gelu", (("approximate", "none"),)), F.silu: ("silu", ()), F.mish: ("mish", ()),
    F.selu: ("selu", ()), torch.selu: ("selu", ()), F.softsign: ("softsign", ()),
    F.tanhshrink: ("tanhshrink", ()), F.relu6: ("relu6", ()),
    F.elu: ("elu", (("alpha", 1.0),)), F.celu: ("celu", (("alpha", 1.0),)),
    F.softplus: ("softplus", (("beta", 1.0), ("threshold", 20.0))),
    F.hardtanh: ("hardtanh", (("min_val", -1.0), ("max_val", 1.0))),
    F.leaky_relu: ("leaky_relu", (("negative_slope", 0.01),)),
    torch.sin: ("sine", ()),
    F.softmax: ("softmax", (("dim", _ANY), ("_stacklevel", _ANY), ("dtype", None))),
    F.log_softmax: ("logsoftmax", (("dim", _ANY), ("_stacklevel", _ANY), ("dtype", None))),
}
_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
            "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "sin": "sine", "sin_": "sine"}
# Operations that pass values through unchanged (dropout is the identity in the function the
# weights compute; reshapes keep the values of a chain, whose widths are checked already).
_PASSIVE_FUNCTIONS = {F.dropout, torch.dropout, F.alpha_dropout, torch.flatten, torch.reshape}
_PASSIVE_METHODS = {"view", "reshape", "flatten", "contiguous", "clone", "float", "to"}
_CLAMPS = {torch.clamp, torch.clamp_min, "clamp", "clamp_", "clamp_min", "clamp_min_"}
_MULS = {operator.mul, torch.mul, "mul"}


def _traced_activations(
    graph: torch.fx.Graph, root: nn.Module, modules: list[nn.Linear], count: int
) -> tuple[list[str | None], list[str]]:
    """The activation after each Linear call of a traced forward, and why any is unknown."""
    calls = [n for n in graph.nodes if n.op == "call_module"
             and isinstance(root.get_submodule(n.target), nn.Linear)]
    if [id(root.get_submodule(n.target)) for n in calls] != [id(m) for m in modules]:
        order = [str(n.target) for n in calls]
        return [UNKNOWN_ACTIVATION] * count, [
            f"its forward calls the Linear layers as {order}, not once each in the order they "
            f"are registered, so the layers cannot be matched with the calls"
        ]
    output = next(n for n in graph.nodes if n.op == "output")
    acts: list[str | None] = []
    reasons: list[str] = []
    for l, node in enumerate(calls):
        end = calls[l + 1] if l + 1 < len(calls) else output
        act, why = _path_activation(root, node, end)
        if why:
            reasons.append(f"after layer '{node.target}': {why}")
        acts.append(act)
    return acts, reasons


def _path_activation(
    root: nn.Module, start: torch.fx.Node, end: torch.fx.Node
) -> tuple[str | None, str]:
    """Read the operations from a Linear call to the next one (or the output): ``(activation,
    "")``, or ``(UNKNOWN_ACTIVATION, reason)`` unless they are a chain of nameable steps."""
    if end.op == "output":
        # the model's output is the first value on the way that forward returns; other uses
        # (a loss computed in forward, as Hugging Face models do) are not the network's map
        chain, node = [], start
        while end not in node.users:
            if len(node.users) != 1:
                return UNKNOWN_ACTIVATION, (
                    "its output branches before it is returned" if node.users
                    else "its output is not returned")
            node = next(iter(node.users))
            chain.append(node)
    else:
        after = _closure(start, lambda n: n.users)
        before = _closure(end, lambda n: n.all_input_nodes)
        if start not in before:
            return UNKNOWN_ACTIVATION, "its output does not reach the next layer"
        order = {n: i for i, n in enumerate(start.graph.nodes)}
        chain = sorted((after & before) - {start, end}, key=order.__getitem__)
    act, scale, prev = None, None, start
    for node in chain:
        if node.all_input_nodes != [prev]:
            return UNKNOWN_ACTIVATION, (
                f"'{_op_text(root, node)}' combines it with another tensor or branch (a skip "
                f"connection?)")
        prev = node
        step, value = _classify(root, node)
        if step == "unknown":
            return UNKNOWN_ACTIVATION, value
        if step == "scale":
            if scale is not None or act is not None:
                return UNKNOWN_ACTIVATION, f"'{_op_text(root, node)}' scales it"
            scale = value
            continue
        if step == "activation":
            if scale is not None:
                if value != "sine":
                    return UNKNOWN_ACTIVATION, f"it is scaled by {scale} before {value}"
                value, scale = f"sine({float(scale)!r})", None
            if act is not None:
                return UNKNOWN_ACTIVATION, f"two activations in a row ({act}, then {value})"
            act = value
    if end.op != "output" and end.all_input_nodes != [prev]:
        return UNKNOWN_ACTIVATION, "the next layer also takes another input"
    if scale is not None:
        return UNKNOWN_ACTIVATION, f"it is scaled by {scale} (not an activation)"
    return act, ""


def _closure(node: torch.fx.Node, step) -> set[torch.fx.Node]:
    seen, todo = {node}, [node]
    while todo:
        for nxt in step(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _op_text(root: nn.Module, node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(root.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _classify(root: nn.Module, node: torch.fx.Node) -> tuple[str, Any]:
    """One step of a path: ``("passive", None)``, ``("activation", name)``, ``("scale", c)``
    or ``("unknown", reason)``."""
    target, args, kwargs = node.target, node.args[1:], dict(node.kwargs)
    unnamed = ("unknown", f"'{_op_text(root, node)}' is not an activation hyperlapse can name")
    if node.op == "call_module":
        sub = root.get_submodule(target)
        return ("passive", None) if isinstance(sub, _PASSIVE) else ("activation",
                                                                     _activation_name(sub))
    if node.op not in ("call_function", "call_method"):
        return unnamed
    try:
        hash(target)
    except TypeError:  # looked up in the tables below
        return unnamed
    if target in _PASSIVE_FUNCTIONS or target in _PASSIVE_METHODS:
        return "passive", None
    if target in _CLAMPS:  # clamp(x, min=0) is relu
        low = args[0] if args else kwargs.pop("min", None)
        high = args[1] if len(args) > 1 else kwargs.pop("max", None)
        if _is_real(low) and low == 0 and high is None and len(args) <= 1 and not kwargs:
            return "activation", "relu"
        return unnamed
    if target in _MULS:
        other = [a for a in node.args if a is not node.all_input_nodes[0]]
        if len(other) == 1 and _is_real(other[0]) and not kwargs:
            return "scale", other[0]
        return unnamed
    if node.op == "call_method":
        return ("activation", _METHODS[target]) if target in _METHODS and not (
            args or kwargs) else unnamed
    name, params = _FUNCTIONS.get(target, (None, ()))
    if name is None:
        return unnamed
    kwargs.pop("input", None)
    names = [p for p, _ in params] + ["inplace"]
    if len(args) > len(names):
        return unnamed
    values = {**dict(zip(names, args, strict=False)), **kwargs}
    defaults = dict(params)
    for key, value in values.items():
        if key == "inplace":
            continue
        if key not in defaults or isinstance(value, torch.fx.Node):
            return unnamed
        if defaults[key] is _ANY:
            continue
        if name == "leaky_relu" and _is_real(value):
            name = f"leaky_relu({value})"
        elif value != defaults[key]:
            return "unknown", (f"{getattr(target, '__name__', target)} with {key}={value!r} is "
                               f"not an activation hyperlapse can name")
    if name == "leaky_relu":
        name = "leaky_relu(0.01)"
    return "activation", name


def _warn_unknown(
    module: nn.Module, layers: list[LayerSpec], acts: list[str | None], reasons: list[str]
) -> None:
    unknown = [layer.name for layer, a in zip(layers, acts, strict=True)
               if a == UNKNOWN_ACTIVATION]
    warnings.warn(
        f"hyperlapse could not determine the activation after layer(s) {unknown} of "
        f"{type(module).__name__}: {'; '.join(reasons)}. They are recorded as "
        f"'{UNKNOWN_ACTIVATION}', and analyses that depend on the activations (input-space "
        f"geometry, neuron importance) will refuse them rather than treat the layers as linear. "
        f"Pass architecture= to the recorder with the activations named, e.g. "
        f"d = hyperlapse.describe_mlp(model); d['layers'][0]['activation'] = 'relu'.",
        HyperlapseWarning,
        stacklevel=3,
    )


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
            axis; or the typed :class:`~hyperlapse.spec.MlpSpec` / ``PopulationSpec``.
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
    try:
        spec = (architecture if isinstance(architecture, (MlpSpec, PopulationSpec))
                else architecture_from_json(architecture))
        spec.check_shapes(shapes)
    except ArchitectureError as exc:  # a bad argument: the recorder's ConfigError
        raise ConfigError(str(exc)) from None
    return spec.to_json()


def activations_known(architecture: MlpSpec | Mapping[str, Any] | None) -> bool:
    """Whether every layer's activation of a ``describe_mlp``-style dict (or spec) is known.

    ``None`` means the identity (known); :data:`UNKNOWN_ACTIVATION` means it could not be
    determined, and geometry that depends on the map (pullback metric, ablations) must not be
    computed as if the layer were linear.

    Example:
        >>> activations_known({"layers": [{"activation": "relu"}, {"activation": None}]})
        True
        >>> activations_known({"layers": [{"activation": "unknown"}, {"activation": None}]})
        False
    """
    if isinstance(architecture, MlpSpec):
        return architecture.activations_known
    if not architecture:
        return False
    return all(
        layer.get("activation") != UNKNOWN_ACTIVATION for layer in architecture.get("layers", [])
    )
