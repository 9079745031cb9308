"""Typed description of a recorded network: :class:`MlpSpec`, :class:`LayerSpec`,
:class:`PopulationSpec`.

The store keeps the description as JSON (the ``architecture`` attribute, format unchanged);
these frozen dataclasses are what the code passes around instead (nfn's ``NetworkSpec``
pattern). They are built and validated once, at the boundary: :meth:`MlpSpec.from_json` (a
store's attribute, a user's ``architecture=``) or :func:`hyperlapse.arch.describe_mlp` (a
module), and turned back into JSON by ``to_json()`` where they are written.

Every check of a description lives here: its structure (``__post_init__``) and whether named
tensors fit it (:meth:`MlpSpec.check_shapes`). Problems raise
:class:`~hyperlapse.errors.ArchitectureError`; callers validating a user's argument re-raise it
as :class:`~hyperlapse.errors.ConfigError`.

Example:
    >>> spec = MlpSpec.from_json({"kind": "mlp", "widths": [3, 2],
    ...                           "layers": [{"name": "0", "weight": "0.weight"}]})
    >>> spec.widths, spec.layers[0].bias, spec.layers[0].weight_shape
    ((3, 2), None, (2, 3))
    >>> spec.to_json()["layers"][0]["activation"] is None
    True
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ArchitectureError

__all__ = [
    "UNKNOWN_ACTIVATION",
    "LayerSpec",
    "MlpSpec",
    "PopulationSpec",
    "architecture_from_json",
    "as_mlp_spec",
]

#: The ``activation`` of a layer whose activation could not be determined (a functional
#: activation in a ``forward`` that could not be traced). Never analysed as the identity.
UNKNOWN_ACTIVATION = "unknown"

# Keys a layer's JSON has besides the ones it may carry through unchanged (``extra``).
_LAYER_KEYS = ("name", "weight", "bias", "in_features", "out_features", "activation", "tied_to")


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _plain_json(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (tuples become lists); the store writes it as JSON."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(
            f"Expected {what} of plain JSON values (it is stored in the store's attributes), "
            f"but it holds something else ({exc})."
        ) from None


@dataclass(frozen=True)
class LayerSpec:
    """One ``nn.Linear`` layer of an MLP and the activation applied to its output.

    Attributes:
        name: the layer's qualified module name (``"0"``, ``"net.fc1"``).
        weight: qualified name of the stored ``[out_features, in_features]`` weight.
        bias: qualified name of the stored ``[out_features]`` bias, None for ``bias=False``.
        in_features, out_features: the layer's widths.
        activation: None (identity, known), a name (``"relu"``, ``"leaky_relu(0.2)"``,
            ``"sine(30.0)"``) or :data:`UNKNOWN_ACTIVATION`.
        tied_to: the earlier layer whose parameters this one reuses, or None.
        extra: any other keys of the layer's JSON, carried through unchanged.
    """

    name: str
    weight: str
    bias: str | None
    in_features: int
    out_features: int
    activation: str | None = None
    tied_to: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.weight, str):
            raise ArchitectureError(
                f"Expected layer '{self.name}' to name its 'weight' parameter (a string), but "
                f"got {self.weight!r}."
            )
        if self.bias is not None and not isinstance(self.bias, str):
            raise ArchitectureError(
                f"Expected layer '{self.name}''s bias to be a parameter name or None, but got "
                f"{self.bias!r}."
            )
        if self.activation is not None and not isinstance(self.activation, str):
            raise ArchitectureError(
                f"Expected layer '{self.name}''s activation to be a name (e.g. 'relu') or None, "
                f"but got {self.activation!r}."
            )
        if not (_is_count(self.in_features) and _is_count(self.out_features)):
            raise ArchitectureError(
                f"Expected layer '{self.name}''s in_features and out_features to be positive "
                f"ints, but got {self.in_features!r} and {self.out_features!r}."
            )

    @property
    def weight_shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``, as torch stores a Linear weight."""
        return (self.out_features, self.in_features)

    @property
    def bias_shape(self) -> tuple[int]:
        """``(out_features,)``."""
        return (self.out_features,)

    def to_json(self) -> dict[str, Any]:
        """The layer as it is stored (``tied_to`` only when set)."""
        out = {"name": self.name, "weight": self.weight, "bias": self.bias,
               "in_features": self.in_features, "out_features": self.out_features,
               "activation": self.activation}
        if self.tied_to is not None:
            out["tied_to"] = self.tied_to
        return {**out, **self.extra}


