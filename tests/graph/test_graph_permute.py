from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlapse import describe_mlp
from hyperlapse.errors import ConfigError
from hyperlapse.graph import (
    ParameterGraph,
    edge_permutation,
    invert_permutation,
    node_permutation,
    permute_hidden,
    sample_non_links,
)

WIDTHS = [[5, 7, 6, 3], [4, 9, 2], [3, 4, 4, 4, 2]]


def make_mlp(widths, seed):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for l in range(len(widths) - 1):
        layers.append(nn.Linear(widths[l], widths[l + 1]))
        if l < len(widths) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("seed", [0, 1])
def test_permuted_network_computes_the_same_function(widths, seed):
    net = make_mlp(widths, seed)
    arch = describe_mlp(net)
    state = net.state_dict()
    new, perms = permute_hidden(state, arch, generator=torch.Generator().manual_seed(seed))
    assert len(perms) == len(widths) - 2
    assert any(not torch.equal(p, torch.arange(p.numel())) for p in perms)
    twin = make_mlp(widths, seed + 100)
    twin.load_state_dict(new)
    x = torch.randn(16, widths[0], generator=torch.Generator().manual_seed(7))
    assert torch.allclose(net(x), twin(x), atol=1e-5)
    # the input state is untouched and the permuted one differs
    assert all(torch.equal(state[k], net.state_dict()[k]) for k in state)
    assert any(not torch.equal(state[k], new[k]) for k in state)


@pytest.mark.parametrize("widths", WIDTHS)
def test_graph_of_permuted_state_is_permuted_graph(widths):
    net = make_mlp(widths, 3)
    arch = describe_mlp(net)
    g = ParameterGraph.from_state_dict(net.state_dict(), arch)
    new, perms = permute_hidden(net.state_dict(), arch, generator=torch.Generator().manual_seed(3))
    h = ParameterGraph.from_state_dict(new, arch)
    node_perm = node_permutation(widths, perms)  # new -> old
    edge_perm = edge_permutation(widths, perms)
    node_new = invert_permutation(node_perm)  # old -> new
    edge_new = invert_permutation(edge_perm)
    # edge set with weights
    assert torch.equal(h.edge_weight, g.edge_weight[edge_perm])
    assert torch.equal(h.edge_index, node_new[g.edge_index[:, edge_perm]])
    assert torch.equal(h.edge_layer, g.edge_layer)
    # nodes: features, bias, identity, type
    torch.testing.assert_close(h.x, g.x[node_perm], rtol=1e-5, atol=1e-5)
    assert torch.equal(h.node_bias, g.node_bias[node_perm])
    assert torch.equal(h.node_identity, g.node_identity[node_perm])
    assert torch.equal(h.node_type, g.node_type[node_perm])
    # links, signs, sparsification and non-links follow the same permutation
    for q in (0.1, 0.3):
        assert torch.equal(h.links(q), g.links(q)[edge_perm])
        ids_g = sample_non_links(g, g.links(q), 11)
        ids_h = sample_non_links(h, h.links(q), 11)
        assert torch.equal(ids_h, edge_new[ids_g])
    assert torch.equal(h.signs(), g.signs()[edge_perm])
    # permuting the graph directly gives the graph of the permuted state
    p = g.permuted(perms)
    assert torch.equal(p.edge_weight, h.edge_weight) and torch.equal(p.node_bias, h.node_bias)
    assert torch.equal(p.edge_index, h.edge_index)
    torch.testing.assert_close(p.x, h.x, rtol=1e-5, atol=1e-5)
    sg, sh = g.sparsify(2), h.sparsify(2)
    assert sorted(sh.edge_id.tolist()) == sorted(edge_new[sg.edge_id].tolist())


def test_explicit_permutations_and_node_mapping_convention():
    widths = [2, 3, 1]
    perms = [torch.tensor([2, 0, 1])]
    assert node_permutation(widths, perms).tolist() == [0, 1, 4, 2, 3, 5]
    net = make_mlp(widths, 0)
    new, out = permute_hidden(net.state_dict(), describe_mlp(net), perms)
    assert torch.equal(out[0], perms[0])
    assert torch.equal(new["0.weight"], net[0].weight.detach()[[2, 0, 1]])
    assert torch.equal(new["2.weight"], net[2].weight.detach()[:, [2, 0, 1]])
    assert torch.equal(invert_permutation(invert_permutation(perms[0])), perms[0])


def test_bad_permutations_are_rejected():
    net = make_mlp([2, 3, 1], 0)
    arch = describe_mlp(net)
    with pytest.raises(ConfigError, match="one permutation per hidden layer"):
        permute_hidden(net.state_dict(), arch, [])
    with pytest.raises(ConfigError, match="each of 0..2 once"):
        permute_hidden(net.state_dict(), arch, [torch.tensor([0, 0, 1])])


def test_sample_non_links_is_deterministic_spread_and_excludes_links():
    g = ParameterGraph.from_module(make_mlp([10, 12, 6], 4))
    links = g.links(0.2)
    ids = sample_non_links(g, links, 30)
    assert torch.equal(ids, sample_non_links(g, links, 30))
    assert ids.numel() == 30 and ids.unique().numel() == 30
    assert not links[ids].any()
    # shares proportional to the non-links per layer: 96 of 120 and 58 of 72 -> 30 * 96/154
    per_layer = torch.bincount(g.edge_layer[ids], minlength=2).tolist()
    assert per_layer == [19, 11]
    # evenly spaced quantiles of |w|: the picks span small and large non-link magnitudes
    mag = g.edge_weight.abs()
    layer0 = (g.edge_layer == 0) & ~links
    picked = mag[ids[g.edge_layer[ids] == 0]]
    assert torch.all(picked[1:] >= picked[:-1])
    assert picked.min() <= mag[layer0].quantile(0.05) and picked.max() >= mag[layer0].quantile(0.9)
    # asking for more than there are returns all of them
    assert sample_non_links(g, links, 10_000).numel() == int((~links).sum())
    assert sample_non_links(g, links, 0).numel() == 0
