"""Riemannian refinement: coordinates move along the ball, not as plain Adam would move them."""

from __future__ import annotations

import geoopt
import pytest
import torch
from train_helpers import one_thread  # noqa: F401 (autouse fixture)

from hyperlapse.nn.encoder import TemporalEncoder
from hyperlapse.train.losses import TERMS, LossWeights, loss_terms
from hyperlapse.train.refine import coordinates, refine_snapshot, riemannian_adam
from hyperlapse.train.synthetic import toy_run
from hyperlapse.train.targets import snapshot_targets

D64 = torch.float64


def test_riemannian_adam_follows_the_exponential_map():
    x0 = torch.tensor([[0.85, 0.3], [-0.2, 0.1]], dtype=D64)
    a = torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=D64)
    x = coordinates(x0, kind="poincare")
    assert isinstance(x, geoopt.ManifoldParameter)
    assert isinstance(x.manifold, geoopt.PoincareBallExact)
    lr = 0.1
    opt = riemannian_adam([x], lr=lr)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["amsgrad"]
    (x * a).sum().backward()
    opt.step()
    # expected first step: rgrad = egrad / lambda^2, v = <rgrad, rgrad>_x (componentwise),
    # x1 = exp_x(-lr * rgrad / (sqrt(v) + eps))
    ball = x.manifold
    rgrad = ball.egrad2rgrad(x0, a)
    v = ball.component_inner(x0, rgrad)
    want = ball.expmap(x0, -lr * rgrad / (v.sqrt() + 1e-8))
    torch.testing.assert_close(x.detach(), want, rtol=1e-10, atol=1e-10)
    assert (x.detach().norm(dim=-1) < 1).all()
    # plain Adam on the same tensor moves by lr * sign(grad) per coordinate: a different point
    y = x0.clone().requires_grad_()
    plain = torch.optim.Adam([y], lr=lr, amsgrad=True)
    (y * a).sum().backward()
    plain.step()
    assert (y.detach() - x.detach()).abs().max() > 1e-2


def test_repeated_steps_towards_the_boundary_stay_inside():
    x = coordinates(torch.tensor([[0.5, 0.0]]), kind="poincare")
    opt = riemannian_adam([x], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        (-x[:, 0]).sum().backward()
        opt.step()
        assert torch.isfinite(x).all() and (x.detach().norm(dim=-1) < 1).all()
    assert float(x.detach().norm()) > 0.99


@pytest.mark.parametrize("kind", ["poincare", "euclidean"])
def test_refinement_lowers_the_loss_and_reports_every_term(kind):
    run = toy_run(snapshots=2, seed=3)
    g = run[1]
    torch.manual_seed(0)
    enc = TemporalEncoder(in_features=9, num_identities=g.num_identities, d=3, manifold=kind)
    enc.to(D64)
    snap = enc.prepare(g)
    z, _ = enc.step(snap, enc.init_state())
    z = z.detach()
    targets = snapshot_targets(snap)
    before = float(loss_terms(enc, z, targets, z)["total"].detach())
    refined, terms = refine_snapshot(enc, z, targets, steps=30, lr=0.05)
    assert set(terms) == {*TERMS, "total"}
    assert terms["total"] < before - 0.05
    assert refined.grad_fn is None and refined.shape == z.shape
    assert all(p.grad is None for p in enc.parameters())  # the encoder's weights are untouched


def test_loss_terms_are_separate_and_weighted():
    run = toy_run(snapshots=2, seed=1)
    torch.manual_seed(0)
    enc = TemporalEncoder(in_features=9, num_identities=run[0].num_identities, d=3).to(D64)
    snap = enc.prepare(run[0])
    z, _ = enc.step(snap, enc.init_state())
    targets = snapshot_targets(snap)
    assert targets.link.sum() > 0 and (targets.link == 0).sum() == targets.link.sum()
    w = LossWeights(link=2.0, magnitude=0.0, sign=1.0, smooth=3.0)
    terms = loss_terms(enc, z, targets, z_prev=z.detach() * 0.5, weights=w)
    assert terms["smooth"] > 0
    want = 2 * terms["link"] + terms["sign"] + 3 * terms["smooth"]
    torch.testing.assert_close(terms["total"], want)
    assert float(loss_terms(enc, z, targets)["smooth"]) == 0.0
