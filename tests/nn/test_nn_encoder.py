"""TemporalEncoder end to end: equivariance, the Euclidean switch, save/load, the step API."""

from __future__ import annotations

import dataclasses
import sys

import geoopt
import pytest
import torch
from nn_helpers import make_encoder, one_thread, tiny_run  # noqa: F401 (one_thread: autouse)

from hyperlapse import TemporalEncoder, describe_mlp
from hyperlapse.errors import ConfigError
from hyperlapse.graph.permute import node_permutation, permute_hidden
from hyperlapse.graph.temporal import TemporalParameterGraph
from hyperlapse.train.embed import embed_refined
from hyperlapse.train.synthetic import make_mlp


@pytest.fixture(scope="module")
def run():
    return tiny_run()


def _permuted_run(run, seed):
    arch = describe_mlp(make_mlp(run.widths))
    states = [run.source[t] for t in range(len(run))]
    gen = torch.Generator().manual_seed(seed)
    _, perms = permute_hidden(states[0], arch, generator=gen)
    new_states = [permute_hidden(s, arch, perms)[0] for s in states]
    perm_run = TemporalParameterGraph.from_states(new_states, arch, steps=run.steps)
    return perm_run, node_permutation(run.widths, perms)


@pytest.mark.parametrize("sparsify_k", [32, 3])
def test_embeddings_permute_with_the_hidden_neurons(run, sparsify_k):
    """Default settings, encoder + refinement, float64: z' = z[perm] (features are float32)."""
    enc = make_encoder(run, sparsify_k=sparsify_k)
    emb = embed_refined(enc, run)
    perm_run, node_perm = _permuted_run(run, seed=1)
    assert not torch.equal(node_perm, torch.arange(node_perm.numel()))
    emb_p = embed_refined(enc, perm_run)
    torch.testing.assert_close(emb_p.z, emb.z[:, node_perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb_p.z_encoder, emb.z_encoder[:, node_perm], rtol=1e-5, atol=1e-5)
    for key, value in emb.layer_stats().items():
        torch.testing.assert_close(emb_p.layer_stats()[key], value, rtol=1e-5, atol=1e-5)
    # refinement really ran and changed the encoder's output
    assert (emb.z - emb.z_encoder).abs().max() > 1e-4


def test_unique_hidden_identities_would_break_equivariance(run):
    """The property test can fail: give every hidden neuron its own identity and it does."""
    enc = make_encoder(run, num_identities=run[0].num_nodes)
    perm_run, node_perm = _permuted_run(run, seed=1)

    def unique(g):
        return dataclasses.replace(g, node_identity=torch.arange(g.num_nodes))

    emb = enc.embed([unique(run[t]) for t in range(3)])
    emb_p = enc.embed([unique(perm_run[t]) for t in range(3)])
    assert not torch.allclose(emb_p.z, emb.z[:, node_perm], atol=1e-6)


def _trainable(encoder):
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def _layer_types(encoder):
    return [
        (name, type(m).__name__)
        for name, m in encoder.named_modules()
        if not isinstance(m, geoopt.manifolds.Manifold)
    ]


def _traced_calls(encoder, graphs):
    """The sequence of Python functions of hyperlapse.nn that one encoding pass calls."""
    calls = []

    def tracer(frame, event, arg):
        if event == "call" and "hyperlapse/nn/" in frame.f_code.co_filename.replace("\\", "/"):
            calls.append(frame.f_code.co_name)

    sys.setprofile(tracer)
    try:
        encoder(graphs)
    finally:
        sys.setprofile(None)
    return calls


def test_euclidean_switch_changes_the_geometry_only(run):
    hyp = make_encoder(run, manifold="poincare")
    euc = make_encoder(run, manifold="euclidean")
    # same trainable parameters and modules (the manifold object aside)
    assert _trainable(hyp) == _trainable(euc)
    assert _layer_types(hyp) == _layer_types(euc)
    assert isinstance(hyp.manifold, geoopt.PoincareBall)
    assert isinstance(euc.manifold, geoopt.Euclidean)
    # same code path: the same sequence of encoder functions runs
    graphs = [run[t] for t in range(3)]
    trace = _traced_calls(hyp, graphs)
    assert len(trace) > 50 and trace == _traced_calls(euc, graphs)
    # same weights, different geometry
    weights = {k: v for k, v in hyp.state_dict().items() if "manifold." not in k}
    euc.load_state_dict(weights)
    z_h = hyp.embed(run).z
    z_e = euc.embed(run).z
    d_h = hyp.manifold.dist(z_h[-1, :1], z_h[-1, 1:])
    d_e = 2 * (z_e[-1, :1] - z_e[-1, 1:]).norm(dim=-1)
    assert (d_h - d_e).abs().max() > 1e-2
    assert (z_h.norm(dim=-1) < 1).all() and not torch.allclose(z_h, z_e, atol=1e-3)


@pytest.mark.parametrize("eps", [1e-3, 1e-4])
def test_euclidean_switch_is_like_for_like_at_initialisation(run, eps):
    """Same seed, same parameters; near the origin every distance-reading part of the model
    gives the same values in both geometries (up to O(eps^2) curvature terms): attention,
    Fermi-Dirac logits, magnitude and sign heads, smoothness. No hidden factor of 2."""
    from hyperlapse.train.losses import loss_terms
    from hyperlapse.train.targets import snapshot_targets

    hyp = make_encoder(run, manifold="poincare")
    euc = make_encoder(run, manifold="euclidean")
    sd_h = {k: v for k, v in hyp.state_dict().items() if "manifold." not in k}
    sd_e = {k: v for k, v in euc.state_dict().items() if "manifold." not in k}
    assert sd_h.keys() == sd_e.keys()
    assert all(torch.equal(sd_h[k], sd_e[k]) for k in sd_h)
    snap = hyp.prepare(run[2])
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(snap.num_nodes, 4, generator=gen, dtype=torch.float64) * eps
    z_h = hyp.manifold.expmap0(u)
    z_e = u
    rel = 10 * eps  # curvature terms are relative O(eps^2 * |u|^2 / eps^2) ~ eps^2; be generous
    pairs = snap.edge_index
    fd_h, fd_e = hyp.link_head(z_h, pairs), euc.link_head(z_e, pairs)
    torch.testing.assert_close(fd_h, fd_e, rtol=rel, atol=rel)
    for a, b in zip(
        hyp.weight_head(z_h, snap.node_identity, pairs),
        euc.weight_head(z_e, snap.node_identity, pairs),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * eps)
    for lh, le in zip(hyp.attention, euc.attention, strict=True):
        out_h = lh(z_h, snap.msg_edge_index, snap.msg_edge_attr)[0]
        out_e = le(z_e, snap.msg_edge_index, snap.msg_edge_attr)[0]
        torch.testing.assert_close(hyp.manifold.logmap0(out_h), out_e, rtol=rel, atol=rel)
    targets = snapshot_targets(snap)
    t_h = loss_terms(hyp, z_h, targets, hyp.manifold.expmap0(u * 0.5))
    t_e = loss_terms(euc, z_e, targets, u * 0.5)
    for name in ("link", "magnitude", "sign", "smooth"):
        torch.testing.assert_close(t_h[name], t_e[name], rtol=rel, atol=rel * eps**2)
    assert float(t_e["smooth"]) > 0


def test_save_load_roundtrip_gives_identical_embeddings(run, tmp_path):
    enc = make_encoder(run, d=3, heads=1, window=2, aggregation="tangent")
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01)
    enc.save(tmp_path / "enc.pt")
    loaded = TemporalEncoder.load(tmp_path / "enc.pt")
    assert loaded.config == enc.config
    a, b = embed_refined(enc, run, refine_steps=3), embed_refined(loaded, run, refine_steps=3)
    assert torch.equal(a.z, b.z)
    torch.save({"not": "an encoder"}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="TemporalEncoder.save"):
        TemporalEncoder.load(tmp_path / "other.pt")


