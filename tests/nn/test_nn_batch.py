"""Batched encoding: graphs of many runs (mixed architectures) as one disjoint union."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from nn_helpers import one_thread  # noqa: F401 (autouse)

from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.graph.permute import node_permutation
from hyperlapse.nn.batch import collate, from_dense, to_dense
from hyperlapse.nn.encoder import TemporalEncoder
from hyperlapse.nn.metanet import MetaNetwork, readout_dim
from hyperlapse.train.synthetic import toy_run

WIDTHS = [(4, 8, 8, 3), (4, 6, 3), (4, 5, 7, 6, 3)]  # mixed depths and widths, one batch


@pytest.fixture(scope="module")
def runs():
    return [toy_run(w, snapshots=4, seed=i, every=1 + i) for i, w in enumerate(WIDTHS)]


def _encoder(runs, seed=0, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = TemporalEncoder(in_features=runs[0][0].x.shape[1],
                              num_identities=max(r[0].num_identities for r in runs),
                              d=4, sparsify_k=3, **kw)
    return enc.double()


def _alone(enc, run):
    state, zs = enc.init_state(), []
    for t in range(len(run)):
        gap = None if t == 0 else float(run.steps[t] - run.steps[t - 1])
        z, state = enc.step(run[t], state, gap=gap)
        zs.append(z)
    return zs


def _batched(enc, graphs_per_t, steps):
    """``graphs_per_t[t]``: the runs' graphs at snapshot t; ``steps[b]``: run b's steps."""
    state, zs = enc.init_batch_state(len(graphs_per_t[0])), []
    for t, graphs in enumerate(graphs_per_t):
        batch = collate(graphs, sparsify_k=enc.config.sparsify_k, dtype=torch.float64)
        gaps = None if t == 0 else torch.tensor(
            [float(s[t] - s[t - 1]) for s in steps], dtype=torch.float64)
        z, state = enc.step_batch(batch, state, gaps=gaps)
        zs.append((z, batch))
    return zs, state


@pytest.mark.parametrize("aggregation", ["midpoint", "tangent"])
@pytest.mark.parametrize("manifold", ["poincare", "euclidean"])
def test_batched_equals_each_graph_alone(runs, manifold, aggregation):
    enc = _encoder(runs, manifold=manifold, aggregation=aggregation)
    # the kernels evolve per run: make the offsets large enough to matter
    for ev in enc.evolution:
        torch.nn.init.normal_(ev.mlp[-1].weight, std=0.3)
    alone = [_alone(enc, r) for r in runs]
    batched, state = _batched(enc, [[r[t] for r in runs] for t in range(4)],
                              [r.steps for r in runs])
    for t, (z, batch) in enumerate(batched):
        assert batch.num_graphs == 3 and batch.ptr.tolist()[-1] == z.shape[0]
        for b in range(3):
            part = z[batch.ptr[b]:batch.ptr[b + 1]]
            torch.testing.assert_close(part, alone[b][t], rtol=1e-9, atol=1e-10)
    # each run's kernels evolve with its own snapshots (a mix-up would show above)
    u = state.kernel_states[0]
    assert u.shape[0] == 3 and not torch.allclose(u[0], u[1])


def test_hidden_permutation_of_one_graph_permutes_only_its_nodes(runs):
    enc = _encoder(runs)
    gen = torch.Generator().manual_seed(3)
    widths = runs[2].widths
    perms = [torch.randperm(n, generator=gen) for n in widths[1:-1]]
    node_perm = node_permutation(widths, perms)
    plain, _ = _batched(enc, [[r[t] for r in runs] for t in range(4)], [r.steps for r in runs])
    permuted, _ = _batched(
        enc, [[runs[0][t], runs[1][t], runs[2][t].permuted(perms)] for t in range(4)],
        [r.steps for r in runs])
    for (z, batch), (zp, _) in zip(plain, permuted, strict=True):
        lo, hi = int(batch.ptr[2]), int(batch.ptr[3])
        torch.testing.assert_close(zp[:lo], z[:lo], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(zp[lo:hi], z[lo:hi][node_perm], rtol=1e-7, atol=1e-9)
    assert not torch.equal(node_perm, torch.arange(node_perm.numel()))


def test_window_order_does_not_matter_per_graph(runs):
    enc = _encoder(runs)
    graphs = [[r[t] for r in runs] for t in range(4)]
    _, state = _batched(enc, graphs[:3], [r.steps for r in runs])
    assert len(state.history) == 3
    batch = collate(graphs[3], sparsify_k=3, dtype=torch.float64)
    z, _ = enc.step_batch(batch, state)
    z_rev, _ = enc.step_batch(batch, dataclasses.replace(state, history=state.history[::-1]))
    torch.testing.assert_close(z_rev, z, rtol=1e-9, atol=1e-10)


def test_readout_is_invariant_and_the_euclidean_switch_is_like_for_like(runs):
    cfgs = {m: _encoder(runs, manifold=m).config for m in ("poincare", "euclidean")}
    nets = {}
    for m, cfg in cfgs.items():
        torch.manual_seed(5)
        nets[m] = MetaNetwork(cfg, 3).double().eval()
    hyp, euc = ({k: v for k, v in nets[m].state_dict().items() if ".manifold." not in k}
                for m in ("poincare", "euclidean"))
    assert hyp.keys() == euc.keys()
    assert all(torch.equal(hyp[k], euc[k]) for k in hyp)  # identical at initialisation
    gen = torch.Generator().manual_seed(1)
    perms = [torch.randperm(n, generator=gen) for n in runs[0].widths[1:-1]]
    graphs = [collate([r[t] for r in runs], sparsify_k=3, dtype=torch.float64)
              for t in range(4)]
    graphs_p = [collate([runs[0][t].permuted(perms), runs[1][t], runs[2][t]], sparsify_k=3,
                        dtype=torch.float64) for t in range(4)]
    with torch.no_grad():
        e = nets["poincare"].embed(graphs)
        e_p = nets["poincare"].embed(graphs_p)
        e_flat = nets["euclidean"].embed(graphs)
    assert e.shape == (3, readout_dim(4))
    torch.testing.assert_close(e_p, e, rtol=1e-7, atol=1e-9)
    assert not torch.allclose(e_flat, e)  # the geometry differs, nothing else


def test_dense_padding_roundtrip(runs):
    batch = collate([r[0] for r in runs])
    x = torch.randn(batch.num_nodes, 2)
    dense = to_dense(x, batch)
    assert dense.shape == (3, max(batch.sizes), 2)
    assert torch.equal(from_dense(dense, batch), x)


def test_bad_batches_are_clear_errors(runs):
    g = runs[0][0]
    other = dataclasses.replace(g, x=torch.zeros(g.num_nodes, 5))
    with pytest.raises(ArchitectureError, match="graph 0 has 9 and graph 1 has 5"):
        collate([g, other])
    with pytest.raises(ArchitectureError, match="at least one graph"):
        collate([])
    enc = _encoder(runs)
    with pytest.raises(ConfigError, match="state of 1 runs"):
        enc.step_batch(collate([g], dtype=torch.float64), enc.init_batch_state(2))
    with pytest.raises(ConfigError, match="GraphBatch"):
        enc.step_batch(g, enc.init_batch_state(1))
