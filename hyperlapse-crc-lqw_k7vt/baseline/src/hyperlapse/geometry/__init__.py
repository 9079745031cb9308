"""Geometry: pure functions on the Poincare ball (thin layer over geoopt) and the pullback metric.

The ball functions live in :mod:`hyperlapse.geometry.ball`; the most used are re-exported here.
"""

from __future__ import annotations

from .ball import (
    EPS,
    KINDS,
    check_point,
    curvature,
    dist,
    dist0,
    eps,
    expmap,
    expmap0,
    is_flat,
    logmap,
    logmap0,
    make_manifold,
    manifold_kind,
    mobius_add,
    mobius_scalar_mul,
    project,
    scatter_midpoint,
    weighted_midpoint,
)

__all__ = [
    "EPS",
    "KINDS",
    "check_point",
    "curvature",
    "dist",
    "dist0",
    "eps",
    "expmap",
    "expmap0",
    "is_flat",
    "logmap",
    "logmap0",
    "make_manifold",
    "manifold_kind",
    "mobius_add",
    "mobius_scalar_mul",
    "project",
    "scatter_midpoint",
    "weighted_midpoint",
]
