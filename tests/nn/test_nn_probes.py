"""Probe features: each node's values on fixed probe inputs (hyperlapse.nn.probes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlapse.arch import describe_mlp
from hyperlapse.errors import ArchitectureError, ConfigError
from hyperlapse.nn.probes import probe_inputs, probe_node_features, probe_outputs
from hyperlapse.zoo.population import Sine


def _net(widths, act, seed=0, scale=1.0):
    torch.manual_seed(seed)
    mods = []
    for l, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if l < len(widths) - 2:
            mods.append(act())
    net = nn.Sequential(*mods).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def _permuted_state(net, widths, gen):
    """The state dict with each hidden layer's neurons permuted, and the node permutation."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    linears = [k[:-len(".weight")] for k in state if k.endswith(".weight")]
    node_perm, offset = [torch.arange(widths[0])], widths[0]
    for l in range(1, len(widths) - 1):
        p = torch.randperm(widths[l], generator=gen)
        before, after = linears[l - 1], linears[l]
        state[f"{before}.weight"] = state[f"{before}.weight"][p]
        state[f"{before}.bias"] = state[f"{before}.bias"][p]
        state[f"{after}.weight"] = state[f"{after}.weight"][:, p]
        node_perm.append(offset + p)
        offset += widths[l]
    node_perm.append(offset + torch.arange(widths[-1]))
    return state, torch.cat(node_perm)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, lambda: Sine(30.0)])
def test_probe_features_of_a_permuted_network_are_the_permuted_features(act):
    widths = [2, 7, 5, 3]
    net = _net(widths, act, scale=3.0)
    arch = describe_mlp(net)
    probes = probe_inputs(2, 16)
    feats = probe_node_features(net.state_dict(), arch, probes)
    assert feats.shape == (sum(widths), 16)
    state, perm = _permuted_state(net, widths, torch.Generator().manual_seed(1))
    permuted = probe_node_features(state, arch, probes)
    # permuting rows is exact; the matmul sums run in another order: equal up to rounding
    torch.testing.assert_close(permuted, feats[perm], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(permuted, feats)


def test_probe_rows_are_the_inputs_and_the_model_outputs():
    net = _net([2, 6, 4, 1], lambda: Sine(30.0))
    arch = describe_mlp(net)
    probes = probe_inputs(2, 25, kind="uniform", seed=3)
    feats = probe_node_features(net.state_dict(), arch, probes, normalise="none")
    torch.testing.assert_close(feats[:2], probes.T.float())
    with torch.no_grad():
        torch.testing.assert_close(feats[-1], net(probes)[:, 0].float())
        torch.testing.assert_close(probe_outputs(net.state_dict(), arch, probes)[-1],
                                   net(probes), rtol=1e-12, atol=1e-12)


def test_layer_normalisation_keeps_bounded_layers_and_scales_unbounded_ones():
    probes = probe_inputs(3, 32)
    big = _net([3, 8, 2], nn.ReLU, scale=20.0)
    feats = probe_node_features(big.state_dict(), describe_mlp(big), probes)
    raw = probe_node_features(big.state_dict(), describe_mlp(big), probes, normalise="none")
    for rows in (slice(3, 11), slice(11, 13)):  # hidden (ReLU), outputs (logits): RMS > 1
        assert raw[rows].pow(2).mean().sqrt() > 1
        torch.testing.assert_close(feats[rows].pow(2).mean().sqrt(), torch.tensor(1.0))
    small = _net([3, 8, 2], nn.Tanh)
    a = probe_node_features(small.state_dict(), describe_mlp(small), probes)
    b = probe_node_features(small.state_dict(), describe_mlp(small), probes, normalise="none")
    torch.testing.assert_close(a[3:11], b[3:11])  # tanh: bounded, unchanged


def test_probe_inputs_are_fixed_by_their_arguments():
    grid = probe_inputs(2, 64)  # auto: the 8 x 8 grid over [-1, 1]^2 (an 8x8 INR's pixels)
    axis = torch.linspace(-1, 1, 8, dtype=torch.float64)
    assert sorted(set(grid[:, 0].tolist())) == axis.tolist()
    assert len({tuple(r) for r in grid.tolist()}) == 64
    u = probe_inputs(2, 10)  # not a square: seeded uniform in [-1, 1]^2
    assert torch.equal(u, probe_inputs(2, 10, kind="uniform")) and u.abs().max() <= 1
    assert not torch.equal(u, probe_inputs(2, 10, kind="uniform", seed=1))
    n = probe_inputs(64, 8)
    assert n.shape == (8, 64) and torch.equal(n, probe_inputs(64, 8, kind="normal"))


def test_bad_probe_arguments_are_clear():
    with pytest.raises(ConfigError, match="probes to be an int >= 0"):
        probe_inputs(2, -1)
    with pytest.raises(ConfigError, match="perfect power"):
        probe_inputs(2, 10, kind="grid")
    with pytest.raises(ConfigError, match="probe_kind"):
        probe_inputs(2, 4, kind="sobol")
    net = _net([2, 3, 1], nn.Tanh)
    arch = describe_mlp(net)
    with pytest.raises(ConfigError, match="probe_norm"):
        probe_node_features(net.state_dict(), arch, probe_inputs(2, 4), normalise="batch")
    arch["layers"][0]["activation"] = "swish(2)"
    with pytest.raises(ArchitectureError, match="swish"):
        probe_node_features(net.state_dict(), arch, probe_inputs(2, 4))
