"""TrajectoryRecorder(architecture=...): the caller describes the recorded parameters."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, describe_mlp, open_trajectory
from hyperlapse.arch import check_recorded_architecture, describe_population
from hyperlapse.errors import ConfigError, IncompatibleStoreError


class FunctionalTanh(nn.Module):
    """An MLP whose activation is applied in forward (describe_mlp finds it by tracing)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(3, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inp(x)))


class Stacked(nn.Module):
    """Four 3-5-2 MLPs with a leading run axis on every parameter (not an MLP of Linears)."""

    def __init__(self, runs: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.w0 = nn.Parameter(torch.randn(runs, 5, 3))
        self.b0 = nn.Parameter(torch.randn(runs, 5))
        self.w1 = nn.Parameter(torch.randn(runs, 2, 5))


def _tanh_arch() -> dict:
    arch = describe_mlp(FunctionalTanh())
    arch["layers"][0]["activation"] = "tanh"
    return arch


def _stacked_arch(runs: int = 4) -> dict:
    member = {"kind": "mlp", "widths": [3, 5, 2], "layers": [
        {"name": "0", "weight": "w0", "bias": "b0", "activation": "tanh"},
        {"name": "1", "weight": "w1"},  # no bias; in/out features from the widths
    ]}
    return describe_population(member, runs)


def test_given_architecture_is_stored_and_used_instead_of_inference(tmp_path):
    model = FunctionalTanh()
    assert describe_mlp(model)["layers"][1]["activation"] is None  # what inference sees
    arch = _tanh_arch()
    arch["layers"][1]["activation"] = "sigmoid"  # differs from inference: the given one wins
    with TrajectoryRecorder(tmp_path / "r.zarr", model, architecture=arch) as rec:
        rec.capture()
    assert rec.architecture == arch
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.architecture == arch
    assert traj.architecture["layers"][0]["activation"] == "tanh"


def test_population_architecture_records_without_a_warning_and_roundtrips(tmp_path):
    model = Stacked()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no not-an-MLP warning
        rec = TrajectoryRecorder(tmp_path / "p.zarr", model, architecture=_stacked_arch())
    rec.capture()
    rec.close()
    traj = open_trajectory(tmp_path / "p.zarr")
    stored = traj.architecture
    assert stored["kind"] == "population" and stored["runs"] == 4
    member = stored["member"]
    assert member["widths"] == [3, 5, 2]
    # the canonical form fills in what was left out
    assert member["layers"][1] == {"name": "1", "weight": "w1", "bias": None, "in_features": 5,
                                   "out_features": 2, "activation": None}
    assert stored == check_recorded_architecture(_stacked_arch(), {
        "w0": (4, 5, 3), "b0": (4, 5), "w1": (4, 2, 5)})
    assert torch.equal(traj[0]["w0"], model.w0.detach())


def test_resume_accepts_the_same_architecture_in_another_spelling(tmp_path):
    path = tmp_path / "r.zarr"
    model = FunctionalTanh()
    with TrajectoryRecorder(path, model, architecture=_tanh_arch()) as rec:
        rec.capture()
    spelled = _tanh_arch()
    spelled["widths"] = tuple(spelled["widths"])  # stored as JSON: a tuple is the same list
    with TrajectoryRecorder(path, model, architecture=spelled) as rec:
        rec.capture(step=5)
    assert open_trajectory(path).steps.tolist() == [0, 5]
    other = _tanh_arch()
    other["layers"][0]["activation"] = "relu"
    with pytest.raises(IncompatibleStoreError):
        TrajectoryRecorder(path, model, architecture=other)


def _edit(fn):
    arch = _stacked_arch()
    fn(arch)
    return arch


@pytest.mark.parametrize(
    "arch, match",
    [
        ([3, 5, 2], r"Expected architecture to be a dict .* got list"),
        ({"kind": "cnn"}, r"architecture\['kind'\] to be 'mlp' or 'population', but got 'cnn'"),
        (_edit(lambda a: a.update(runs=0)), r"positive int .*leading run axis.*got 0"),
        (_edit(lambda a: a.update(member=None)), r"one run's MLP description.*got NoneType"),
        (_edit(lambda a: a["member"].update(widths=[3])), r"at least two positive ints.*\[3\]"),
        (_edit(lambda a: a["member"]["layers"].pop()), r"list 2 layers for widths.*got 1 layers"),
        (_edit(lambda a: a["member"]["layers"][0].update(weight="nope")),
         r"weight of layer '0' \('nope'\) among the recorded tensors.*w0 \(4, 5, 3\)"),
        (_edit(lambda a: a.update(runs=3)),
         r"'w0' .*3 -> 5 features\) to have shape \(3, 5, 3\) \(leading run axis.*\(4, 5, 3\)"),
        (_edit(lambda a: a["member"].update(widths=[3, 6, 2])),
         r"'w0' .*shape \(4, 6, 3\).*has shape \(4, 5, 3\)"),
        (_edit(lambda a: a["member"]["layers"][1].update(in_features=7)),
         r"layer 1's in_features to be 5 .*got 7"),
        (_edit(lambda a: a["member"]["layers"][0].update(activation=3)), r"activation.*got 3"),
        (_edit(lambda a: a["member"].update(note=object())), r"plain JSON values"),
    ],
)
def test_inconsistent_architecture_is_a_config_error_before_the_store_exists(tmp_path, arch,
                                                                             match):
    path = tmp_path / "p.zarr"
    with pytest.raises(ConfigError, match=match):
        TrajectoryRecorder(path, Stacked(), architecture=arch)
    assert not path.exists()


def test_probes_are_checked_against_one_run_of_a_population(tmp_path):
    with TrajectoryRecorder(tmp_path / "ok.zarr", Stacked(), architecture=_stacked_arch(),
                            probes=torch.randn(8, 3)) as rec:
        rec.capture()
    assert open_trajectory(tmp_path / "ok.zarr").probes.shape == (8, 3)
    with pytest.raises(ConfigError, match=r"probes of shape \[B, 3\]"):
        TrajectoryRecorder(tmp_path / "bad.zarr", Stacked(), architecture=_stacked_arch(),
                           probes=torch.randn(8, 4))
