"""Layers of the encoder: equivariance, window invariance, heads, the ball's boundary."""

from __future__ import annotations

import math

import pytest
import torch
from nn_helpers import make_encoder, one_thread, tiny_run  # noqa: F401 (one_thread: autouse)

from hyperlapse.geometry.ball import dist, expmap0, logmap0, make_manifold
from hyperlapse.nn.fermi_dirac import FermiDiracDecoder
from hyperlapse.nn.hyp_attention import HypGraphAttention
from hyperlapse.nn.hyp_linear import HypLinear
from hyperlapse.nn.signed_weight import SignedWeightHead
from hyperlapse.nn.window_attention import WindowAttention

D64 = torch.float64


@pytest.fixture(scope="module")
def run():
    return tiny_run()


def _random_graph(n=12, e=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    attr = torch.randn(e, 2, generator=gen, dtype=D64)
    return edge_index, attr


@pytest.mark.parametrize("kind", ["poincare", "euclidean"])
@pytest.mark.parametrize("aggregation", ["midpoint", "tangent"])
def test_attention_is_permutation_equivariant(kind, aggregation):
    m = make_manifold(kind).to(D64)
    layer = HypGraphAttention(4, 3, manifold=m, aggregation=aggregation).to(D64)
    edge_index, attr = _random_graph()
    x = expmap0(torch.randn(12, 4, dtype=D64), manifold=m)
    delta = torch.randn(5, 3, 4, 4, dtype=D64) * 0.1
    out, alpha = layer(x, edge_index, attr, delta)
    perm = torch.randperm(12)
    inv = torch.argsort(perm)
    out_p, alpha_p = layer(x[perm], inv[edge_index], attr, delta)
    torch.testing.assert_close(out_p, out[perm], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha_p, alpha, rtol=1e-10, atol=1e-10)
    # the softmax is over each node's incoming edges (both directions)
    dst = torch.cat([edge_index[1], edge_index[0]])
    sums = torch.zeros(12, 3, dtype=D64).index_add_(0, dst, alpha)
    has_in = torch.bincount(dst, minlength=12) > 0
    torch.testing.assert_close(sums[has_in], torch.ones_like(sums[has_in]))


def test_attention_uses_both_directions_and_edge_signs():
    m = make_manifold("poincare").to(D64)
    layer = HypGraphAttention(4, 2, manifold=m).to(D64)
    x = expmap0(torch.randn(3, 4, dtype=D64), manifold=m)
    edge_index = torch.tensor([[0, 1], [2, 2]])  # 0 -> 2, 1 -> 2: node 0 and 1 only get reverse
    attr = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=D64)
    out, _ = layer(x, edge_index, attr)
    assert not torch.allclose(out[0], x[0])  # source nodes receive messages (reverse edges)
    flipped, _ = layer(x, edge_index, attr * torch.tensor([-1.0, 1.0], dtype=D64))
    assert not torch.allclose(flipped[2], out[2])  # the sign of the weight matters


def test_window_attention_ignores_the_order_of_the_window():
    torch.manual_seed(0)
    win = WindowAttention(4).to(D64)
    window = torch.randn(5, 7, 4, dtype=D64)
    s, a = win(window)
    for seed in range(3):
        perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
        s_p, a_p = win(window[perm])
        torch.testing.assert_close(s_p, s, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a_p, a[perm], rtol=1e-12, atol=1e-12)
    # and it does depend on the content
    assert not torch.allclose(win(window * 2)[0], s)


def test_encoder_step_ignores_the_order_of_the_window(run):
    enc = make_encoder(run, window=3)
    state = enc.init_state()
    for t in range(4):
        _, state = enc.step(run[t], state)
    z, _ = enc.step(run[4], state)
    state.history = state.history[::-1]
    z_shuffled, _ = enc.step(run[4], state)
    torch.testing.assert_close(z_shuffled, z, rtol=1e-12, atol=1e-12)


