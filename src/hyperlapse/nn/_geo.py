"""The manifold operations the encoder layers use: re-exported from :mod:`hyperlapse.geometry.ball`.

Every function takes ``*, manifold`` (geoopt's ``PoincareBall`` for ``kind="poincare"``, geoopt's
``Euclidean`` for ``kind="euclidean"``), so one code path in the layers serves both geometries:
in flat space ``expmap0``/``logmap0`` are the identity, ``dist`` is ``|x - y|`` and the gyromidpoint
is the weighted mean. Epsilons live in :mod:`hyperlapse.geometry.ball` only.
"""

from __future__ import annotations

from ..geometry.ball import (
    KINDS,
    Manifold,
    curvature,
    dist,
    dist0,
    eps,
    expmap0,
    is_flat,
    logmap,
    logmap0,
    make_manifold,
    manifold_kind,
    project,
)
from ..geometry.ball import scatter_midpoint as segment_midpoint

__all__ = [
    "KINDS",
    "Manifold",
    "make_manifold",
    "manifold_kind",
    "is_flat",
    "curvature",
    "eps",
    "expmap0",
    "logmap0",
    "logmap",
    "dist",
    "dist0",
    "project",
    "segment_midpoint",
]
