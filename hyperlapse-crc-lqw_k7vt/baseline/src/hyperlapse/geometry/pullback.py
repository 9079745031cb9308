"""Input-space geometry of an MLP: the pullback metric of a hidden layer's feature map.

For the feature map ``phi_l: R^{n_0} -> R^{n_l}`` of hidden layer ``l`` (after its activation)
and a probe input ``x``, the Jacobian ``J(x) = d phi_l / dx`` has shape ``(n_l, n_0)``. The
pullback of the Euclidean metric, normalised by the layer width, is

    g(x) = J(x)^T J(x) / n_l                       (n_0 x n_0, symmetric PSD)

and the volume element is ``sqrt(det g(x))``: how much the layer magnifies an infinitesimal
volume of input space around ``x``. For many input dimensions the determinant underflows, so
we report ``log_volume_element``: the sum of the logs of the top-``k`` singular values of
``J / sqrt(n_l)`` (equal to ``log sqrt(det g)`` when ``k = n_0`` and ``J`` has full column
rank). Training is known to magnify input space along the decision boundary (Zavatone-Veth et
al., 2023); :func:`boundary_correlation` measures that against the top-2 logit margin.

Everything here is a pure function of a state dict and the architecture description of
:func:`hyperlapse.arch.describe_mlp`, so it works on any recorded snapshot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ArchitectureError, ConfigError

# Smallest singular value admitted inside a log (relative to the dtype's tiny); one place.
_LOG_FLOOR = {torch.float32: 1e-30, torch.float64: 1e-300}
# Above this many singular values, take them from the eigenvalues of the smaller Gram matrix
# (5-10x faster than an SVD at 784-256; small singular values lose relative precision there).
_SVD_MAX = 64
#: Default number of singular values in the log volume element of high-dimensional inputs.
DEFAULT_TOP_K = 10


def default_top_k(in_features: int) -> int | None:
    """``None`` (all directions: exact ``log sqrt(det g)``) for inputs of at most
    :data:`DEFAULT_TOP_K` dimensions, else :data:`DEFAULT_TOP_K`."""
    return None if in_features <= DEFAULT_TOP_K else DEFAULT_TOP_K

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "softplus": F.softplus,
    "mish": F.mish,
    "selu": F.selu,
    "celu": F.celu,
    "hardtanh": F.hardtanh,
    "tanhshrink": F.tanhshrink,
    "softsign": F.softsign,
}


def activation_fn(name: str | None) -> Callable[[Tensor], Tensor]:
    """The function for an activation name as written by :func:`hyperlapse.arch.describe_mlp`.

    ``None`` is the identity; ``"leaky_relu(0.2)"`` carries its slope; ``"sine(30.0)"`` is
    ``sin(30 x)`` (SIREN; plain ``"sine"`` is ``sin(x)``, i.e. ``w0 = 1``).

    Raises:
        ArchitectureError: a name that is none of these (or not a string).

    Example:
        >>> activation_fn("leaky_relu(0.5)")(torch.tensor([-2.0, 2.0]))
        tensor([-1.,  2.])
        >>> activation_fn("sine(2.0)")(torch.tensor([0.25 * math.pi]))
        tensor([1.])
    """
    if name is None:
        return lambda t: t
    if isinstance(name, str):
        match = re.fullmatch(r"(leaky_relu|sine)\(([-+0-9.eE]+)\)", name)
        if match:
            try:
                value = float(match.group(2))
            except ValueError:
                value = None
            if value is not None and math.isfinite(value):
                if match.group(1) == "sine":
                    return lambda t: torch.sin(value * t)
                return lambda t: F.leaky_relu(t, value)
        if name == "sine":
            return torch.sin
        if name in _ACTIVATIONS:
            return _ACTIVATIONS[name]
    raise ArchitectureError(
        f"Expected an activation among {sorted(_ACTIVATIONS)}, 'leaky_relu(<slope>)', 'sine' or "
        f"'sine(<w0>)', but got {name!r}. Use a supported activation module, or compute the "
        f"geometry yourself from the model."
    )


def _layer_params(
    state: Mapping[str, Tensor], layer: Mapping[str, Any], dtype: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    try:
        weight = state[layer["weight"]].to(dtype)
        bias = state[layer["bias"]].to(dtype) if layer.get("bias") else None
    except KeyError as exc:
        raise ArchitectureError(
            f"Expected parameter {exc.args[0]!r} named by the architecture in the state dict, "
            f"but it is missing (got {sorted(state)[:6]}...). Pass the state dict of the model "
            f"the architecture describes."
        ) from None
    return weight, bias


def mlp_forward(
    state: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    x: Tensor,
    *,
    dtype: torch.dtype | None = None,
    scale: Mapping[int, Tensor] | None = None,
) -> list[Tensor]:
    """Run an MLP given as a state dict; return every layer's output.

    Args:
        state: parameters by qualified name (a snapshot).
        architecture: ``describe_mlp`` output (``layers`` with weight/bias names, activation).
        x: inputs.
        dtype: compute dtype (default: ``x``'s).
        scale: ``{l: s}`` multiplies hidden layer ``l``'s output (1-based, after the
            activation) by ``s`` (broadcast against ``[..., n_l]``): 0 ablates neurons.

    Returns:
        ``[h_1, ..., h_L]``: hidden features after their activation, and the logits last.

    Shapes:
        x: ``[..., n_0]``; ``h_l``: ``[..., n_l]``.
    """
    dtype = dtype or x.dtype
    h = x.to(dtype)
    outs = []
    for layer in architecture["layers"]:
        weight, bias = _layer_params(state, layer, dtype)
        h = F.linear(h, weight, bias)
        h = activation_fn(layer.get("activation"))(h)
        if scale is not None and len(outs) + 1 in scale:
            h = h * scale[len(outs) + 1].to(h)
        outs.append(h)
    return outs


def feature_map(
    state: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    layer: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> Callable[[Tensor], Tensor]:
    """The map from inputs to hidden layer ``layer`` (1-based, after its activation).

    ``layer = L`` (the number of Linear layers) gives the logits.

    Shapes:
        the returned function maps ``[..., n_0]`` to ``[..., n_layer]``.

    Example:
        >>> from torch import nn
        >>> from hyperlapse.arch import describe_mlp
        >>> m = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> phi = feature_map(m.state_dict(), describe_mlp(m), 1)
        >>> phi(torch.zeros(5, 2)).shape
        torch.Size([5, 3])
    """
    layers = architecture["layers"]
    if not 1 <= layer <= len(layers):
        raise ConfigError(
            f"Expected a layer index in 1..{len(layers)} (1 = first hidden layer), but got "
            f"{layer}."
        )
    params = [_layer_params(state, spec, dtype) for spec in layers[:layer]]
    acts = [activation_fn(spec.get("activation")) for spec in layers[:layer]]

    def phi(x: Tensor) -> Tensor:
        h = x.to(dtype)
        for (weight, bias), act in zip(params, acts, strict=True):
            h = act(F.linear(h, weight, bias))
        return h

    return phi


def jacobian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-example Jacobians ``J[b] = d fn(x[b]) / d x[b]`` (torch.func, no Python loop).

    Shapes:
        x: ``[B, n_0]``; returns ``[B, m, n_0]`` where ``fn`` maps ``[n_0] -> [m]``.

    Example:
        >>> W = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        >>> jacobian(lambda v: W @ v, torch.zeros(4, 2)).shape
        torch.Size([4, 3, 2])
    """
    if x.dim() != 2:
        raise ConfigError(f"Expected probe inputs of shape [B, n_0], but got {tuple(x.shape)}.")
    return torch.func.vmap(torch.func.jacrev(fn))(x)