@dataclass(frozen=True)
class MlpSpec:
    """A feed-forward MLP: widths ``n_0..n_L`` and its ``L`` layers, validated on construction.

    Attributes:
        widths: ``(n_0, ..., n_L)``.
        layers: ``L`` :class:`LayerSpec`; layer ``l`` maps ``n_l -> n_{l+1}``.
        extra: other top-level keys of the JSON, carried through unchanged.
    """

    widths: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    kind: ClassVar[str] = "mlp"

    def __post_init__(self) -> None:
        widths = self.widths
        if not isinstance(widths, tuple) or len(widths) < 2 or not all(map(_is_count, widths)):
            raise ArchitectureError(
                f"Expected MlpSpec.widths to be a tuple of at least two positive ints "
                f"(n_0, ..., n_L), but got {widths!r}."
            )
        if len(self.layers) != len(widths) - 1:
            raise ArchitectureError(
                f"Expected architecture['layers'] to list {len(widths) - 1} layers for widths "
                f"{list(widths)}, but got {len(self.layers)} layers."
            )
        for l, layer in enumerate(self.layers):
            if layer.weight_shape != (widths[l + 1], widths[l]):
                raise ArchitectureError(
                    f"Expected layer '{layer.name}' to map {widths[l]} -> {widths[l + 1]} "
                    f"features (widths {list(widths)}), but it maps {layer.in_features} -> "
                    f"{layer.out_features}. Make the widths and the layers agree."
                )

    # ---------------------------------------------------------------------------- JSON boundary
    @classmethod
    def from_json(cls, data: Any) -> MlpSpec:
        """Validate a ``describe_mlp``-style dict and build the spec.

        In a layer, ``name``, ``bias``, ``in_features``/``out_features`` and ``activation`` may
        be left out (the layer's index, no bias, the widths, None).

        Raises:
            ArchitectureError: naming the first field that does not fit, and what to do.
        """
        if not isinstance(data, Mapping):
            raise ArchitectureError(
                f"Expected architecture to be a dict ({{'kind': 'mlp', 'widths', 'layers'}} as "
                f"hyperlapse.describe_mlp returns), but got {type(data).__name__}."
            )
        kind = data.get("kind")
        if kind != "mlp":
            hint = (" A population is analysed one run at a time (hyperlapse.zoo splits it)."
                    if kind == "population" else "")
            raise ArchitectureError(
                f"Expected architecture['kind'] to be 'mlp' (from hyperlapse.describe_mlp), but "
                f"got {kind!r}.{hint}"
            )
        widths = data.get("widths")
        if not isinstance(widths, (list, tuple)) or len(widths) < 2 or not all(
            map(_is_count, widths)
        ):
            raise ArchitectureError(
                f"Expected architecture['widths'] to be a list of at least two positive ints "
                f"[n_0, ..., n_L], but got {widths!r}."
            )
        widths = tuple(int(w) for w in widths)
        raw = data.get("layers")
        if not isinstance(raw, (list, tuple)) or len(raw) != len(widths) - 1:
            got = f"{len(raw)} layers" if isinstance(raw, (list, tuple)) else repr(raw)
            raise ArchitectureError(
                f"Expected architecture['layers'] to list {len(widths) - 1} layers for widths "
                f"{list(widths)}, but got {got}."
            )
        layers = []
        for l, layer in enumerate(raw):
            if not isinstance(layer, Mapping) or not isinstance(layer.get("weight"), str):
                raise ArchitectureError(
                    f"Expected layer {l} of the architecture to be a dict naming its 'weight' "
                    f"parameter, but got {layer!r}."
                )
            for key, width in (("in_features", widths[l]), ("out_features", widths[l + 1])):
                if layer.get(key, width) != width:
                    raise ArchitectureError(
                        f"Expected layer {l}'s {key} to be {width} (widths {list(widths)}), but "
                        f"got {layer[key]!r}. Make the widths and the layers agree."
                    )
            tied = layer.get("tied_to")
            extra = {k: v for k, v in layer.items() if k not in _LAYER_KEYS}
            layers.append(LayerSpec(
                name=str(layer.get("name", l)),
                weight=layer["weight"],
                bias=layer.get("bias"),
                in_features=widths[l],
                out_features=widths[l + 1],
                activation=layer.get("activation"),
                tied_to=None if tied is None else str(tied),
                extra=_plain_json(extra, f"layer {l}'s extra keys") if extra else {},
            ))
        extra = {k: v for k, v in data.items() if k not in ("kind", "widths", "layers")}
        return cls(widths, tuple(layers), _plain_json(extra, "an architecture") if extra else {})

    def to_json(self) -> dict[str, Any]:
        """The dict stored in a trajectory's attributes (``describe_mlp``'s format)."""
        return {**self.extra, "kind": "mlp", "widths": list(self.widths),
                "layers": [layer.to_json() for layer in self.layers]}

    # ----------------------------------------------------------------------------- views
    @property
    def num_layers(self) -> int:
        """Number of weight layers ``L``."""
        return len(self.layers)

    @property
    def activations(self) -> tuple[str | None, ...]:
        """The activation after each layer."""
        return tuple(layer.activation for layer in self.layers)

    @property
    def activations_known(self) -> bool:
        """Whether no layer's activation is :data:`UNKNOWN_ACTIVATION`."""
        return UNKNOWN_ACTIVATION not in self.activations

    def parameter_shapes(self, lead: tuple[int, ...] = ()) -> dict[str, tuple[int, ...]]:
        """Stored parameter name -> shape (``lead`` first: a population's run axis)."""
        out: dict[str, tuple[int, ...]] = {}
        for layer in self.layers:
            out[layer.weight] = lead + layer.weight_shape
            if layer.bias is not None:
                out[layer.bias] = lead + layer.bias_shape
        return out

    def check_shapes(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        lead: tuple[int, ...] = (),
        source: str = "recorded tensors",
    ) -> None:
        """Check that every parameter a layer names is among ``shapes`` with its shape.

        Args:
            shapes: tensor name -> shape; names no layer uses are allowed (buffers, ...).
            lead: leading axes every parameter has before its own (a population's runs).
            source: what ``shapes`` are, for the message ("recorded tensors", "state dict").

        Raises:
            ArchitectureError: naming the first missing or mis-shaped parameter.
        """
        have = ", ".join(f"{n} {tuple(s)}" for n, s in list(shapes.items())[:6])
        have += ", ..." if len(shapes) > 6 else ""
        for layer in self.layers:
            for param, want in ((layer.weight, layer.weight_shape), (layer.bias, layer.bias_shape)):
                if param is None:
                    continue
                expected = lead + want
                role = "weight" if len(want) == 2 else "bias"
                if param not in shapes:
                    raise ArchitectureError(
                        f"Expected the {role} of layer '{layer.name}' ('{param}') among the "
                        f"{source}, but there is no parameter '{param}' (expected shape "
                        f"{expected}; {source}: {have or 'none'}). Name the parameters as "
                        f"model.named_parameters() does, and pass the tensors of the model the "
                        f"architecture describes."
                    )
                got = tuple(shapes[param])
                if got != expected:
                    axis = " (leading run axis, then out x in)" if lead else ""
                    raise ArchitectureError(
                        f"Expected '{param}' ({role} of layer '{layer.name}', "
                        f"{layer.in_features} -> {layer.out_features} features) to have shape "
                        f"{expected}{axis}, but in the {source} it has shape {got}. Describe the "
                        f"parameters as they are recorded, or fix the widths."
                    )


