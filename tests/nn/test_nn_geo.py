"""The manifold helpers the encoder layers use, from :mod:`hyperlapse.geometry.ball` (ball and
flat space, one code path)."""

from __future__ import annotations

import pytest
import torch
from nn_helpers import one_thread  # noqa: F401 (one_thread: autouse)

from hyperlapse.errors import ConfigError
from hyperlapse.geometry.ball import (
    dist,
    dist0,
    eps,
    expmap0,
    logmap0,
    make_manifold,
    scatter_midpoint,
)


@pytest.mark.parametrize("kind", ["poincare", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scatter_midpoint_matches_geoopt(kind, seed):
    gen = torch.Generator().manual_seed(seed)
    m = make_manifold(kind, 0.7)
    x = expmap0(torch.randn(9, 3, generator=gen, dtype=torch.float64), manifold=m)
    w = torch.rand(9, generator=gen, dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 2, 2, 2, 2, 3, 3])
    got = scatter_midpoint(x, w, index, 4, manifold=m)
    for g in (0, 2, 3):
        sel = index == g
        if kind == "poincare":
            want = m.weighted_midpoint(x[sel], w[sel], reducedim=[0])
        else:
            want = (w[sel, None] * x[sel]).sum(0) / w[sel].sum()
        torch.testing.assert_close(got[g], want, rtol=1e-8, atol=1e-8)
    assert torch.equal(got[1], torch.zeros(3, dtype=torch.float64))  # empty group -> origin


def test_flat_space_distances_and_maps():
    x = torch.randn(5, 4, dtype=torch.float64) * 0.3
    y = torch.randn(5, 4, dtype=torch.float64) * 0.3
    flat, ball = make_manifold("euclidean"), make_manifold("poincare", 1.0)
    # flat space has the ball's metric at the origin (lambda_0 = 2): distances 2 |x - y|
    torch.testing.assert_close(dist(x, y, manifold=flat), 2 * (x - y).norm(dim=-1))
    assert torch.equal(expmap0(x, manifold=flat), x)
    assert (dist(x, y, manifold=ball) - dist(x, y, manifold=flat)).abs().min() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_exp_log_roundtrip_and_finite_gradients(dtype, c):
    m = make_manifold("poincare", c).to(dtype)
    u = (torch.randn(20, 3, dtype=dtype) * 3).requires_grad_()
    x = expmap0(u, manifold=m)
    assert (x.norm(dim=-1) < 1 / c**0.5).all()
    small = u.detach().clamp(-0.5, 0.5)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(
        logmap0(expmap0(small, manifold=m), manifold=m), small, atol=tol, rtol=tol
    )
    (dist0(x, manifold=m).sum() + dist(x[:10], x[10:], manifold=m).sum()).backward()
    assert torch.isfinite(u.grad).all()


def test_make_manifold_rejects_unknown_kind_and_bad_curvature():
    with pytest.raises(ConfigError, match="one of"):
        make_manifold("sphere")
    with pytest.raises(ConfigError, match="positive curvature"):
        make_manifold("poincare", 0.0)
    assert eps(torch.float32) > eps(torch.float64)