def pullback_metric(J: Tensor) -> Tensor:
    """The pullback metric ``g = J^T J / m`` for Jacobians of an ``m``-wide feature map.

    Shapes:
        J: ``[..., m, n_0]``; returns ``[..., n_0, n_0]`` (symmetric positive semi-definite).
    """
    return J.transpose(-1, -2) @ J / J.shape[-2]


def log_volume_element(J: Tensor, k: int | None = None) -> Tensor:
    """``log`` of the volume element, as a sum of log singular values of ``J / sqrt(m)``.

    With ``k = None`` (or ``k >= min(m, n_0)``) and ``J`` of full column rank this is exactly
    ``log sqrt(det g)``; with smaller ``k`` it is the log-volume of the ``k`` most stretched
    directions (the only finite choice when ``n_0 > m`` or for rank-deficient ``J``). Singular
    values are floored at the dtype's tiny value, so the result never underflows to ``-inf``.

    Shapes:
        J: ``[..., m, n_0]``; returns ``[...]``.

    Example:
        >>> J = 3.0 * torch.eye(2, dtype=torch.float64).expand(5, 2, 2)
        >>> torch.allclose(log_volume_element(J), torch.full((5,), 2 * math.log(3 / 2 ** 0.5),
        ...     dtype=torch.float64))
        True
    """
    m, n0 = J.shape[-2], J.shape[-1]
    r = min(m, n0)
    k = r if k is None else k
    if k < 1:
        raise ConfigError(f"Expected k >= 1 singular values, but got k={k}.")
    k = min(k, r)
    floor = _LOG_FLOOR.get(J.dtype, 1e-30)
    if r <= _SVD_MAX:
        s = torch.linalg.svdvals(J / math.sqrt(m))  # descending
        return torch.log(s[..., :k].clamp_min(floor)).sum(-1)
    Jt = J.transpose(-1, -2)
    gram = (J @ Jt if m <= n0 else Jt @ J) / m  # [.., r, r], eigenvalues s^2 (ascending)
    s2 = torch.linalg.eigvalsh(gram).flip(-1)[..., :k]
    return 0.5 * torch.log(s2.clamp_min(floor)).sum(-1)


