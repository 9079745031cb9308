"""Zoo builders: populations of small MLPs trained together and recorded by the recorder.

:func:`build_zoo` trains a zoo block by block (a block is a range of run indices; one or more
population stores per block) and records every block through
:class:`~hyperlapse.TrajectoryRecorder`. The manifest ``zoo.json`` marks a block done only
after its stores are closed and labelled, so a killed build resumes at the first unfinished
block (its partial stores are removed and the block trained again from its seeds: nothing is
duplicated, and every run's result does not depend on the blocking).

Zoos (all from data that ships with scikit-learn or is generated):

* ``digits-inr``: one INR per 8x8 image of scikit-learn's digits (2-32-32-1, ``sin(30 x)``
  then ``tanh``), coordinates in [-1, 1]^2 -> intensity in [0, 1], 400 Adam steps, a snapshot
  every 20 steps; labels ``digit``, ``image``, ``psnr``.
* ``sines``: 1-32-32-1 tanh MLPs fitted to ``a sin(f x + p)`` on 64 points of [-pi, pi];
  labels ``a``, ``f``, ``p``, ``psnr``.
* ``digits-generalisation``: digit classifiers (ReLU, random width, depth, learning rate,
  weight decay, label noise, epochs; SGD with momentum, minibatch 64), a snapshot every epoch;
  per-run curves ``loss``, ``train_acc``, ``val_acc``; label ``test_acc`` (final accuracy on a
  held-out test split) and the hyperparameters.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ..errors import ConfigError, MissingDependencyError, NotAStoreError
from ..outputs import check_output_dir
from ..progress import Progress
from .population import PopulationMLP, population_recorder, run_generator
from .reader import CURVE_PREFIX, MANIFEST, ZOO_FORMAT, ZOO_VERSION, Zoo, read_manifest

__all__ = ["ZOOS", "ZooSpec", "build_zoo"]

ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class ZooSpec:
    """How to build one zoo: its size, block size and the function that trains a block."""

    name: str
    description: str
    max_runs: int | None
    default_runs: int
    block_size: int
    train_block: Callable[..., list[dict[str, Any]]]


# -- shared helpers -----------------------------------------------------------------------------
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is in the test extra
        raise MissingDependencyError(
            "The digits zoos use scikit-learn's bundled digits data, but scikit-learn is not "
            "installed. Install it (pip install -e '.[zoo]' in the hyperlapse clone) and try again."
        ) from exc
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y.astype(np.int64)


def _generators(seed: int, runs: range, shared_init: bool) -> list[torch.Generator]:
    # shared init: every run starts from the weights of run 0's generator
    return [run_generator(seed, 0 if shared_init else r) for r in runs]


def _scaled(n: int, scale: float, least: int = 20) -> int:
    """A training length times ``scale`` (shorter builds for smoke tests), at least ``least``."""
    return n if scale == 1.0 else max(least, round(n * scale))


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of targets in [0, 1]."""
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _finish_store(path: Path, info: dict[str, Any]) -> None:
    """Write the per-run architecture and labels into the closed population store's attrs."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    group.attrs.update({"population": info})


def _fit_regression_population(
    path: Path,
    runs: range,
    *,
    seed: int,
    shared_init: bool,
    widths: list[int],
    activations: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    every: int,
    lr: float,
    progress: ProgressFn,
) -> torch.Tensor:
    """Fit ``len(runs)`` MLPs to ``targets[r]`` at inputs ``x`` with Adam; record; PSNR per run.

    Shapes:
        x: ``[P, in]`` shared by all runs; targets: ``[R, P, out]``; returns ``[R]``.
    """
    model = PopulationMLP(len(runs), widths, activations)
    model.init_runs(_generators(seed, runs, shared_init))
    model.register_buffer(f"{CURVE_PREFIX}loss", torch.zeros(len(runs)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = getattr(model, f"{CURVE_PREFIX}loss")

    def mse() -> torch.Tensor:
        return ((model(x) - targets) ** 2).mean(dim=(1, 2))

    step_box = [0]

    @torch.no_grad()
    def after_step(*_: Any) -> None:  # runs before the recorder's hook: the snapshot's loss
        if step_box[0] % every == 0 or step_box[0] == steps:
            curve.copy_(mse())

    after_step()
    hook = opt.register_step_post_hook(after_step)
    rec = population_recorder(str(path), model, every, buffers=True, flush_every_s=None)
    with rec:
        rec.attach(opt)
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            mse().sum().backward()  # each run's gradient is its own loss's
            step_box[0] = step
            opt.step()
            if step % 20 == 0:
                progress(step / steps)
    hook.remove()
    with torch.no_grad():
        return _psnr(mse())


# -- digits-inr ---------------------------------------------------------------------------------
INR_WIDTHS = [2, 32, 32, 1]
INR_ACTIVATIONS = ["sine(30)", "tanh"]
INR_STEPS, INR_EVERY, INR_LR = 400, 20, 1e-3


def _digits_inr_block(
    folder: Path, block: int, runs: range, seed: int, shared_init: bool, progress: ProgressFn,
    scale: float = 1.0,
) -> list[dict[str, Any]]:
    X, y = _sklearn_digits()
    grid = torch.linspace(-1, 1, 8)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(64, 2)
    targets = torch.from_numpy(X[runs.start : runs.stop] / 16.0).unsqueeze(-1)
    name = f"block-{block:04d}.zarr"
    psnr = _fit_regression_population(
        folder / name, runs, seed=seed, shared_init=shared_init, widths=INR_WIDTHS,
        activations=INR_ACTIVATIONS, x=coords, targets=targets, steps=_scaled(INR_STEPS, scale),
        every=INR_EVERY, lr=INR_LR, progress=progress,
    )
    return [{
        "store": name,
        "widths": INR_WIDTHS,
        "activations": INR_ACTIVATIONS,
        "labels": {
            "digit": y[runs.start : runs.stop].tolist(),
            "image": list(runs),
            "psnr": psnr.tolist(),
        },
    }]


# -- sines --------------------------------------------------------------------------------------
SINE_WIDTHS = [1, 32, 32, 1]
SINE_ACTIVATIONS = ["tanh", "tanh"]
SINE_STEPS, SINE_EVERY, SINE_LR = 400, 20, 1e-2
SINE_RANGES = {"a": (0.5, 2.0), "f": (0.5, 2.0), "p": (0.0, math.pi)}


def sine_labels(seed: int, runs: range) -> dict[str, np.ndarray]:
    """Amplitude, frequency and phase of each run (from the run's own generator)."""
    out: dict[str, list[float]] = {k: [] for k in SINE_RANGES}
    for r in runs:
        g = np.random.default_rng([seed, r, 7])
        for k, (lo, hi) in SINE_RANGES.items():
            out[k].append(float(g.uniform(lo, hi)))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _sines_block(
    folder: Path, block: int, runs: range, seed: int, shared_init: bool, progress: ProgressFn,
    scale: float = 1.0,
) -> list[dict[str, Any]]:
    labels = sine_labels(seed, runs)
    x = torch.linspace(-math.pi, math.pi, 64).unsqueeze(-1)
    a, f, p = (torch.tensor(labels[k], dtype=torch.float32)[:, None] for k in ("a", "f", "p"))
    # targets scaled to [0, 1] so that the PSNR is comparable with the INRs'
    y = (a * torch.sin(f * x.T + p) + 2.0) / 4.0
    name = f"block-{block:04d}.zarr"
    psnr = _fit_regression_population(
        folder / name, runs, seed=seed, shared_init=shared_init, widths=SINE_WIDTHS,
        activations=SINE_ACTIVATIONS, x=x / math.pi, targets=y.unsqueeze(-1),
        steps=_scaled(SINE_STEPS, scale), every=SINE_EVERY, lr=SINE_LR, progress=progress,
    )
    return [{
        "store": name,
        "widths": SINE_WIDTHS,
        "activations": SINE_ACTIVATIONS,
        "labels": {**{k: v.tolist() for k, v in labels.items()}, "psnr": psnr.tolist()},
    }]


# -- digits-generalisation ----------------------------------------------------------------------
GEN_WIDTHS = (16, 32, 64)
GEN_DEPTHS = (1, 2, 3)
GEN_BATCH = 64


def generalisation_hparams(seed: int, runs: range) -> dict[str, np.ndarray]:
    """Width, depth (hidden layers), lr, weight decay, label noise and epochs of each run."""
    keys = ("width", "depth", "lr", "weight_decay", "label_noise", "epochs")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for r in runs:
        g = np.random.default_rng([seed, r, 11])
        out["width"].append(int(g.choice(GEN_WIDTHS)))
        out["depth"].append(int(g.choice(GEN_DEPTHS)))
        out["lr"].append(float(10 ** g.uniform(-3, -0.5)))
        out["weight_decay"].append(float(10 ** g.uniform(-6, -2)))
        out["label_noise"].append(float(g.uniform(0.0, 0.5)))
        out["epochs"].append(int(g.integers(5, 31)))
    return {k: np.asarray(v) for k, v in out.items()}


def _digits_split(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    X, y = _sklearn_digits()
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    perm = np.random.default_rng([seed, 3]).permutation(len(X))
    n_tr, n_va = int(0.6 * len(X)), int(0.2 * len(X))
    parts = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    return {k: (torch.from_numpy(X[i]), torch.from_numpy(y[i])) for k, i in parts.items()}


def _digits_generalisation_block(
    folder: Path, block: int, runs: range, seed: int, shared_init: bool, progress: ProgressFn,
    scale: float = 1.0,
) -> list[dict[str, Any]]:
    hp = generalisation_hparams(seed, runs)
    hp["epochs"] = np.asarray([_scaled(int(e), scale, 2) for e in hp["epochs"]])
    data = _digits_split(seed)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(len(runs)):
        groups.setdefault((int(hp["width"][i]), int(hp["depth"][i])), []).append(i)
    out, done = [], 0
    for (width, depth), members in sorted(groups.items()):
        name = f"block-{block:04d}-w{width}-d{depth}.zarr"
        sub = {k: v[members] for k, v in hp.items()}
        member_runs = [runs.start + i for i in members]

        def sub_progress(frac: float, n: int = len(members), base: int = done) -> None:  # noqa: B008
            progress((base + frac * n) / len(runs))

        labels, last_step = _train_classifiers(
            folder / name, member_runs, sub, data, width=width, depth=depth, seed=seed,
            shared_init=shared_init, progress=sub_progress,
        )
        done += len(members)
        out.append({
            "store": name,
            "widths": [64] + [width] * depth + [10],
            "activations": ["relu"] * depth,
            "runs_in_zoo": member_runs,
            "last_step": last_step,
            "labels": {**{k: v.tolist() for k, v in sub.items()}, **labels},
        })
    return out


def _train_classifiers(
    path: Path,
    runs: list[int],
    hp: dict[str, np.ndarray],
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    width: int,
    depth: int,
    seed: int,
    shared_init: bool,
    progress: ProgressFn,
) -> tuple[dict[str, list[float]], list[int]]:
    R = len(runs)
    widths = [64] + [width] * depth + [10]
    model = PopulationMLP(R, widths, "relu")
    model.init_runs([run_generator(seed, 0 if shared_init else r) for r in runs])
    x_tr, y_tr = data["train"]
    n = len(x_tr)
    # each run's own noisy training labels
    y_runs = y_tr.expand(R, n).clone()
    for i, r in enumerate(runs):
        g = torch.Generator().manual_seed(int(seed) * 7919 + r)
        flip = torch.rand(n, generator=g) < float(hp["label_noise"][i])
        y_runs[i, flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    spe = math.ceil(n / GEN_BATCH)
    end = torch.as_tensor(hp["epochs"], dtype=torch.int64) * spe  # each run's last step
    steps = int(end.max())
    lr = torch.as_tensor(hp["lr"], dtype=torch.float32)
    wd = torch.as_tensor(hp["weight_decay"], dtype=torch.float32)
    base_lr = 0.1
    params = list(model.parameters())
    # SGD is linear in the gradient: scaling run r's gradient by lr_r / base_lr is SGD at lr_r
    opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9)
    for name in ("loss", "train_acc", "val_acc"):
        model.register_buffer(f"{CURVE_PREFIX}{name}", torch.zeros(R))

    @torch.no_grad()
    def evaluate() -> None:
        logits = model(x_tr)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, 10), y_runs.reshape(-1), reduction="none"
        ).reshape(R, n)
        x_va, y_va = data["val"]
        curves = {
            "loss": loss.mean(1),
            "train_acc": (logits.argmax(-1) == y_runs).float().mean(1),
            "val_acc": (model(x_va).argmax(-1) == y_va).float().mean(1),
        }
        for key, value in curves.items():
            getattr(model, f"{CURVE_PREFIX}{key}").copy_(value)

    step_box = [0]

    def after_step(*_: Any) -> None:  # runs before the recorder's hook: curves of this snapshot
        if step_box[0] % spe == 0:
            evaluate()

    evaluate()
    hook = opt.register_step_post_hook(after_step)
    order = torch.Generator().manual_seed(int(seed) * 31 + runs[0])
    rec = population_recorder(str(path), model, spe, buffers=True, flush_every_s=None)
    with rec:
        rec.attach(opt)
        for epoch in range(math.ceil(steps / spe)):
            perm = torch.randperm(n, generator=order)
            for b in range(spe):
                step = epoch * spe + b + 1
                if step > steps:
                    break
                idx = perm[b * GEN_BATCH : (b + 1) * GEN_BATCH]
                active = (step <= end).float()
                opt.zero_grad(set_to_none=True)
                logits = model(x_tr[idx])
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, 10), y_runs[:, idx].reshape(-1), reduction="none"
                ).reshape(R, -1).mean(1)
                loss.sum().backward()
                with torch.no_grad():
                    scale = active * lr / base_lr
                    for p in params:
                        shape = (R,) + (1,) * (p.dim() - 1)
                        p.grad.add_(wd.view(shape) * p).mul_(scale.view(shape))
                        buf = opt.state.get(p, {}).get("momentum_buffer")
                        if buf is not None:  # a finished run keeps its weights
                            buf.mul_(active.view(shape))
                step_box[0] = step
                opt.step()
            progress(min((epoch + 1) * spe / steps, 1.0))
    hook.remove()
    with torch.no_grad():
        x_te, y_te = data["test"]
        test_acc = (model(x_te).argmax(-1) == y_te).float().mean(1)
        val_acc = getattr(model, f"{CURVE_PREFIX}val_acc").clone()
    return {"test_acc": test_acc.tolist(), "final_val_acc": val_acc.tolist()}, end.tolist()


