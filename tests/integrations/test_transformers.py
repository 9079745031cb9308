"""HyperlapseCallback with a real transformers.Trainer on CPU (a tiny torch MLP, no download)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import hyperlapse
from hyperlapse.errors import ConfigError

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from hyperlapse.integrations.transformers import HyperlapseCallback  # noqa: E402


class TinyMLP(nn.Module):
    """Trainer accepts any module that returns a dict with ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Data(torch.utils.data.Dataset):
    def __init__(self, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(64, 4, generator=g)
        self.y = torch.randint(0, 3, (64,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _trainer(tmp_path, model, callback, data=None, **kwargs) -> transformers.Trainer:
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=0.05,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    options.update(kwargs)
    return transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**options),
        train_dataset=data or Data(),
        callbacks=[callback],
    )


def test_one_snapshot_per_optimizer_step_with_logged_scalars(tmp_path):
    path = tmp_path / "run.zarr"
    model = TinyMLP()
    trainer = _trainer(
        tmp_path,
        model,
        HyperlapseCallback(path, every=2),
        max_steps=4,
        gradient_accumulation_steps=2,
        logging_steps=2,
    )
    trainer.train()

    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 2, 4]  # 4 optimizer steps = 8 micro-batches
    last = traj[len(traj) - 1]
    for name, value in model.state_dict().items():
        assert torch.equal(last[name], value), name
    assert traj.architecture["widths"] == [4, 8, 3]
    loss = traj.metrics["loss"]
    assert np.isnan(loss[0]) and np.isfinite(loss[1:]).all()
    assert np.isfinite(traj.metrics["learning_rate"][1:]).all()


def test_resume_from_checkpoint_replays_into_the_same_store(tmp_path):
    path = tmp_path / "run.zarr"
    _trainer(
        tmp_path,
        TinyMLP(),
        HyperlapseCallback(path, every=1),
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
    ).train()
    part1 = hyperlapse.open_trajectory(path)
    assert part1.steps.tolist() == [0, 1, 2, 3, 4]
    before = [part1[t]["net.0.weight"] for t in range(5)]

    model = TinyMLP()  # other data: the replayed steps 3, 4 differ from part 1's
    trainer = _trainer(
        tmp_path, model, HyperlapseCallback(path, every=1), Data(seed=2), max_steps=6
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 1, 2, 3, 4, 5, 6]
    after = [traj[t]["net.0.weight"] for t in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(after[:3], before[:3], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(after[3:5], before[3:5], strict=True))
    for name, value in model.state_dict().items():
        assert torch.equal(traj[len(traj) - 1][name], value), name


@pytest.mark.parametrize("kwargs", [{"every": -1}, {"schedule": "cubic"}, {"dtype": "int8"}])
def test_bad_config_fails_in_init(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        HyperlapseCallback(tmp_path / "run.zarr", **kwargs)


def test_sharded_training_is_refused(tmp_path):
    callback = HyperlapseCallback(tmp_path / "run.zarr", every=1)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    with pytest.raises(ConfigError, match="shard the parameters"):
        callback.on_train_begin(SimpleNamespace(fsdp="full_shard"), state, None, model=TinyMLP())
    assert not (tmp_path / "run.zarr").exists()


def test_every_logging_steps_follows_the_training_arguments(tmp_path):
    path = tmp_path / "run.zarr"
    trainer = _trainer(
        tmp_path, TinyMLP(), HyperlapseCallback(path, every="logging_steps"), max_steps=6,
        logging_steps=3,
    )
    trainer.train()
    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 3, 6]
    # the end-of-training summary is not a per-snapshot metric
    assert not set(traj.metrics) & {"train_runtime", "total_flos", "train_samples_per_second"}
    assert np.isfinite(traj.metrics["loss"][1:]).all()


def test_every_names_a_training_arguments_field(tmp_path):
    with pytest.raises(ConfigError, match="logging_steps"):
        HyperlapseCallback(tmp_path / "run.zarr", every="logging")