def volume_element(J: Tensor) -> Tensor:
    """``sqrt(det g)`` with ``g = J^T J / m`` (use :func:`log_volume_element` in high dim).

    Shapes:
        J: ``[..., m, n_0]``; returns ``[...]``.
    """
    g = pullback_metric(J)
    return torch.linalg.det(g).clamp_min(0).sqrt()


def logit_margin(logits: Tensor) -> Tensor:
    """Margin between the top two logits (small = close to the decision boundary).

    A single-logit (binary) output uses ``|logit|``.

    Shapes:
        logits: ``[B, C]``; returns ``[B]``.

    Example:
        >>> logit_margin(torch.tensor([[1.0, 3.0, 2.5], [0.0, 0.0, 0.0]]))
        tensor([0.5000, 0.0000])
    """
    if logits.shape[-1] == 1:
        return logits[..., 0].abs()
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _rank(x: Tensor) -> Tensor:
    # Average ranks for ties (so Spearman is exact on tied data).
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    mean_rank = (start + (counts - 1) / 2).to(torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-D tensors (``nan`` if either is constant).

    Example:
        >>> round(pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])), 4)
        0.9934
    """
    a = a.to(torch.float64).flatten()
    b = b.to(torch.float64).flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise ConfigError(
            f"Expected two 1-D tensors of equal length >= 2, got {a.numel()} and {b.numel()}."
        )
    a = a - a.mean()
    b = b - b.mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    if denom == 0:
        return float("nan")
    return float((a * b).sum() / denom)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (Pearson on average ranks).

    Example:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 90.0]))
        1.0
    """
    return pearson(_rank(a.flatten()), _rank(b.flatten()))


def layer_log_volumes(
    state: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    probes: Tensor,
    *,
    k: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[dict[int, Tensor], Tensor]:
    """Log volume elements of every hidden layer at the probe inputs, and the logit margins.

    Args:
        state, architecture: the snapshot and its ``describe_mlp`` description.
        probes: probe inputs.
        k: top-``k`` singular values (default: all, ``min(n_l, n_0)``).
        dtype: compute dtype.

    Returns:
        ``({l: log_vol [B] for each hidden layer l = 1..L-1}, margin [B])``.

    Shapes:
        probes: ``[B, n_0]``.
    """
    num_layers = len(architecture["layers"])
    probes = probes.to(dtype)
    out = {}
    with torch.no_grad():
        for layer in range(1, num_layers):
            J = jacobian(feature_map(state, architecture, layer, dtype=dtype), probes)
            out[layer] = log_volume_element(J, k)
        logits = mlp_forward(state, architecture, probes, dtype=dtype)[-1]
    return out, logit_margin(logits)


def input_geometry(
    state: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    probes: Tensor,
    *,
    k: int | None = None,
    near_quantile: float = 0.2,
) -> dict[str, Any]:
    """Summary statistics of the input-space geometry of every hidden layer (JSON-ready).

    For each hidden layer: mean/std/quantiles of the log volume element over the probes, the
    Spearman and Pearson correlation between the log volume element and closeness to the
    boundary (``-margin``), and the mean log volume near the boundary (probes whose margin is
    in the lowest ``near_quantile``) minus far from it (highest ``near_quantile``). A positive
    correlation / gap means the layer magnifies space along the decision boundary.

    Returns:
        ``{"num_probes", "k", "margin_mean", "layers": {str(l): {...}}}``.

    Shapes:
        probes: ``[B, n_0]``.
    """
    logv, margin = layer_log_volumes(state, architecture, probes, k=k)
    lo = torch.quantile(margin, near_quantile)
    hi = torch.quantile(margin, 1 - near_quantile)
    near, far = margin <= lo, margin >= hi
    layers = {}
    for layer, lv in logv.items():
        layers[str(layer)] = {
            "log_volume_mean": float(lv.mean()),
            "log_volume_std": float(lv.std()) if lv.numel() > 1 else 0.0,
            "log_volume_q10": float(torch.quantile(lv, 0.1)),
            "log_volume_q90": float(torch.quantile(lv, 0.9)),
            "spearman_closeness": spearman(lv, -margin),
            "pearson_closeness": pearson(lv, -margin),
            "near_minus_far": float(lv[near].mean() - lv[far].mean()),
        }
    return {
        "num_probes": int(probes.shape[0]),
        "k": k,
        "margin_mean": float(margin.mean()),
        "layers": layers,
    }


def grid_probes(
    low: tuple[float, float], high: tuple[float, float], n: int = 64
) -> tuple[Tensor, Tensor, Tensor]:
    """A regular ``n x n`` grid over a 2-D box, for heat maps.

    Returns:
        ``(probes [n*n, 2], xs [n], ys [n])`` with probes in row-major (y, x) order.
    """
    xs = torch.linspace(low[0], high[0], n, dtype=torch.float64)
    ys = torch.linspace(low[1], high[1], n, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1), xs, ys
