from __future__ import annotations

import geoopt
import pytest
import torch

from hyperlapse.errors import ConfigError
from hyperlapse.geometry import ball as B

DTYPES = [torch.float32, torch.float64]
SEEDS = [0, 1, 2]
# (kind, c): the unit ball, other curvatures, and flat space.
MANIFOLDS = [("poincare", 1.0), ("poincare", 0.3), ("poincare", 2.5), ("euclidean", 1.0)]


def tol(dtype):
    return {"rtol": 1e-4, "atol": 2e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}


def radius(manifold):
    return 1.0 if B.is_flat(manifold) else 1 / manifold.c.item() ** 0.5


def points(n, d, seed, dtype, manifold, scale=0.6):
    """Random points, at hyperbolic radius ~ 2 * scale * sqrt(d) (well inside the ball)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64) * scale * radius(manifold)
    return B.expmap0(v.to(dtype), manifold=manifold)


@pytest.fixture(params=MANIFOLDS, ids=lambda p: f"{p[0]}-c{p[1]}")
def manifold(request):
    kind, c = request.param
    return B.make_manifold(kind, c=c)


def test_make_manifold_types_and_errors():
    assert type(B.make_manifold()) is geoopt.PoincareBall
    assert type(B.make_manifold(exact=True)) is geoopt.PoincareBallExact
    e = B.make_manifold("euclidean")
    assert isinstance(e, geoopt.Euclidean) and e.ndim == 1
    assert B.make_manifold(c=0.5).c.item() == pytest.approx(0.5)
    learnable = B.make_manifold(c=2.0, learnable=True)
    assert learnable.c.requires_grad and len(list(learnable.parameters())) == 1
    assert not any(p.requires_grad for p in B.make_manifold(c=2.0).parameters())
    assert abs(B.make_manifold(c=0.3).c.item() - 0.3) < 1e-15  # stored in float64
    assert B.manifold_kind(e) == "euclidean" and B.is_flat(e)
    assert B.manifold_kind(B.make_manifold()) == "poincare"
    with pytest.raises(ConfigError, match="one of"):
        B.make_manifold("hyperboloid")
    with pytest.raises(ConfigError, match="positive curvature"):
        B.make_manifold(c=0.0)
    with pytest.raises(ConfigError, match="make_manifold"):
        B.dist0(torch.zeros(2), manifold=geoopt.Sphere())
    with pytest.raises(ConfigError, match="float32 or float64"):
        B.eps(torch.int64)
    assert B.EPS[torch.float32] == 4e-3 and B.EPS[torch.float64] == 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_exp_log_roundtrips(manifold, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(32, 4, generator=g, dtype=torch.float64) * 0.5 * radius(manifold)).to(dtype)
    x = B.expmap0(v, manifold=manifold)
    torch.testing.assert_close(B.logmap0(x, manifold=manifold), v, **tol(dtype))
    torch.testing.assert_close(
        B.expmap0(B.logmap0(x, manifold=manifold), manifold=manifold), x, **tol(dtype)
    )
    y = points(32, 4, seed + 10, dtype, manifold)
    u = B.logmap(x, y, manifold=manifold)
    torch.testing.assert_close(B.expmap(x, u, manifold=manifold), y, **tol(dtype))
    # the norm of log_x(y), measured with the metric at x, is the distance
    flat = B.FLAT_METRIC_SCALE
    lam = flat if B.is_flat(manifold) else 2 / (1 - manifold.c * x.pow(2).sum(-1))
    torch.testing.assert_close(lam * u.norm(dim=-1), B.dist(x, y, manifold=manifold), **tol(dtype))
    # dim other than -1 gives the same result
    torch.testing.assert_close(
        B.dist(x.T, y.T, manifold=manifold, dim=0), B.dist(x, y, manifold=manifold)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_distance_axioms(manifold, dtype, seed):
    x, y, z = (points(64, 3, seed * 3 + i, dtype, manifold) for i in range(3))
    dxy = B.dist(x, y, manifold=manifold)
    torch.testing.assert_close(dxy, B.dist(y, x, manifold=manifold), **tol(dtype))
    assert (dxy > 0).all()
    assert B.dist(x, x, manifold=manifold).abs().max() < (1e-3 if dtype == torch.float32 else 1e-7)
    slack = 1e-4 if dtype == torch.float32 else 1e-10
    assert (B.dist(x, z, manifold=manifold) <= dxy + B.dist(y, z, manifold=manifold) + slack).all()
    origin = torch.zeros_like(x)
    torch.testing.assert_close(
        B.dist0(x, manifold=manifold), B.dist(x, origin, manifold=manifold), **tol(dtype)
    )
    assert B.dist0(x, manifold=manifold, keepdim=True).shape == (64, 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ball_closed_forms(dtype):
    # d(0, x) = 2 / sqrt(c) * artanh(sqrt(c) |x|) and d(x, -x) = 2 d(0, x) on a line.
    for c in (1.0, 0.3):
        ball = B.make_manifold(c=c)
        x = torch.tensor([[0.2, 0.1], [0.5, -0.6], [0.0, 0.9]], dtype=dtype) / c**0.5
        r = x.norm(dim=-1)
        expected = 2 / c**0.5 * torch.atanh(c**0.5 * r)
        torch.testing.assert_close(B.dist0(x, manifold=ball), expected, **tol(dtype))
        torch.testing.assert_close(B.dist(x, -x, manifold=ball), 2 * expected, **tol(dtype))
        # geoopt's ball: dist0(expmap0(v)) = 2 |v|
        v = torch.tensor([[0.3, 0.4]], dtype=dtype)
        torch.testing.assert_close(
            B.dist0(B.expmap0(v, manifold=ball), manifold=ball), 2 * v.norm(dim=-1), **tol(dtype)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_mobius_identities(manifold, dtype, seed):
    x, y, a = (points(32, 3, seed * 3 + i, dtype, manifold, scale=0.3) for i in range(3))
    zero = torch.zeros_like(x)
    t = tol(dtype)
    torch.testing.assert_close(B.mobius_add(x, zero, manifold=manifold), x, **t)
    torch.testing.assert_close(B.mobius_add(zero, x, manifold=manifold), x, **t)
    torch.testing.assert_close(B.mobius_add(-x, x, manifold=manifold), zero, **t)
    # left cancellation: (-x) + (x + y) = y
    xy = B.mobius_add(x, y, manifold=manifold)
    torch.testing.assert_close(B.mobius_add(-x, xy, manifold=manifold), y, **t)
    # distance = 2 artanh(sqrt c |(-x) + y|) / sqrt c, and left translations are isometries
    if not B.is_flat(manifold):
        sc = manifold.c.item() ** 0.5
        n = B.mobius_add(-x, y, manifold=manifold).norm(dim=-1)
        torch.testing.assert_close(
            B.dist(x, y, manifold=manifold), 2 / sc * torch.atanh(sc * n), **t
        )
    ax, ay = B.mobius_add(a, x, manifold=manifold), B.mobius_add(a, y, manifold=manifold)
    loose = {"rtol": 2e-3, "atol": 2e-3} if dtype == torch.float32 else t
    torch.testing.assert_close(
        B.dist(ax, ay, manifold=manifold), B.dist(x, y, manifold=manifold), **loose
    )
    # scalar multiplication: 2 (x) x = x + x, and r (x) x = expmap0(r logmap0(x))
    torch.testing.assert_close(
        B.mobius_scalar_mul(2.0, x, manifold=manifold),
        B.mobius_add(x, x, manifold=manifold),
        **loose,
    )
    torch.testing.assert_close(
        B.mobius_scalar_mul(0.3, x, manifold=manifold),
        B.expmap0(0.3 * B.logmap0(x, manifold=manifold), manifold=manifold),
        **t,
    )


def test_euclidean_reduces_to_flat_formulas():
    e = B.make_manifold("euclidean")
    g = torch.Generator().manual_seed(0)
    x, y, v = (torch.randn(10, 3, generator=g, dtype=torch.float64) * 5 for _ in range(3))
    assert torch.equal(B.expmap0(v, manifold=e), v)
    assert torch.equal(B.logmap0(x, manifold=e), x)
    assert torch.equal(B.project(x * 100, manifold=e), x * 100)
    assert torch.equal(B.mobius_add(x, y, manifold=e), x + y)
    assert torch.equal(B.logmap(x, y, manifold=e), y - x)
    assert torch.equal(B.expmap(x, v, manifold=e), x + v)
    # the flat metric is the ball's at the origin, 4 |dx|^2: distances are 2 |x - y|
    torch.testing.assert_close(B.dist(x, y, manifold=e), 2 * (x - y).norm(dim=-1))
    torch.testing.assert_close(B.dist0(x, manifold=e), 2 * x.norm(dim=-1))
    w = torch.rand(10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        B.weighted_midpoint(x, w, manifold=e, reducedim=0), (w[:, None] * x).sum(0) / w.sum()
    )
    torch.testing.assert_close(B.weighted_midpoint(x, manifold=e, reducedim=0), x.mean(0))
    assert B.check_point(x * 1e6, manifold=e)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_curvature_tends_to_flat(dtype):
    ball = B.make_manifold(c=1e-6)
    g = torch.Generator().manual_seed(3)
    x, y = (torch.randn(8, 3, generator=g).to(dtype) for _ in range(2))
    w = torch.rand(8, generator=g).to(dtype)
    # geoopt's ball has lambda_0 = 2: as c -> 0 its distances tend to the flat ones
    flat = B.make_manifold("euclidean")
    torch.testing.assert_close(
        B.dist(x, y, manifold=ball), B.dist(x, y, manifold=flat), rtol=1e-3, atol=1e-3
    )
    torch.testing.assert_close(
        B.dist0(x, manifold=ball), B.dist0(x, manifold=flat), rtol=1e-3, atol=1e-3
    )
    torch.testing.assert_close(
        B.weighted_midpoint(x, w, manifold=ball, reducedim=0),
        (w[:, None] * x).sum(0) / w.sum(),
        rtol=1e-3,
        atol=1e-3,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_midpoints(manifold, dtype, seed):
    t = tol(dtype)
    x = points(7, 3, seed, dtype, manifold)
    # identical points, anywhere (also right at the projected boundary)
    for p in (x[0], B.project(x[0] / x[0].norm() * 10, manifold=manifold)):
        same = p.expand(5, 3)
        w = torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        torch.testing.assert_close(
            B.weighted_midpoint(same, w, manifold=manifold, reducedim=0), p, **t
        )
    # a single non-zero weight selects that point
    w = torch.zeros(7, dtype=dtype)
    w[3] = 2.0
    torch.testing.assert_close(B.weighted_midpoint(x, w, manifold=manifold, reducedim=0), x[3], **t)
    # the midpoint of two points is halfway along the geodesic
    m = B.weighted_midpoint(x[:2], manifold=manifold, reducedim=0)
    d = B.dist(x[0], x[1], manifold=manifold)
    torch.testing.assert_close(B.dist(m, x[0], manifold=manifold), d / 2, **t)
    torch.testing.assert_close(B.dist(m, x[1], manifold=manifold), d / 2, **t)
    # batched over a leading dim, keepdim, and the order of the points does not matter
    xs = torch.stack([x, x.flip(0)])
    mb = B.weighted_midpoint(xs, manifold=manifold, reducedim=1)
    assert mb.shape == (2, 3)
    torch.testing.assert_close(mb[0], mb[1], **t)
    assert B.weighted_midpoint(xs, manifold=manifold, reducedim=1, keepdim=True).shape == (2, 1, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_midpoint_agrees_with_geoopt_inside(dtype, c):
    ball = B.make_manifold(c=c)
    x = points(9, 4, 2, dtype, ball, scale=0.8).reshape(3, 3, 4)
    w = torch.rand(3, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ours = B.weighted_midpoint(x, w, manifold=ball, reducedim=1)
    theirs = ball.weighted_midpoint(x, w, reducedim=[1])
    torch.testing.assert_close(ours, theirs.to(dtype), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_midpoint_matches_weighted_midpoint(manifold, dtype):
    x = points(12, 3, 5, dtype, manifold)
    w = torch.rand(12, generator=torch.Generator().manual_seed(1), dtype=dtype)
    index = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3, 3, 1, 0])
    m = B.scatter_midpoint(x, w, index, 5, manifold=manifold)
    assert m.shape == (5, 3)
    for group in (0, 1, 3):
        sel = index == group
        expected = B.weighted_midpoint(x[sel], w[sel], manifold=manifold, reducedim=0)
        torch.testing.assert_close(m[group], expected, **tol(dtype))
    assert m[2].abs().max() == 0 and m[4].abs().max() == 0  # empty groups: the origin
    # multi-head layout [E, H, d]
    xh = torch.stack([x, x.flip(0)], 1)
    wh = torch.stack([w, w.flip(0)], 1)
    mh = B.scatter_midpoint(xh, wh, index, 5, manifold=manifold)
    torch.testing.assert_close(mh[:, 0], m)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_finite_gradients_including_coincident_and_boundary_points(manifold, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(16, 4, generator=g, dtype=torch.float64) * 2.0).to(dtype).requires_grad_()
    x = B.expmap0(v, manifold=manifold)
    y = torch.cat([x[:8], x[8:].flip(0)])  # half the pairs coincide
    far = B.expmap0(v * 50, manifold=manifold)  # projected onto the boundary shell
    w = torch.rand(16, generator=g, dtype=torch.float64).to(dtype)
    loss = (
        B.dist(x, y, manifold=manifold).sum()
        + B.dist0(far, manifold=manifold).sum()
        + B.dist(far, x, manifold=manifold).sum()
        + B.logmap0(B.mobius_add(x, y, manifold=manifold), manifold=manifold).sum()
        + B.logmap(x, far, manifold=manifold).sum()
        + B.weighted_midpoint(x, w, manifold=manifold, reducedim=0).sum()
        + B.scatter_midpoint(far, w, torch.arange(16) % 3, 3, manifold=manifold).sum()
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all()


def test_gradients_match_finite_differences_float64():
    ball = B.make_manifold(c=0.7)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    y = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: B.dist(a, b, manifold=ball), (x, y))
    assert torch.autograd.gradcheck(
        lambda a, b: B.weighted_midpoint(torch.stack([a, b]), manifold=ball, reducedim=0), (x, y)
    )


def test_learnable_curvature_receives_gradient():
    ball = B.make_manifold(c=1.5, learnable=True)
    x = torch.tensor([[0.3, 0.2], [-0.1, 0.4]])
    B.dist(x[0], x[1], manifold=ball).backward()
    grads = [p.grad for p in ball.parameters()]
    assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1.0, 0.25, 4.0])
def test_points_stay_strictly_inside_after_project(dtype, c):
    ball = B.make_manifold(c=c)
    radius = 1 / c**0.5
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(200, 5, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    scales = torch.cat([torch.linspace(0.9, 1.0, 100), torch.linspace(1.0, 1e4, 100)])
    x = (direction * scales[:, None].double() * radius).to(dtype)
    p = B.project(x, manifold=ball)
    norms = p.double().norm(dim=-1)
    assert (norms < radius).all()
    assert (norms <= (1 - B.EPS[dtype]) * radius * (1 + 1e-6)).all()
    assert B.check_point(p, manifold=ball)
    inside = x.double().norm(dim=-1) < (1 - B.EPS[dtype]) * radius * (1 - 1e-6)
    assert torch.equal(p[inside], x[inside])  # points already inside are untouched
    assert torch.isfinite(B.dist0(p, manifold=ball)).all()
    # everything that produces points keeps them inside, even from huge tangent vectors
    huge = direction.to(dtype) * 1e3
    for out in (
        B.expmap0(huge, manifold=ball),
        B.mobius_add(p, p, manifold=ball),
        B.expmap(p, huge, manifold=ball),
        B.mobius_scalar_mul(50.0, p, manifold=ball),
        B.weighted_midpoint(p, manifold=ball, reducedim=0),
    ):
        assert B.check_point(out, manifold=ball), B.check_point(out, manifold=ball, explain=True)
    ok, reason = B.check_point(x, manifold=ball, explain=True)
    assert not ok and "outside the ball" in reason
    ok, reason = B.check_point(torch.tensor([float("nan"), 0.0]), manifold=ball, explain=True)
    assert not ok and "non-finite" in reason


def test_flat_stereographic_is_accepted_with_the_balls_metric():
    # geoopt's Stereographic(k=0) is the c -> 0 limit of the ball: flat, with lambda = 2.
    flat = geoopt.Stereographic(k=0.0)
    assert not B.is_flat(flat)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    torch.testing.assert_close(B.dist(x, y, manifold=flat), 2 * (x - y).norm(dim=-1))
    torch.testing.assert_close(B.weighted_midpoint(x, manifold=flat, reducedim=0), x.mean(0))
    torch.testing.assert_close(B.mobius_add(x, y, manifold=flat), x + y)
    assert torch.equal(B.project(x * 1e3, manifold=flat), x * 1e3)
    assert B.check_point(x * 1e3, manifold=flat)
