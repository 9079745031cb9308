"""HyperlapseCallback with a real lightning.Trainer on CPU (a few steps of a tiny MLP)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import hyperlapse
from hyperlapse.errors import ConfigError, HyperlapseWarning, StoreExistsError

L = pytest.importorskip("lightning")
from hyperlapse.integrations.lightning import HyperlapseCallback  # noqa: E402

pytestmark = [
    # Lightning's advice for real runs (num_workers, small log interval) is noise here.
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable.*"),
    # lightning 2.6 on torch 2.13 uses a deprecated torch pytree name.
    pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning"),
]


class TinyModule(L.LightningModule):
    def __init__(
        self, net: nn.Module | None = None, fail_at: int | None = None, data_seed: int = 1
    ) -> None:
        super().__init__()
        self.data_seed = data_seed
        torch.manual_seed(0)
        self.net = (
            net if net is not None else nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        )
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train/acc", (logits.argmax(1) == y).float().mean())  # a name with a slash
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.data_seed)
        x = torch.randn(64, 4, generator=g)
        y = torch.randint(0, 3, (64,), generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _trainer(tmp_path, *callbacks, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        callbacks=list(callbacks),
    )
    options.update(kwargs)
    return L.Trainer(**options)


def _assert_final(traj, module: nn.Module, prefix: str = "") -> None:
    last = traj[len(traj) - 1]
    for name, value in module.state_dict().items():
        assert torch.equal(last[prefix + name], value), name


@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_one_snapshot_per_optimizer_step(tmp_path, accumulate):
    path = tmp_path / "run.zarr"
    model = TinyModule()
    trainer = _trainer(
        tmp_path, HyperlapseCallback(path, every=2), max_steps=5, accumulate_grad_batches=accumulate
    )
    trainer.fit(model)

    assert trainer.global_step == 5
    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 2, 4, 5]  # optimizer steps, not micro-batches
    _assert_final(traj, model.net, prefix="net.")
    assert traj.architecture["widths"] == [4, 8, 3]
    for name in ("train_loss", "train/acc"):
        values = traj.metrics[name]
        assert np.isnan(values[0]) and np.isfinite(values[1:]).all()  # nothing before step 1


def test_scalars_go_with_the_step_that_logged_them(tmp_path):
    # The loss logged at optimizer step k is that of batch k-1 under the weights of snapshot
    # k-1: recompute it from the store.
    path = tmp_path / "run.zarr"
    model = TinyModule()
    _trainer(tmp_path, HyperlapseCallback(path, every=1, module="net"), max_steps=3).fit(model)
    traj = hyperlapse.open_trajectory(path)
    x, y = model.train_dataloader().dataset.tensors
    for k in range(1, 4):
        net = traj.model_at(k - 1, model.net)
        batch = slice(4 * (k - 1), 4 * k)
        expected = nn.functional.cross_entropy(net(x[batch]), y[batch]).item()
        assert traj.metrics["train_loss"][k] == pytest.approx(expected, rel=1e-6)


def test_resume_from_checkpoint_continues_the_store(tmp_path):
    path, ckpt = tmp_path / "run.zarr", tmp_path / "part1.ckpt"
    first = TinyModule()
    trainer = _trainer(tmp_path, HyperlapseCallback(path, every=1), max_steps=3)
    trainer.fit(first)
    trainer.save_checkpoint(ckpt)
    part1 = hyperlapse.open_trajectory(path)
    assert part1.steps.tolist() == [0, 1, 2, 3]

    second = TinyModule()
    callback = HyperlapseCallback(path, every=1)
    _trainer(tmp_path, callback, max_steps=6).fit(second, ckpt_path=ckpt)

    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 1, 2, 3, 4, 5, 6]  # both parts, increasing, no duplicate
    for t in range(4):  # part 1 untouched
        for name, value in part1[t].items():
            assert torch.equal(traj[t][name], value)
    _assert_final(traj, second.net, prefix="net.")
    assert callback.state_dict()["recorder"]["step"] == 6


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_mid_run_checkpoint_replays_steps(tmp_path):
    # Part 1 checkpoints at step 2 and runs on to step 4; resuming from step 2 replays 3 and 4:
    # the store drops part 1's snapshots after step 2 instead of duplicating them.
    path = tmp_path / "run.zarr"

    def trainer(max_steps: int) -> L.Trainer:
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1
        )
        return _trainer(
            tmp_path,
            HyperlapseCallback(path, every=1),
            checkpoint,
            max_steps=max_steps,
            enable_checkpointing=True,
        )

    trainer(4).fit(TinyModule())
    ckpt = next(p for p in (tmp_path / "ckpt").iterdir() if "step=2" in p.name)
    part1 = hyperlapse.open_trajectory(path)
    assert part1.steps.tolist() == [0, 1, 2, 3, 4]
    before = [part1[t]["net.0.weight"] for t in range(5)]

    second = TinyModule(data_seed=2)  # other batches: the replayed steps 3, 4 differ
    trainer(5).fit(second, ckpt_path=ckpt)
    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 1, 2, 3, 4, 5]
    after = [traj[t]["net.0.weight"] for t in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(after[:3], before[:3], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(after[3:5], before[3:5], strict=True))
    _assert_final(traj, second.net, prefix="net.")


def test_fresh_run_on_a_used_store_is_refused_unless_overwritten(tmp_path):
    path = tmp_path / "run.zarr"
    _trainer(tmp_path, HyperlapseCallback(path, every=1), max_steps=2).fit(TinyModule())
    with pytest.raises(StoreExistsError, match="mode='overwrite'"):
        _trainer(tmp_path, HyperlapseCallback(path, every=1), max_steps=2).fit(TinyModule())
    assert hyperlapse.open_trajectory(path).steps.tolist() == [0, 1, 2]  # left untouched
    model = TinyModule()
    callback = HyperlapseCallback(path, every=1, mode="overwrite")  # mode passes through
    _trainer(tmp_path, callback, max_steps=1).fit(model)
    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 1]
    _assert_final(traj, model.net, prefix="net.")


def test_module_option_records_a_submodule(tmp_path):
    path = tmp_path / "run.zarr"
    model = TinyModule()
    _trainer(tmp_path, HyperlapseCallback(path, every=2, module="net"), max_steps=2).fit(model)
    traj = hyperlapse.open_trajectory(path)
    assert sorted(traj.param_names) == sorted(model.net.state_dict())
    _assert_final(traj, model.net)


def test_exception_closes_the_store(tmp_path):
    path = tmp_path / "run.zarr"
    trainer = _trainer(tmp_path, HyperlapseCallback(path, every=1), max_steps=6)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModule(fail_at=3))
    traj = hyperlapse.open_trajectory(path)
    assert traj.steps.tolist() == [0, 1, 2, 3]
    assert traj.attrs["closed"] is True


def test_not_an_mlp_records_and_warns(tmp_path):
    path = tmp_path / "run.zarr"
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    model = TinyModule(net=net)
    with pytest.warns(HyperlapseWarning, match="not an MLP"):
        _trainer(tmp_path, HyperlapseCallback(path, every=2), max_steps=2).fit(model)
    traj = hyperlapse.open_trajectory(path)
    assert traj.architecture is None
    assert "net.1.weight" in traj.param_names  # the LayerNorm is recorded too
    _assert_final(traj, model.net, prefix="net.")


def test_architecture_option_reaches_the_recorder(tmp_path):
    path = tmp_path / "run.zarr"
    model = TinyModule()
    arch = hyperlapse.describe_mlp(model.net)
    for layer in arch["layers"]:  # recorded from the LightningModule: names start with net.
        layer["weight"], layer["bias"] = f"net.{layer['weight']}", f"net.{layer['bias']}"
    arch["layers"][0]["activation"] = "softsign"  # not what inference would find
    _trainer(tmp_path, HyperlapseCallback(path, every=2, architecture=arch), max_steps=2).fit(model)
    assert hyperlapse.open_trajectory(path).architecture["layers"][0]["activation"] == "softsign"


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_sharding_strategies_are_refused_at_setup(tmp_path, strategy):
    cls = getattr(L.pytorch.strategies, strategy)
    fake = object.__new__(cls)  # an instance without running __init__ (no GPU, no deepspeed)
    trainer = SimpleNamespace(strategy=fake)
    callback = HyperlapseCallback(tmp_path / "run.zarr", every=1)
    with pytest.raises(ConfigError, match="shards parameters"):
        callback.setup(trainer, TinyModule(), "fit")
    assert not (tmp_path / "run.zarr").exists()


def test_only_global_rank_zero_records(tmp_path):
    callback = HyperlapseCallback(tmp_path / "run.zarr", every=1)
    trainer = SimpleNamespace(is_global_zero=False, global_step=0, callback_metrics={})
    module = TinyModule()
    callback.on_train_start(trainer, module)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_train_end(trainer, module)
    assert callback.recorder is None
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "positive"),
        ({"every": 2, "schedule": "log"}, "both"),
        ({"schedule": "cubic"}, "unknown name"),
        ({"dtype": "int8"}, "dtype"),
        ({"module": 3}, "attribute path"),
        ({"on_full": "spill"}, "on_full"),
        ({"flush_evry_s": 1.0}, "unknown"),
    ],
)
def test_bad_config_fails_in_init(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HyperlapseCallback(tmp_path / "run.zarr", **kwargs)


def test_path_must_be_a_path():
    with pytest.raises(ConfigError, match="str or os.PathLike"):
        HyperlapseCallback(None)


def test_unknown_submodule_fails_at_setup(tmp_path):
    callback = HyperlapseCallback(tmp_path / "run.zarr", module="encoder")
    trainer = SimpleNamespace(strategy=object())
    with pytest.raises(ConfigError, match="module='encoder'"):
        callback.setup(trainer, TinyModule(), "fit")


def test_every_n_train_steps_is_an_alias_of_every(tmp_path):
    cb = HyperlapseCallback(tmp_path / "run.zarr", every_n_train_steps=3)
    assert cb.config.make_schedule().describe() == {"kind": "every", "n": 3}
    with pytest.raises(ConfigError, match="only one"):
        HyperlapseCallback(tmp_path / "run.zarr", every=2, every_n_train_steps=3)