def test_step_api_matches_forward_and_keeps_bounded_state(run):
    enc = make_encoder(run, window=2)
    graphs = [run[t] for t in range(5)]
    zs, _ = enc(graphs)
    state = enc.init_state()
    for t, g in enumerate(graphs):
        z, state = enc.step(g, state, detach=True)
        torch.testing.assert_close(z, zs[t].detach())
        assert len(state.history) == min(t + 1, 2)
        assert all(h.grad_fn is None for h in state.history + state.kernel_states)
    assert state.t == 5
    _, with_attn = enc.step(graphs[0], state, return_attention=True)
    assert len(with_attn.attention) == enc.config.layers


def test_kernels_evolve_with_the_run(run):
    enc = make_encoder(run)
    with torch.no_grad():
        enc.evolution[0].mlp[-1].weight.mul_(100)
    state = enc.init_state()
    deltas = []
    for t in range(3):
        delta, _ = enc.evolution[0](state.summaries[0], state.kernel_states[0])
        deltas.append(delta)
        _, state = enc.step(run[t], state)
    assert not torch.allclose(deltas[1], deltas[2])


def test_encoder_rejects_graphs_it_was_not_built_for(run):
    enc = make_encoder(run, num_identities=2)
    with pytest.raises(ConfigError, match="num_identities"):
        enc.step(run[0], enc.init_state())
    with pytest.raises(ConfigError, match="manifold"):
        make_encoder(run, manifold="sphere")


def test_learnable_curvature_gets_a_gradient(run):
    enc = make_encoder(run, learnable_c=True, c=0.5)
    zs, _ = enc([run[0], run[1]])
    enc.manifold.dist0(zs[-1]).mean().backward()
    grads = [p.grad for n, p in enc.named_parameters() if n.startswith("manifold.")]
    assert grads and grads[0] is not None and torch.isfinite(grads[0]).all()
    assert float(grads[0].abs()) > 0
    emb = embed_refined(enc, [run[0], run[1]], refine_steps=2)
    assert emb.c == pytest.approx(0.5)


def test_embed_returns_per_head_attention(run):
    enc = make_encoder(run, heads=3)
    emb = enc.embed([run[0], run[1]], return_attention=True)
    assert len(emb.attention) == 2 and len(emb.attention[0]) == enc.config.layers
    alpha = emb.attention[1][0]
    snap = enc.prepare(run[1])
    assert alpha.shape == (2 * snap.msg_edge_index.shape[1], 3)
    dst = torch.cat([snap.msg_edge_index[1], snap.msg_edge_index[0]])
    sums = torch.zeros(snap.num_nodes, 3, dtype=alpha.dtype).index_add_(0, dst, alpha)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert emb.z_encoder is None and emb.losses is None
