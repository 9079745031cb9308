"""Pure functions on the Poincare ball (and flat space), a thin layer over geoopt.

Every function takes the manifold as the keyword-only ``manifold`` and works for both manifolds
:func:`make_manifold` builds, so the encoder has one code path:

================  =============================================  ==========================
function          Poincare ball (geoopt ``stereographic.math``)   Euclidean (flat formulas)
================  =============================================  ==========================
``expmap0(v)``    ``tan_k(|v|) v / |v|``, then projected          ``v``
``logmap0(x)``    inverse of ``expmap0``                          ``x``
``expmap(x, v)``  exponential map at ``x``                        ``x + v``
``logmap(x, y)``  tangent vector at ``x`` towards ``y``           ``y - x``
``dist(x, y)``    ``2 artan_k(|(-x) (+) y|)``                     ``2 |x - y|``
``dist0(x)``      distance to the origin (hyperbolic radius)      ``2 |x|``
``project(x)``    inside radius ``(1 - EPS) / sqrt(c)``           ``x``
``mobius_add``    Mobius addition ``x (+) y``                     ``x + y``
midpoints         weighted gyromidpoint                           weighted mean
================  =============================================  ==========================

``dim`` is the dimension that holds the coordinates (``-1`` by default). geoopt's ball uses the
metric ``lambda_x^2 |.|^2`` with ``lambda_0 = 2``, so ``dist0(expmap0(v)) = 2 |v|`` on the ball;
the curvature is ``k = -c``. Flat space here is the ``c -> 0`` limit of that ball (geoopt's
stereographic model at ``k = 0``): the metric ``lambda_0^2 |.|^2 = 4 |.|^2``
(:data:`FLAT_METRIC_SCALE` = 2 on distances), so ``dist0(expmap0(v)) = 2 |v|`` in both
geometries and a model switched from one to the other keeps its distance scales (attention
temperatures, Fermi-Dirac radius, smoothness weight): only the curvature changes. With the
plain Euclidean metric every distance would silently halve.

All numerical epsilons of hyperlapse's geometry live in this module (:data:`EPS`,
:data:`MIN_NORM`, :data:`MIN_DENOM`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import geoopt
import torch
from geoopt.manifolds.stereographic import math as smath
from torch import Tensor

from ..errors import ConfigError
from ..scatter import scatter

__all__ = [
    "EPS",
    "MIN_NORM",
    "MIN_DENOM",
    "FLAT_METRIC_SCALE",
    "KINDS",
    "Manifold",
    "eps",
    "make_manifold",
    "manifold_kind",
    "is_flat",
    "curvature",
    "expmap0",
    "logmap0",
    "expmap",
    "logmap",
    "dist",
    "dist0",
    "project",
    "mobius_add",
    "mobius_scalar_mul",
    "weighted_midpoint",
    "scatter_midpoint",
    "check_point",
]

#: Relative distance from the boundary that :func:`project` keeps: points end with norm at most
#: ``(1 - EPS[dtype]) / sqrt(c)``. Same values as geoopt for float32/float64.
EPS: dict[torch.dtype, float] = {
    torch.float32: 4e-3,
    torch.float64: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 2e-2,
}
#: Smallest norm used as a divisor (same as geoopt's internal clamp).
MIN_NORM: float = 1e-15
#: Smallest absolute denominator of a weighted mean / midpoint (same as geoopt's).
MIN_DENOM: float = 1e-10
#: Flat distances are this times ``|x - y|``: the ball's conformal factor at the origin
#: (``lambda_0 = 2``), so flat space is the ``c -> 0`` limit of the ball, not half of it.
FLAT_METRIC_SCALE: float = 2.0

KINDS: tuple[str, ...] = ("poincare", "euclidean")

#: The manifolds these functions accept.
Manifold = Union[geoopt.Stereographic, geoopt.Euclidean]


def eps(dtype: torch.dtype) -> float:
    """The boundary epsilon of :data:`EPS` for ``dtype``.

    Example:
        >>> eps(torch.float32), eps(torch.float64)
        (0.004, 1e-05)
    """
    try:
        return EPS[dtype]
    except KeyError:
        raise ConfigError(
            f"Expected a floating dtype in {sorted(str(d) for d in EPS)}, got {dtype}. Cast the "
            f"points to float32 or float64."
        ) from None


def make_manifold(
    kind: str = "poincare", c: float = 1.0, learnable: bool = False, exact: bool = False
) -> Manifold:
    """Build the manifold the encoder works on.

    Args:
        kind: ``"poincare"`` (geoopt ``PoincareBall`` of curvature ``-c``) or ``"euclidean"``
            (geoopt ``Euclidean(ndim=1)``; ``c``, ``learnable`` and ``exact`` do not apply).
        c: curvature magnitude, > 0 (stored in float64; cast to each input's dtype).
        learnable: make ``c`` a trainable parameter.
        exact: ``PoincareBallExact`` (its retraction is the exact exponential map; use it for
            coordinates optimised by ``geoopt.optim.RiemannianAdam``).

    Example:
        >>> make_manifold("poincare", c=0.5)
        PoincareBall manifold
        >>> make_manifold("euclidean")
        Euclidean(ndim=1) manifold
        >>> make_manifold(c=2.0, learnable=True).c.requires_grad
        True
    """
    if kind not in KINDS:
        raise ConfigError(f"Expected manifold kind to be one of {KINDS}, got {kind!r}.")
    if kind == "euclidean":
        return geoopt.Euclidean(ndim=1)
    if not c > 0:
        raise ConfigError(f"Expected a positive curvature magnitude c, got {c!r}.")
    cls = geoopt.PoincareBallExact if exact else geoopt.PoincareBall
    # float64 storage: geoopt keeps softplus^-1(c); in float32 c = 0.3 comes back as 0.29999993,
    # which limits float64 distances to ~1e-7. curvature() casts k to each input's dtype.
    return cls(c=torch.tensor(float(c), dtype=torch.float64), learnable=learnable)


def is_flat(manifold: Manifold) -> bool:
    """Whether ``manifold`` is geoopt's ``Euclidean`` (the flat baseline)."""
    if isinstance(manifold, geoopt.Euclidean):
        return True
    if isinstance(manifold, geoopt.Stereographic):
        return False
    raise ConfigError(
        f"Expected a geoopt Stereographic/PoincareBall or Euclidean manifold, got "
        f"{type(manifold).__name__}. Build one with hyperlapse.geometry.make_manifold."
    )


def manifold_kind(manifold: Manifold) -> str:
    """``"euclidean"`` or ``"poincare"``."""
    return "euclidean" if is_flat(manifold) else "poincare"


def curvature(manifold: Manifold, like: Tensor | None = None) -> Tensor:
    """Sectional curvature ``k`` (``-c`` on the ball, 0 in flat space), like ``like``.

    Differentiable in ``c`` when the curvature is learnable.
    """
    if is_flat(manifold):
        k = torch.zeros(())
    else:
        k = manifold.k
    if like is not None:
        k = k.to(dtype=like.dtype, device=like.device)
    return k


def project(x: Tensor, *, manifold: Manifold, dim: int = -1) -> Tensor:
    """Pull points back strictly inside the ball: norm at most ``(1 - EPS) / sqrt(c)``.

    Identity in flat space.

    Shapes:
        x: ``[*, d]``, returns ``[*, d]``.

    Example:
        >>> ball = make_manifold()
        >>> round(project(torch.tensor([3.0, 4.0]), manifold=ball).norm().item(), 5)
        0.996
    """
    if is_flat(manifold):
        return x
    return smath.project(x, k=curvature(manifold, x), dim=dim, eps=eps(x.dtype))


def expmap0(v: Tensor, *, manifold: Manifold, dim: int = -1, project: bool = True) -> Tensor:
    """Exponential map at the origin (tangent vector -> point), projected inside the ball.

    Shapes:
        v: ``[*, d]``, returns ``[*, d]``.

    Example:
        >>> ball = make_manifold()
        >>> x = expmap0(torch.tensor([0.3, -0.4]), manifold=ball)
        >>> torch.allclose(logmap0(x, manifold=ball), torch.tensor([0.3, -0.4]))
        True
    """
    if is_flat(manifold):
        return v
    x = smath.expmap0(v, k=curvature(manifold, v), dim=dim)
    return _project(x, manifold, dim) if project else x


def _project(x: Tensor, manifold: Manifold, dim: int) -> Tensor:
    return project(x, manifold=manifold, dim=dim)


def logmap0(x: Tensor, *, manifold: Manifold, dim: int = -1) -> Tensor:
    """Logarithmic map at the origin (point -> tangent vector), inverse of :func:`expmap0`.

    Shapes:
        x: ``[*, d]``, returns ``[*, d]``.
    """
    if is_flat(manifold):
        return x
    return smath.logmap0(x, k=curvature(manifold, x), dim=dim)


def expmap(x: Tensor, v: Tensor, *, manifold: Manifold, dim: int = -1) -> Tensor:
    """Exponential map at ``x`` (``x + v`` in flat space), projected inside the ball.

    Shapes:
        x, v: ``[*, d]`` (broadcast), returns ``[*, d]``.
    """
    if is_flat(manifold):
        return x + v
    return _project(smath.expmap(x, v, k=curvature(manifold, x), dim=dim), manifold, dim)


def logmap(x: Tensor, y: Tensor, *, manifold: Manifold, dim: int = -1) -> Tensor:
    """Tangent vector at ``x`` pointing to ``y`` (``y - x`` in flat space).

    Its Riemannian norm at ``x`` is ``dist(x, y)``.

    Shapes:
        x, y: ``[*, d]`` (broadcast), returns ``[*, d]``.
    """
    if is_flat(manifold):
        return y - x
    return smath.logmap(x, y, k=curvature(manifold, x), dim=dim)


def dist(
    x: Tensor, y: Tensor, *, manifold: Manifold, dim: int = -1, keepdim: bool = False
) -> Tensor:
    """Geodesic distance ``d_c(x, y)`` (``2 |x - y|`` in flat space, :data:`FLAT_METRIC_SCALE`).

    Shapes:
        x, y: ``[*, d]`` (broadcast), returns ``[*]`` (``[*, 1]`` with ``keepdim``).

    Example:
        >>> ball = make_manifold()
        >>> x = torch.tensor([0.5, 0.0])
        >>> d, r = dist(x, -x, manifold=ball), dist0(x, manifold=ball)
        >>> round(d.item(), 4), round(2 * r.item(), 4)
        (2.1972, 2.1972)
    """
    if is_flat(manifold):
        return FLAT_METRIC_SCALE * (x - y).norm(dim=dim, keepdim=keepdim)
    return smath.dist(x, y, k=curvature(manifold, x), dim=dim, keepdim=keepdim)


def dist0(x: Tensor, *, manifold: Manifold, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Distance to the origin: the hyperbolic radius (``2 |x|`` in flat space).

    Shapes:
        x: ``[*, d]``, returns ``[*]`` (``[*, 1]`` with ``keepdim``).
    """
    if is_flat(manifold):
        return FLAT_METRIC_SCALE * x.norm(dim=dim, keepdim=keepdim)
    return smath.dist0(x, k=curvature(manifold, x), dim=dim, keepdim=keepdim)


def mobius_add(x: Tensor, y: Tensor, *, manifold: Manifold, dim: int = -1) -> Tensor:
    """Mobius addition ``x (+) y`` (``x + y`` in flat space), projected inside the ball.

    Shapes:
        x, y: ``[*, d]`` (broadcast), returns ``[*, d]``.
    """
    if is_flat(manifold):
        return x + y
    return _project(smath.mobius_add(x, y, k=curvature(manifold, x), dim=dim), manifold, dim)


def mobius_scalar_mul(r: Tensor | float, x: Tensor, *, manifold: Manifold, dim: int = -1) -> Tensor:
    """Mobius scalar multiplication ``r (x) x = expmap0(r logmap0(x))`` (``r x`` when flat).

    Shapes:
        r: broadcastable to ``[*, 1]``, x: ``[*, d]``, returns ``[*, d]``.
    """
    r = torch.as_tensor(r, dtype=x.dtype, device=x.device)
    if is_flat(manifold):
        return r * x
    return _project(smath.mobius_scalar_mul(r, x, k=curvature(manifold, x), dim=dim), manifold, dim)


def weighted_midpoint(
    x: Tensor,
    weights: Tensor | None = None,
    *,
    manifold: Manifold,
    dim: int = -1,
    reducedim: int | Sequence[int] | None = None,
    keepdim: bool = False,
) -> Tensor:
    """Weighted gyromidpoint (the weighted mean when flat).

    geoopt's ``weighted_midpoint`` formula,
    ``m = 1/2 (x) (sum_i a_i lambda_i x_i / sum_i a_i (lambda_i - 1))`` with the conformal
    factors ``lambda_i``, with the final half-step computed without geoopt's ``artanh`` clamp
    (exact to float64 precision up to the projected boundary; a test compares both inside).
    Only the relative weights matter; they should be non-negative (attention weights). As in
    geoopt, ``dim`` is the coordinate dimension and ``reducedim`` the dimension(s) of the points
    to average (default: every dimension but ``dim``).

    Shapes:
        x: ``[*, n, d]``, weights: broadcastable to ``[*, n]`` (x without ``dim``), returns
        ``[*, d]`` for ``reducedim=-2`` (``dim=-1``).

    Example:
        >>> ball = make_manifold()
        >>> pts = expmap0(torch.randn(5, 3), manifold=ball)
        >>> m = weighted_midpoint(pts, torch.rand(5), manifold=ball, reducedim=0)
        >>> m.shape
        torch.Size([3])
    """
    ndim = x.dim()
    dim = dim % ndim
    if reducedim is None:
        reduce = [d for d in range(ndim) if d != dim]
    else:
        reduce = [reducedim] if isinstance(reducedim, int) else list(reducedim)
        reduce = [d % ndim for d in reduce]
    if dim in reduce:
        raise ConfigError(f"reducedim {reduce} must not contain the coordinate dim {dim}.")
    w = torch.ones((), dtype=x.dtype, device=x.device) if weights is None else weights
    w = w.unsqueeze(dim) if w.dim() > 0 else w
    w = torch.broadcast_to(w, x.narrow(dim, 0, 1).shape)
    if is_flat(manifold):
        num = (w * x).sum(reduce, keepdim=True)
        mid = num / smath.clamp_abs(w.sum(reduce, keepdim=True), MIN_DENOM)
    else:
        k = curvature(manifold, x)
        lam = smath.lambda_x(x, k=k, keepdim=True, dim=dim)
        num = (w * lam * x).sum(reduce, keepdim=True)
        den = (w * (lam - 1)).sum(reduce, keepdim=True)
        mid = _half(num / smath.clamp_abs(den, MIN_DENOM), k, dim)
    if not keepdim:
        for d in sorted(reduce, reverse=True):
            mid = mid.squeeze(d)
    return _project(mid, manifold, _dim_after(dim, reduce, keepdim))


def _half(s: Tensor, k: Tensor, dim: int) -> Tensor:
    """``1/2 (x) s`` as ``s / (1 + sqrt(1 + k |s|^2))``.

    Equal to geoopt's ``mobius_scalar_mul(0.5, s)`` (``tanh(u / 2) = tanh(u) / (1 + sech(u))``)
    but free of its ``artanh`` clamp at ``1 - 1e-7``, which costs float64 midpoints ~4e-4 of
    accuracy within 1e-4 of the boundary. ``s`` (the Klein-model Einstein midpoint) lies inside
    the ball of radius ``1 / sqrt(c)``.
    """
    root = (1 + k * s.pow(2).sum(dim, keepdim=True)).clamp_min(MIN_NORM).sqrt()
    return s / (1 + root)


def _dim_after(dim: int, reduce: list[int], keepdim: bool) -> int:
    """Index of the coordinate dimension after the reduced dimensions are dropped."""
    return dim if keepdim else dim - sum(1 for d in reduce if d < dim)


def scatter_midpoint(
    x: Tensor, weights: Tensor | None, index: Tensor, dim_size: int, *, manifold: Manifold
) -> Tensor:
    """Weighted gyromidpoint of the rows of ``x`` that share an ``index`` (weighted mean if flat).

    The message-passing form of :func:`weighted_midpoint` (same formula as geoopt:
    ``m = 1/2 (x) (sum_i a_i lambda_i x_i / sum_i a_i (lambda_i - 1))``, ``lambda_i`` the
    conformal factor), through :func:`hyperlapse.scatter.scatter`. An index with no rows gives
    the origin. Coordinates are the last dimension.

    Shapes:
        x: ``[E, *, d]``, weights: ``[E, *]`` or None (all 1), index: ``[E]`` int64;
        returns ``[dim_size, *, d]``.

    Example:
        >>> ball = make_manifold()
        >>> pts = expmap0(torch.randn(6, 2), manifold=ball)
        >>> m = scatter_midpoint(pts, None, torch.tensor([0, 0, 0, 2, 2, 2]), 3, manifold=ball)
        >>> torch.allclose(m[0], weighted_midpoint(pts[:3], manifold=ball, reducedim=0), atol=1e-6)
        True
    """
    w = x.new_ones(x.shape[:-1]) if weights is None else weights
    w = w.unsqueeze(-1)
    if is_flat(manifold):
        num = scatter(w * x, index, dim_size, "sum")
        den = scatter(torch.broadcast_to(w, x.shape[:-1] + (1,)), index, dim_size, "sum")
        return num / smath.clamp_abs(den, MIN_DENOM)
    k = curvature(manifold, x)
    lam = smath.lambda_x(x, k=k, keepdim=True, dim=-1)
    num = scatter(w * lam * x, index, dim_size, "sum")
    den = scatter(w * (lam - 1), index, dim_size, "sum")
    return _project(_half(num / smath.clamp_abs(den, MIN_DENOM), k, -1), manifold, -1)


def check_point(
    x: Tensor, *, manifold: Manifold, dim: int = -1, explain: bool = False
) -> bool | tuple[bool, str]:
    """Whether every point is finite and strictly inside the ball (finite when flat).

    Returns ``bool``, or ``(ok, reason)`` with ``explain=True``.

    Example:
        >>> check_point(torch.tensor([[0.6, 0.8]]), manifold=make_manifold(), explain=True)
        (False, 'Found 1 point(s) on or outside the ball of radius 1 (largest norm 1).')
    """
    if not torch.isfinite(x).all():
        ok, reason = False, f"Found {int((~torch.isfinite(x)).sum())} non-finite coordinate(s)."
    elif is_flat(manifold):
        ok, reason = True, ""
    else:
        radius = float(curvature(manifold).detach().abs().rsqrt())
        norm = x.detach().norm(dim=dim)
        bad = norm >= radius
        ok = not bool(bad.any())
        reason = (
            ""
            if ok
            else (
                f"Found {int(bad.sum())} point(s) on or outside the ball of radius {radius:g} "
                f"(largest norm {float(norm.max()):g})."
            )
        )
    return (ok, reason) if explain else ok