@dataclass(frozen=True)
class PopulationSpec:
    """``runs`` MLPs of one shape stored with a leading run axis (``hyperlapse.zoo``).

    Attributes:
        runs: length of every parameter's leading axis.
        member: one run's :class:`MlpSpec`.
        extra: other top-level keys of the JSON, carried through unchanged.
    """

    runs: int
    member: MlpSpec
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    kind: ClassVar[str] = "population"

    def __post_init__(self) -> None:
        if not _is_count(self.runs):
            raise ArchitectureError(
                f"Expected architecture['runs'] of a population to be a positive int (the "
                f"length of every parameter's leading run axis), but got {self.runs!r}."
            )

    @classmethod
    def from_json(cls, data: Any) -> PopulationSpec:
        """Validate ``{"kind": "population", "runs", "member"}`` and build the spec."""
        if not isinstance(data, Mapping) or data.get("kind") != "population":
            raise ArchitectureError(
                f"Expected a population description (kind 'population', from "
                f"hyperlapse.arch.describe_population), but got {_kind_of(data)}."
            )
        runs = data.get("runs")
        if not _is_count(runs):
            raise ArchitectureError(
                f"Expected architecture['runs'] of a population to be a positive int (the "
                f"length of every parameter's leading run axis), but got {runs!r}."
            )
        member = data.get("member")
        if not isinstance(member, Mapping) or member.get("kind") != "mlp":
            raise ArchitectureError(
                f"Expected architecture['member'] of a population to be one run's MLP "
                f"description (kind 'mlp', from hyperlapse.describe_mlp), but got "
                f"{_kind_of(member)}."
            )
        extra = {k: v for k, v in data.items() if k not in ("kind", "runs", "member")}
        return cls(int(runs), MlpSpec.from_json(member),
                   _plain_json(extra, "an architecture") if extra else {})

    def to_json(self) -> dict[str, Any]:
        """The dict stored in the population store's attributes."""
        return {**self.extra, "kind": "population", "runs": self.runs,
                "member": self.member.to_json()}

    def check_shapes(
        self, shapes: Mapping[str, tuple[int, ...]], *, source: str = "recorded tensors"
    ) -> None:
        """:meth:`MlpSpec.check_shapes` of the member with the run axis in front."""
        self.member.check_shapes(shapes, lead=(self.runs,), source=source)


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict of kind {value.get('kind')!r}"
    return type(value).__name__


