from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hyperlapse import check_mlp, describe_mlp
from hyperlapse.arch import (
    UNKNOWN_ACTIVATION,
    activations_known,
    describe_population,
    unwrap_model,
)
from hyperlapse.errors import ArchitectureError, HyperlapseWarning
from hyperlapse.spec import MlpSpec, architecture_from_json


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


# -- functional activations (torch.fx tracing) ----------------------------------------------------
class Functional(nn.Module):
    """Three Linear layers with the activation applied in forward, not registered."""

    def __init__(self, act) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 6), nn.Linear(6, 5), nn.Linear(5, 2)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


@pytest.mark.parametrize(
    "act, name",
    [
        (F.relu, "relu"),
        (torch.tanh, "tanh"),
        (lambda x: x.relu(), "relu"),
        (lambda x: x.tanh(), "tanh"),
        (lambda x: F.leaky_relu(x, 0.2), "leaky_relu(0.2)"),
        (lambda x: F.leaky_relu(x, negative_slope=0.3), "leaky_relu(0.3)"),
        (F.leaky_relu, "leaky_relu(0.01)"),
        (torch.sigmoid, "sigmoid"),
        (F.gelu, "gelu"),
        (F.silu, "silu"),
        (F.elu, "elu"),
        (F.softplus, "softplus"),
        (lambda x: torch.sin(30.0 * x), "sine(30.0)"),
        (lambda x: x.clamp(min=0), "relu"),
        (lambda x: F.relu(F.dropout(x, 0.5, True)), "relu"),
        (lambda x: F.softmax(x, dim=-1), "softmax"),  # as nn.Softmax in module order
    ],
)
def test_functional_activations_are_found_by_tracing(act, name):
    d = describe_mlp(Functional(act))
    assert [layer["activation"] for layer in d["layers"]] == [name, name, None]


def test_the_traced_activation_evaluates_to_the_module():
    # the name found must compute what forward computes (pullback.activation_fn reads it)
    from hyperlapse.geometry.pullback import mlp_forward

    torch.manual_seed(0)
    for act in (lambda x: F.leaky_relu(x, 0.2), lambda x: torch.sin(3.0 * x), F.gelu):
        net = Functional(act)
        x = torch.randn(7, 3)
        got = mlp_forward(net.state_dict(), describe_mlp(net), x)
        torch.testing.assert_close(got[-1], net(x))


def test_a_proven_linear_hidden_layer_stays_none_without_warning():
    class Linearised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x, scale_output=False):  # a flag traced at its default
            h = F.dropout(self.a(x).view(-1, 4), 0.1, self.training)
            return self.b(h)

    d = describe_mlp(Linearised())
    assert [layer["activation"] for layer in d["layers"]] == [None, None]


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act = nn.Linear(3, 4), nn.Tanh()
        self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.act(self.a(x))
        h = self.b(h)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = F.relu(h)
        return self.c(h)


def test_untraceable_forward_marks_unseen_activations_unknown_with_one_warning():
    with pytest.warns(HyperlapseWarning) as caught:
        d = describe_mlp(DataDependent())
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "DataDependent" in text and "TraceError" in text and "architecture=" in text
    # the registered Tanh is seen in module order; the others could not be seen
    assert [layer["activation"] for layer in d["layers"]] == ["tanh", UNKNOWN_ACTIVATION,
                                                               UNKNOWN_ACTIVATION]
    assert not activations_known(d)
    assert not MlpSpec.from_json(d).activations_known


@pytest.mark.parametrize(
    "forward, why",
    [
        (lambda self, x: self.b(self.a(x) * 2.0), "scaled by 2.0"),
        (lambda self, x: self.b(torch.relu(h := self.a(x)) + h), "combines it"),
        (lambda self, x: self.b(F.elu(self.a(x), alpha=2.0)), "alpha=2.0"),
        (lambda self, x: self.b(torch.tanh(torch.relu(self.a(x)))), "two activations"),
        (lambda self, x: self.b(torch.cos(self.a(x))), "'cos' is not an activation"),
    ],
)
def test_an_operation_that_cannot_be_named_is_unknown_not_linear(forward, why):
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    Odd.forward = forward
    with pytest.warns(HyperlapseWarning, match=why):
        d = describe_mlp(Odd())
    assert d["layers"][0]["activation"] == UNKNOWN_ACTIVATION
    assert d["layers"][1]["activation"] is None


def test_tracing_agrees_with_module_order_for_registered_activations():
    class Registered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.act1 = nn.Linear(3, 5), nn.LeakyReLU(0.3)
            self.b, self.act2 = nn.Linear(5, 4), nn.Sigmoid()
            self.drop, self.c = nn.Dropout(0.2), nn.Linear(4, 2)

        def forward(self, x):
            return self.c(self.drop(self.act2(self.b(self.act1(self.a(x))))))

    model = Registered()
    seq = nn.Sequential(model.a, model.act1, model.b, model.act2, model.drop, model.c)
    traced = describe_mlp(model)
    assert [layer["activation"] for layer in traced["layers"]] == [
        "leaky_relu(0.3)", "sigmoid", None]
    assert [layer["activation"] for layer in describe_mlp(seq)["layers"]] == [
        layer["activation"] for layer in traced["layers"]]
    # Chain (module activation) and a zoo SIREN keep today's names
    assert describe_mlp(Chain())["layers"][0]["activation"] == "tanh"


