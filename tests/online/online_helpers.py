"""Helpers shared by the online tests (imported by name: tests/online is on sys.path)."""

from __future__ import annotations

import math


def assert_json_close(a, b, path: str = "", tol: float = 1e-6, abs_tol: float | None = None):
    """Equal JSON values, floats to ``tol`` relative (and ``abs_tol``, default ``tol``)."""
    abs_tol = tol if abs_tol is None else abs_tol
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_json_close(a[k], b[k], f"{path}.{k}", tol, abs_tol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_json_close(x, y, f"{path}[{i}]", tol, abs_tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=tol, abs_tol=abs_tol), (path, a, b)
    else:
        assert a == b, (path, a, b)