ZOOS: dict[str, ZooSpec] = {
    "digits-inr": ZooSpec(
        "digits-inr", "one INR per 8x8 digit image (label: the digit)", 1797, 1797, 128,
        _digits_inr_block,
    ),
    "sines": ZooSpec(
        "sines", "MLPs fitted to a*sin(f*x+p) (labels: a, f, p)", None, 1000, 500, _sines_block
    ),
    "digits-generalisation": ZooSpec(
        "digits-generalisation",
        "digit classifiers with random hyperparameters (label: final test accuracy)",
        None, 300, 150, _digits_generalisation_block,
    ),
}


# -- the build ----------------------------------------------------------------------------------
def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)  # atomic: a kill leaves the old or the new manifest


def build_zoo(
    name: str,
    out: str | os.PathLike,
    *,
    runs: int | None = None,
    seed: int = 0,
    shared_init: bool = False,
    block_size: int | None = None,
    quiet: bool = False,
    threads: int | None = 1,
    scale: float = 1.0,
) -> Zoo:
    """Build (or finish building) zoo ``name`` in folder ``out``.

    Args:
        name: one of :data:`ZOOS` (``digits-inr``, ``sines``, ``digits-generalisation``).
        out: the zoo folder (created; an existing build of the same settings is resumed).
        runs: number of runs (default: the zoo's default; digits-inr: all 1,797 images).
        seed: seed of the initialisations, labels and hyperparameters.
        shared_init: start every run from one initialisation (the easy reference protocol).
        block_size: runs trained together per block (the unit of resumption).
        quiet: no progress bar.
        scale: training length relative to the zoo's default (< 1: a quick build for
            smoke tests; it is part of the zoo's settings).
        threads: torch threads while training (``None``: leave as is). The default 1 is
            measured: a population's matmuls are small, and on a busy 2-core machine two
            threads made a step 10x slower (benchmarks/weights_as_data.py).

    Returns:
        The finished :class:`~hyperlapse.zoo.Zoo`.

    Raises:
        ConfigError: unknown zoo, bad ``runs``, or ``out`` holds a zoo built with other settings.
        NotAStoreError: ``out`` holds something that is not a zoo.
        OutputError: ``out`` is a file, or a folder that cannot be created or written
            (checked before anything is trained).
    """
    if name not in ZOOS:
        raise ConfigError(f"Expected a zoo name in {sorted(ZOOS)}, but got {name!r}.")
    spec = ZOOS[name]
    runs = spec.default_runs if runs is None else runs
    if not isinstance(runs, int) or runs < 1 or (spec.max_runs and runs > spec.max_runs):
        limit = f"1..{spec.max_runs}" if spec.max_runs else ">= 1"
        raise ConfigError(f"Expected runs in {limit} for zoo '{name}', but got {runs!r}.")
    block_size = block_size or spec.block_size
    # a file, a read-only or an impossible folder: said now, not after the first block trained
    folder = check_output_dir(out, kind="the zoo folder (--out)", create=False)
    config = {"name": name, "runs": runs, "seed": int(seed), "shared_init": bool(shared_init),
              "block_size": int(block_size)}
    if scale != 1.0:
        if not 0 < scale <= 1:
            raise ConfigError(f"Expected scale in (0, 1], but got {scale!r}.")
        config["scale"] = float(scale)
    manifest = read_manifest(folder) if folder.exists() else None
    if manifest is None:
        if folder.exists() and any(folder.iterdir()):
            raise NotAStoreError(
                f"Expected an empty folder or a zoo at '{folder}', but it holds other files "
                f"(e.g. {sorted(p.name for p in folder.iterdir())[:3]}) and no {MANIFEST}. "
                f"hyperlapse does not touch them; choose another --out."
            )
        folder.mkdir(parents=True, exist_ok=True)
        n_blocks = math.ceil(runs / block_size)
        manifest = {"format": ZOO_FORMAT, "version": ZOO_VERSION, "name": name,
                    "description": spec.description, "config": config, "n_blocks": n_blocks,
                    "blocks": []}
        _write_manifest(folder, manifest)
    elif manifest.get("config") != config:
        old = manifest.get("config", {})
        diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        raise ConfigError(
            f"The folder '{folder}' holds a zoo built with other settings (stored vs asked: "
            f"{diff}). Pass the same settings to resume that build, or choose another --out."
        )
    with _torch_threads(threads):
        return _build(spec, folder, manifest, runs, seed, shared_init, block_size, quiet, scale)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _build(
    spec: ZooSpec,
    folder: Path,
    manifest: dict[str, Any],
    runs: int,
    seed: int,
    shared_init: bool,
    block_size: int,
    quiet: bool,
    scale: float,
) -> Zoo:
    name = spec.name
    blocks = {b["block"]: b for b in manifest["blocks"]}
    done_runs = sum(b["runs"][1] - b["runs"][0] for b in blocks.values() if b["done"])
    bar = Progress(total=runs, desc=f"zoo {name}", unit="runs", start=done_runs,
                   enabled=not quiet)
    for block in range(manifest["n_blocks"]):
        entry = blocks.get(block)
        if entry is not None and entry["done"]:
            continue
        lo, hi = block * block_size, min((block + 1) * block_size, runs)
        # a killed attempt: drop its partial stores, train the block again from its seeds
        for stale in folder.glob(f"block-{block:04d}*.zarr"):
            shutil.rmtree(stale)
        base = sum(b["runs"][1] - b["runs"][0] for b in blocks.values() if b["done"])
        stores = spec.train_block(
            folder, block, range(lo, hi), int(seed), bool(shared_init),
            lambda frac, base=base, n=hi - lo: bar.update(base + frac * n), scale,
        )
        for s in stores:
            members = s.get("runs_in_zoo")
            info = {
                "zoo": name,
                "runs": len(members) if members else hi - lo,
                "first_run": lo,
                "run_index": members or list(range(lo, hi)),
                "architecture": PopulationMLP(1, s["widths"], s["activations"]).architecture(),
                "activations": s["activations"],
                "labels": s["labels"],
                "last_step": s.get("last_step"),
            }
            _finish_store(folder / s["store"], info)
        blocks[block] = {"block": block, "runs": [lo, hi], "done": True,
                         "stores": [s["store"] for s in stores]}
        manifest["blocks"] = [blocks[b] for b in sorted(blocks)]
        _write_manifest(folder, manifest)
        bar.update(base + hi - lo)
    bar.close()
    return Zoo(folder)