def test_plain_sequential_is_read_without_tracing(monkeypatch):
    import hyperlapse.arch as arch

    def fail(module):
        raise AssertionError("a plain Sequential must not be traced")

    monkeypatch.setattr(arch, "_trace", fail)
    model = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.Tanh(), nn.Linear(4, 3)), nn.ReLU())
    assert [layer["activation"] for layer in describe_mlp(model)["layers"]] == ["tanh", "relu"]


def test_the_recorder_stores_functional_activations(tmp_path):
    from hyperlapse import TrajectoryRecorder, open_trajectory

    model = Functional(F.relu)
    with TrajectoryRecorder(tmp_path / "f.zarr", model, every=1) as rec:
        rec.capture()
    arch = open_trajectory(tmp_path / "f.zarr").architecture
    assert [layer["activation"] for layer in arch["layers"]] == ["relu", "relu", None]


# -- typed description -----------------------------------------------------------------------
def test_spec_json_round_trip_is_exact_and_validated_once():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    d = describe_mlp(model)
    spec = MlpSpec.from_json(d)
    assert spec.to_json() == d and MlpSpec.from_json(spec.to_json()) == spec
    assert spec.widths == (4, 8, 3) and spec.layers[1].bias is None
    assert spec.parameter_shapes() == {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8)}
    with pytest.raises(FrozenInstanceError):
        spec.widths = (1, 2)
    with pytest.raises(ArchitectureError, match=r"to map 4 -> 9 features.*maps 4 -> 8"):
        MlpSpec((4, 9, 3), spec.layers)
    pop = describe_population(d, 3)
    assert architecture_from_json(pop).to_json() == pop
    # unknown keys are carried through unchanged
    d["note"], d["layers"][0]["init"] = "x", [1, 2]
    assert MlpSpec.from_json(d).to_json() == d


def test_tied_layers_round_trip():
    lin = nn.Linear(3, 3)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = lin, nn.Linear(3, 3)
            self.b.weight = lin.weight

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    d = describe_mlp(Tied())
    assert d["layers"][1]["tied_to"] == "a" and d["layers"][1]["weight"] == "a.weight"
    assert d["layers"][0]["activation"] == "tanh"
    assert MlpSpec.from_json(d).to_json() == d


class _Loop(nn.Module):
    """The same modules as a Sequential, run by a loop in forward: read by tracing."""

    def __init__(self, mods) -> None:
        super().__init__()
        self.layers = nn.ModuleList(mods)

    def forward(self, x):
        for m in self.layers:
            x = m(x)
        return x


def test_tracing_and_module_order_agree_on_random_registered_mlps():
    import random

    from hyperlapse.zoo.population import Sine

    acts = [nn.ReLU, nn.Tanh, lambda: nn.LeakyReLU(0.1), nn.Sigmoid, nn.GELU,
            lambda: Sine(30.0), nn.SiLU, None]
    rng = random.Random(0)
    for _ in range(40):
        depth = rng.randint(1, 4)
        widths = [rng.randint(1, 6) for _ in range(depth + 1)]
        mods: list[nn.Module] = []
        for l in range(depth):
            mods.append(nn.Linear(widths[l], widths[l + 1], bias=rng.random() < 0.8))
            if (act := rng.choice(acts)) is not None:
                mods.append(act())
            if rng.random() < 0.3:
                mods.append(nn.Dropout(0.1))
        seq, loop = describe_mlp(nn.Sequential(*mods)), describe_mlp(_Loop(mods))
        assert loop["widths"] == seq["widths"] == widths
        assert [layer["activation"] for layer in loop["layers"]] == [
            layer["activation"] for layer in seq["layers"]]


def test_a_loss_computed_in_forward_is_not_the_output_activation():
    # Hugging Face style: forward returns {"loss", "logits"}; the logits are the network's map
    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x, labels=None):
            logits = self.b(F.relu(self.a(x)))
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    class Probabilities(WithLoss):
        def forward(self, x):
            return F.softmax(self.b(F.relu(self.a(x))), dim=-1)

    acts = [layer["activation"] for layer in describe_mlp(WithLoss())["layers"]]
    assert acts == ["relu", None]
    assert [layer["activation"] for layer in describe_mlp(Probabilities())["layers"]] == [
        "relu", "softmax"]


def test_a_module_without_a_forward_of_its_own_is_read_through_its_container():
    # a LightningModule whose training_step calls self.net: nothing to trace at the top
    class Holder(nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

    class PassOn(Holder):
        def forward(self, *args, **kwargs):
            return self.net(*args, **kwargs)

    seq = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    for holder in (Holder(seq), PassOn(seq), Holder(Functional(F.relu))):
        d = describe_mlp(holder)  # no warning (warnings are errors here)
        assert d["layers"][0]["name"].startswith("net.")
        assert d["layers"][0]["activation"] in ("tanh", "relu")
        assert d["layers"][-1]["activation"] is None
    # no container to read: the top level's missing forward is a trace failure, said so
    with pytest.warns(HyperlapseWarning, match="could not trace"):
        d = describe_mlp(_bare())
    assert d["layers"][0]["activation"] == UNKNOWN_ACTIVATION


def _bare() -> nn.Module:
    bare = nn.Module()
    bare.a, bare.b = nn.Linear(2, 3), nn.Linear(3, 1)
    return bare
