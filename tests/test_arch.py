from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlapse import check_mlp, describe_mlp
from hyperlapse.arch import unwrap_model
from hyperlapse.errors import ArchitectureError


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 7)
        self.act = nn.Tanh()
        self.out = nn.Linear(7, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.inp(x)))


def test_sequential_widths_names_and_activations():
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 6),
        nn.LeakyReLU(0.2), nn.Linear(6, 3),
    )
    d = describe_mlp(model)
    assert d["widths"] == [4, 8, 6, 3]
    assert [layer["weight"] for layer in d["layers"]] == ["1.weight", "4.weight", "6.weight"]
    assert [layer["activation"] for layer in d["layers"]] == ["relu", "leaky_relu(0.2)", None]
    names = dict(model.named_parameters())
    for layer in d["layers"]:
        assert tuple(names[layer["weight"]].shape) == (layer["out_features"], layer["in_features"])


def test_custom_chain_module_and_bias_free_layer():
    d = describe_mlp(Chain())
    assert d["widths"] == [5, 7, 2]
    assert d["layers"][1]["bias"] is None
    assert d["layers"][0]["activation"] == "tanh"


def test_branching_model_is_rejected_with_names():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(5, 3))
    with pytest.raises(ArchitectureError, match="'1' takes 5 inputs"):
        describe_mlp(model)


def test_non_mlp_module_named_in_error():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    ok, reason = check_mlp(model, explain=True)
    assert not ok and "'1' (LayerNorm)" in reason
    with pytest.raises(TypeError):  # ArchitectureError is also a TypeError
        describe_mlp(model)


def test_unwraps_compiled_module():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    compiled = torch.compile(model)
    assert unwrap_model(compiled) is model
    assert describe_mlp(compiled)["layers"][0]["weight"] == "0.weight"