def test_fermi_dirac_probabilities_decrease_with_distance():
    m = make_manifold("poincare").to(D64)
    head = FermiDiracDecoder(manifold=m, radius=1.0, temperature=0.5).to(D64)
    z = expmap0(
        torch.tensor([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=D64), manifold=m
    )
    logits = head(z, torch.tensor([[0, 0, 0], [1, 2, 3]]))
    p = torch.sigmoid(logits)
    assert (p[:-1] > p[1:]).all() and ((p > 0) & (p < 1)).all()
    d = dist(z[0], z[2], manifold=m)
    want = 1 / (torch.exp((d - head.radius) / head.temperature) + 1)
    torch.testing.assert_close(p[1], want)
    assert head.temperature > 0


@pytest.mark.parametrize("kind", ["poincare", "euclidean"])
def test_hyp_linear_is_linear_in_the_tangent_space(kind):
    m = make_manifold(kind).to(D64)
    lin = HypLinear(3, 2, manifold=m).to(D64)
    x = expmap0(torch.randn(5, 3, dtype=D64), manifold=m)
    want = expmap0(logmap0(x, manifold=m) @ lin.weight.T, manifold=m)
    torch.testing.assert_close(lin(x), want)


def test_points_stay_inside_the_ball_when_pushed_to_the_boundary(run):
    """Long float32 training that rewards the radius: nothing reaches the boundary, no NaN."""
    enc = make_encoder(run, dtype=torch.float32, d=2, c=1.0)
    opt = torch.optim.Adam(enc.parameters(), lr=0.1)
    snaps = [enc.prepare(run[t]) for t in range(2)]
    max_norm = 0.0
    for _ in range(40):
        zs, _ = enc(snaps)
        loss = -sum(enc.manifold.dist0(z).mean() for z in zs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        norms = torch.stack(zs).detach().norm(dim=-1)
        assert torch.isfinite(norms).all()
        assert (norms < 1.0).all()
        max_norm = max(max_norm, float(norms.max()))
    assert max_norm > 0.99  # really pushed to the boundary
    assert all(torch.isfinite(p).all() for p in enc.parameters())


def test_sign_logit_is_the_riemannian_inner_product_with_a_transported_vector():
    ball = make_manifold("poincare", 1.0).to(D64)
    head = SignedWeightHead(3, 2, manifold=ball).to(D64)
    z = expmap0(torch.randn(4, 3, dtype=D64), manifold=ball)
    ids = torch.tensor([0, 1, 1, 0])
    pairs = torch.tensor([[0, 1, 2], [3, 2, 0]])
    _, logit = head(z, ids, pairs)
    xi0 = head.direction(logmap0(z, manifold=ball)) + head.direction_identity(ids)
    u, v = pairs
    origin = torch.zeros_like(z[u])
    xi = ball.transp(origin, z[u], xi0[u])
    want = ball.inner(z[u], ball.logmap(z[u], z[v]), xi, keepdim=True).squeeze(-1) / 4
    torch.testing.assert_close(logit, want, rtol=1e-9, atol=1e-9)


def test_change_features_are_zero_at_first_and_follow_the_weights():
    from hyperlapse.nn.encoder import VELOCITY_FEATURES, change_features
    from hyperlapse.nn.snapshot import prepare_snapshot
    from hyperlapse.train.synthetic import toy_run

    run = toy_run(snapshots=3, seed=1)
    s0, s1 = prepare_snapshot(run[0]), prepare_snapshot(run[1])
    assert torch.equal(change_features(s1, None), torch.zeros(s1.num_nodes, VELOCITY_FEATURES))
    one = change_features(s1, s0.edge_weight, gap=1.0)
    two = change_features(s1, s0.edge_weight, gap=2.0)
    assert torch.allclose(two[:, :2], one[:, :2] / 2)  # a rate per optimizer step
    assert torch.allclose(two[:, 2], torch.full_like(two[:, 2], math.log(2.0)))
    assert (one[:, 1] >= one[:, 0].abs() - 1e-7).all() and float(one[:, 1].max()) > 0
    assert torch.equal(change_features(s1, s1.edge_weight)[:, :2], torch.zeros(s1.num_nodes, 2))
