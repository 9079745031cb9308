from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlapse import describe_mlp
from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.graph import (
    NODE_FEATURE_NAMES,
    NODE_FEATURES,
    ParameterGraph,
    mlp_topology,
)


def make_mlp(widths, seed=0, bias=True, act=nn.Tanh):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for l in range(len(widths) - 1):
        layers.append(nn.Linear(widths[l], widths[l + 1], bias=bias))
        if l < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Chain(nn.Module):
    """A non-Sequential module whose Linear layers form a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("widths", [[3, 4, 2], [2, 5, 3, 4], [4, 1]])
def test_edge_layout_matches_linear_by_explicit_loop(widths):
    net = make_mlp(widths, seed=1)
    g = ParameterGraph.from_module(net)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    offsets = [sum(widths[:l]) for l in range(len(widths) + 1)]
    e = 0
    for l, lin in enumerate(linears):
        for j in range(lin.out_features):
            for i in range(lin.in_features):
                assert g.edge_index[0, e].item() == offsets[l] + i
                assert g.edge_index[1, e].item() == offsets[l + 1] + j
                assert g.edge_weight[e].item() == lin.weight[j, i].item()
                assert g.edge_layer[e].item() == l
                e += 1
    assert e == g.num_edges == g.edge_index.shape[1]
    assert g.edge_index.dtype == torch.long and g.edge_weight.dtype == torch.float32
    assert g.layer_offsets.tolist() == offsets
    for l, lin in enumerate(linears):
        nodes = slice(offsets[l + 1], offsets[l + 2])
        torch.testing.assert_close(g.node_bias[nodes], lin.bias.detach())
    assert g.node_bias[: widths[0]].abs().sum() == 0


def test_node_tables_types_identities():
    g = ParameterGraph.from_module(make_mlp([2, 3, 3, 2]))
    assert g.num_nodes == 10
    assert g.node_layer.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert g.node_index.tolist() == [0, 1, 0, 1, 2, 0, 1, 2, 0, 1]
    assert g.node_type.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    # inputs 0,1; outputs 2,3; hidden layers 1 and 2 share 4 and 5.
    assert g.node_identity.tolist() == [0, 1, 4, 4, 4, 5, 5, 5, 2, 3]
    assert g.num_identities == 6
    table = g.node_table()
    assert table[4] == {"node": 4, "layer": 1, "index": 2, "type": "hidden"}
    assert [row["type"] for row in table].count("output") == 2


def test_node_features_zscored_per_layer_and_match_definitions():
    widths = [4, 6, 5, 3]
    net = make_mlp(widths, seed=3)
    g = ParameterGraph.from_module(net)
    assert g.x.shape == (g.num_nodes, NODE_FEATURES) and NODE_FEATURES == len(NODE_FEATURE_NAMES)
    col = {name: c for c, name in enumerate(NODE_FEATURE_NAMES)}
    L = len(widths) - 1
    torch.testing.assert_close(g.x[:, col["layer"]], g.node_layer.float() / L)
    onehot = g.x[:, [col["is_input"], col["is_hidden"], col["is_output"]]]
    torch.testing.assert_close(onehot, nn.functional.one_hot(g.node_type, 3).float())
    torch.testing.assert_close(g.x[:, col["bias"]], g.node_bias)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for l in range(L + 1):
        nodes = g.node_layer == l
        for name in ("in_abs", "in_sum", "out_abs", "out_sum"):
            v = g.x[nodes, col[name]]
            has = (name.startswith("in") and l > 0) or (name.startswith("out") and l < L)
            if not has:
                assert v.abs().sum() == 0
                continue
            assert abs(v.mean().item()) < 1e-5
            assert abs(v.pow(2).mean().sqrt().item() - 1) < 1e-4
            w = linears[l - 1].weight if name.startswith("in") else linears[l].weight
            w = w.detach().abs() if name.endswith("abs") else w.detach()
            raw = w.sum(1) if name.startswith("in") else w.sum(0)
            expected = (raw - raw.mean()) / raw.std(correction=0)
            torch.testing.assert_close(v, expected, rtol=1e-4, atol=1e-5)


def test_features_do_not_depend_on_scale_of_targets_in_constant_layer():
    # A layer whose weights are all equal has constant incident sums: z-scores are 0, not noise.
    net = make_mlp([3, 4, 2])
    with torch.no_grad():
        net[2].weight.fill_(0.3)
    g = ParameterGraph.from_module(net)
    col = NODE_FEATURE_NAMES.index("in_abs")
    assert g.x[g.node_layer == 2, col].abs().sum() == 0
    assert torch.isfinite(g.x).all()


def test_from_state_dict_equals_from_module_and_custom_chain():
    net = Chain()
    g1 = ParameterGraph.from_module(net)
    g2 = ParameterGraph.from_state_dict(net.state_dict(), describe_mlp(net))
    assert torch.equal(g1.edge_weight, g2.edge_weight) and torch.equal(g1.x, g2.x)
    assert g1.widths == [3, 5, 2]
    assert g1.node_bias[-2:].abs().sum() == 0  # bias=False layer


def test_topology_cached_tensors_are_shared_shape():
    t = mlp_topology([5, 7, 2])
    assert t["edge_index"].shape == (2, 5 * 7 + 7 * 2)
    assert t["layer_offsets"].tolist() == [0, 5, 12, 14]


def test_signs_and_links_fraction_exact():
    g = ParameterGraph.from_module(make_mlp([10, 20, 5], seed=4))
    torch.testing.assert_close(g.signs(), torch.sign(g.edge_weight))
    for q in (0.05, 0.2, 0.5, 1.0):
        links = g.links(q)
        for l, count in enumerate([200, 100]):
            block = g.edge_layer == l
            k = max(1, round(q * count))
            assert int(links[block].sum()) == k
            # exactly the top-k by |w| within the layer
            mag = g.edge_weight[block].abs()
            top = torch.topk(mag, k).indices
            assert links[block][top].all()
    assert not g.links(0.0).any()


def test_links_ties_are_deterministic_and_zero_is_never_a_link():
    w = torch.tensor([3.0, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    net = nn.Linear(10, 1)
    with torch.no_grad():
        net.weight.copy_(w[None])
    g = ParameterGraph.from_module(net)
    # q = 0.2 -> k = 2: threshold 1.0 ties three ways, all are kept.
    assert g.links(0.2).tolist() == [True, True, True, True] + [False] * 6
    # reversed order gives the reversed answer (no index tie-break)
    with torch.no_grad():
        net.weight.copy_(w.flip(0)[None])
    assert ParameterGraph.from_module(net).links(0.2).tolist() == [False] * 6 + [True] * 4
    # q = 0.9 would reach the zeros: they are never links
    assert g.links(0.9).sum() == 5


@pytest.mark.parametrize("k", [1, 3, 8])
def test_sparsify_keeps_exactly_topk_incoming(k):
    g = ParameterGraph.from_module(make_mlp([8, 6, 4], seed=5))
    s = g.sparsify(k)
    assert s.edge_id is not None and s.edge_id.dtype == torch.long
    torch.testing.assert_close(s.edge_weight, g.edge_weight[s.edge_id])
    assert torch.equal(s.edge_index, g.edge_index[:, s.edge_id])
    assert torch.equal(s.edge_layer, g.edge_layer[s.edge_id])
    assert torch.all(s.edge_id[1:] > s.edge_id[:-1])  # order kept
    for node in range(8, g.num_nodes):
        inc = (g.edge_index[1] == node).nonzero().squeeze(1)
        expected = inc[torch.topk(g.edge_weight[inc].abs(), min(k, inc.numel())).indices]
        kept = s.edge_id[s.edge_index[1] == node]
        assert sorted(kept.tolist()) == sorted(expected.tolist())
    assert not (s.edge_index[1] < 8).any()
    # sparsifying twice composes the ids with the full graph
    ss = s.sparsify(1)
    torch.testing.assert_close(ss.edge_weight, g.edge_weight[ss.edge_id])
    assert ss.num_edges == 6 + 4
    assert torch.equal(s.x, g.x)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_sparsify_fast_path_matches_general_rule_with_ties(k):
    from hyperlapse.graph.links import top_k_incoming

    net = make_mlp([6, 5, 3], seed=6)
    with torch.no_grad():  # ties: quantised weights, one row all equal
        for m in (net[0], net[2]):
            m.weight.copy_((m.weight * 4).round() / 4)
        net[0].weight[1].fill_(0.5)
    g = ParameterGraph.from_module(net)
    general = top_k_incoming(g.edge_weight, g.edge_index[1], g.num_nodes, k)
    assert torch.equal(g.sparsify(k).edge_id, general.nonzero().squeeze(1))
    # the general rule does not need edges grouped by target
    perm = torch.randperm(g.num_edges, generator=torch.Generator().manual_seed(k))
    shuffled = top_k_incoming(g.edge_weight[perm], g.edge_index[1][perm], g.num_nodes, k)
    assert torch.equal(shuffled, general[perm])
    # a row of equal weights keeps all of them (ties are never broken by index)
    row = (g.edge_index[1] == 6 + 1).nonzero().squeeze(1)
    assert general[row].all()


def test_weights_view_roundtrip():
    net = make_mlp([3, 4, 2])
    g = ParameterGraph.from_module(net)
    assert torch.equal(g.weights()[1], net[2].weight.detach())
    with pytest.raises(ConfigError, match="sparsified"):
        g.sparsify(1).weights()


def test_full_edge_id_and_repr_and_to():
    g = ParameterGraph.from_module(make_mlp([3, 2]))
    assert torch.equal(g.full_edge_id, torch.arange(6))
    assert "num_edges=6" in repr(g)
    assert torch.equal(g.to("cpu").edge_weight, g.edge_weight)


def test_not_an_mlp_is_rejected_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ArchitectureError, match="'1' \\(BatchNorm1d\\)"):
        ParameterGraph.from_module(model)
    with pytest.raises(ArchitectureError, match="got None"):
        ParameterGraph.from_state_dict(model.state_dict(), None)
    with pytest.raises(ArchitectureError, match=r"architecture\['kind'\] to be 'mlp'"):
        ParameterGraph.from_state_dict({}, {"kind": "cnn"})


def test_missing_or_misshaped_parameter_is_named():
    net = make_mlp([3, 4, 2])
    arch = describe_mlp(net)
    state = dict(net.state_dict())
    del state["2.bias"]
    with pytest.raises(ArchitectureError, match=r"no parameter '2\.bias'.*expected shape \(2,\)"):
        ParameterGraph.from_state_dict(state, arch)
    state = dict(net.state_dict())
    state["0.weight"] = torch.zeros(4, 5)
    with pytest.raises(ArchitectureError, match=r"'0\.weight'.*shape \(4, 3\).*has shape \(4, 5\)"):
        ParameterGraph.from_state_dict(state, arch)
    # ArchitectureError is also a TypeError
    with pytest.raises(TypeError):
        ParameterGraph.from_state_dict(state, arch)


def test_bad_arguments_are_config_errors():
    from hyperlapse.graph import sample_non_links
    from hyperlapse.graph.state import check_state

    g = ParameterGraph.from_module(make_mlp([3, 4, 2]))
    with pytest.raises(ConfigError, match=r"q to lie in \[0, 1\]"):
        g.links(1.5)
    with pytest.raises(ConfigError, match="k >= 1"):
        g.sparsify(0)
    with pytest.raises(ConfigError, match="bool tensor of shape"):
        sample_non_links(g, g.links().float(), 3)
    with pytest.raises(ConfigError, match="non-negative"):
        sample_non_links(g, g.links(), -1)
    # ConfigError is also a ValueError
    with pytest.raises(ValueError):
        g.links(-0.1)
    ok, reason = check_state({}, g.architecture, explain=True)
    assert not ok and "'0.weight'" in reason
    assert check_state(make_mlp([3, 4, 2]).state_dict(), g.architecture, explain=True) == (True, "")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_on_cuda_matches_cpu():  # pragma: no cover - needs a GPU
    from hyperlapse.graph import sample_non_links

    net = make_mlp([6, 8, 3], seed=2)
    cpu = ParameterGraph.from_module(net)
    gpu = ParameterGraph.from_module(net.cuda())
    assert gpu.edge_index.is_cuda and gpu.x.is_cuda
    assert torch.equal(gpu.edge_weight.cpu(), cpu.edge_weight)
    torch.testing.assert_close(gpu.x.cpu(), cpu.x)
    assert torch.equal(gpu.links().cpu(), cpu.links())
    assert torch.equal(gpu.sparsify(2).edge_id.cpu(), cpu.sparsify(2).edge_id)
    ids = sample_non_links(gpu, gpu.links(), 7)
    assert torch.equal(ids.cpu(), sample_non_links(cpu, cpu.links(), 7))