def architecture_from_json(data: Any) -> MlpSpec | PopulationSpec:
    """The spec of a stored ``architecture`` of either kind.

    Raises:
        ArchitectureError: ``data`` is not a valid description of either kind.
    """
    if not isinstance(data, Mapping):
        raise ArchitectureError(
            f"Expected architecture to be a dict ({{'kind': 'mlp', 'widths', 'layers'}} as "
            f"hyperlapse.describe_mlp returns, or hyperlapse.arch.describe_population(...)), but "
            f"got {type(data).__name__}."
        )
    kind = data.get("kind")
    if kind == "mlp":
        return MlpSpec.from_json(data)
    if kind == "population":
        return PopulationSpec.from_json(data)
    raise ArchitectureError(
        f"Expected architecture['kind'] to be 'mlp' or 'population', but got {kind!r}. Build it "
        f"with hyperlapse.describe_mlp(model) (or describe_population(member, runs))."
    )


def as_mlp_spec(architecture: MlpSpec | Mapping[str, Any] | None) -> MlpSpec:
    """``architecture`` as an :class:`MlpSpec` (a spec is returned as it is, a dict validated).

    Raises:
        ArchitectureError: ``architecture`` is None (the recorded model was not an MLP) or not
            a valid MLP description.
    """
    if isinstance(architecture, MlpSpec):
        return architecture
    if architecture is None:
        raise ArchitectureError(
            "Expected an MLP architecture, got None: the model was not recognised as an MLP when "
            "it was recorded (hyperlapse.describe_mlp failed on it), so its parameters cannot be "
            "turned into a parameter graph. Record an nn.Sequential of nn.Linear layers and "
            "activations, or pass architecture=describe_mlp(model) yourself."
        )
    return MlpSpec.from_json(architecture)
