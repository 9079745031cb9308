"""Sweep zoos: hyperparameter sweeps of small MLPs, recorded, to forecast a sweep early.

Each sweep zoo is one task (data that ships with scikit-learn or is generated) and a random
search over its hyperparameters: optimizer (SGD with momentum 0.9 or Adam), learning rate
(log-uniform and wide: the sweep holds runs that stall and runs that diverge), width, depth,
batch size, weight decay, initialisation scale and label noise. Every run has the same planned
length (:data:`SWEEP_STEPS` optimizer steps) and logs, at every snapshot (every
:data:`SWEEP_EVERY` steps), its training loss, validation loss and validation metric (accuracy,
or R^2 clipped at -1 for regression). Its label ``final_metric`` is the final metric on a
**test** split that no predictor sees (the validation split is what a sweep user watches).

Tasks (:data:`SWEEP_TASKS`):

* ``sweep-digits``: scikit-learn's 8x8 digits, 10 classes, accuracy.
* ``sweep-cancer``: scikit-learn's breast cancer data, 2 classes, accuracy.
* ``sweep-classes``: a generated 4-class problem (``make_classification``), accuracy.
* ``sweep-friedman``: generated regression (``make_friedman1`` with noise), R^2.

Runs of one (width, depth) train together as a population (:class:`PopulationMLP`, stacked
parameters): every run draws its own minibatches (its batch size is a mask over a shared
maximum), and the optimizer is applied element-wise with each run's own learning rate, weight
decay and optimizer. A run's hyperparameters, initialisation and label noise come from its own
generator; its minibatches come from its population's, so its exact trajectory also depends on
the blocking (``block_size`` is part of the zoo's settings: a resumed build is identical).
A run whose loss or weights become non-finite is *diverged*: its weights stay at the last
finite state, its curves read chance level (accuracy ``1/C``, R^2 ``0``) from then on, and so
does its final metric (a user gets nothing from a diverged run).

Per-run labels: the hyperparameters, ``planned_steps``, ``sweep_metric`` (``"val_metric"``),
``sweep_goal`` (``"max"``), ``final_metric`` (the test metric), ``final_val_metric``,
``diverged_at`` (-1 when not diverged) and ``task``. Curves: ``train_loss``, ``val_loss``,
``val_metric``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingDependencyError
from .builders import ZOOS, ZooSpec
from .population import PopulationMLP, population_recorder, run_generator
from .reader import CURVE_PREFIX

__all__ = ["SWEEP_EVERY", "SWEEP_STEPS", "SWEEP_TASKS", "sweep_hparams"]

#: Planned optimizer steps of every sweep run (``scale`` shortens it for smoke tests).
SWEEP_STEPS = 400
#: A snapshot (and the curves) every this many steps.
SWEEP_EVERY = 10
SWEEP_WIDTHS = (16, 32, 64)
SWEEP_DEPTHS = (1, 2, 3)
SWEEP_BATCHES = (16, 32, 64, 128)
#: log10 learning-rate range per optimizer: wide on purpose (stalling and diverging runs).
SWEEP_LOG_LR = {"sgd": (-3.5, 0.5), "adam": (-4.5, -0.5)}
OPTIMIZERS = ("sgd", "adam")

#: task name -> (loader key, kind, description)
SWEEP_TASKS: dict[str, tuple[str, str]] = {
    "sweep-digits": ("classify", "hyperparameter sweep: digit classifiers (8x8 digits)"),
    "sweep-cancer": ("classify", "hyperparameter sweep: breast-cancer classifiers"),
    "sweep-classes": ("classify", "hyperparameter sweep: generated 4-class problem"),
    "sweep-friedman": ("regress", "hyperparameter sweep: generated regression (Friedman #1)"),
}


def _sklearn_datasets() -> Any:
    try:
        import sklearn.datasets as ds
    except ImportError as exc:  # pragma: no cover - sklearn is in the zoo/test extras
        raise MissingDependencyError(
            "The sweep zoos use data from scikit-learn, which is not installed. Install it "
            "(pip install -e '.[zoo]' in the hyperlapse clone) and try again."
        ) from exc
    return ds


def _task_data(task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ds = _sklearn_datasets()
    if task == "sweep-digits":
        X, y = ds.load_digits(return_X_y=True)
    elif task == "sweep-cancer":
        X, y = ds.load_breast_cancer(return_X_y=True)
    elif task == "sweep-classes":
        X, y = ds.make_classification(
            n_samples=2000, n_features=20, n_informative=8, n_redundant=4, n_classes=4,
            n_clusters_per_class=2, class_sep=1.0, flip_y=0.02, random_state=1000 + seed)
    else:
        X, y = ds.make_friedman1(n_samples=2000, n_features=10, noise=1.0,
                                 random_state=2000 + seed)
        y = (y - y.mean()) / y.std()
    return np.asarray(X, dtype=np.float32), np.asarray(y)


def sweep_split(task: str, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Standardised train (60 %), validation (20 %) and test (20 %) splits of a task."""
    X, y = _task_data(task, seed)
    perm = np.random.default_rng([seed, 5]).permutation(len(X))
    n_tr, n_va = int(0.6 * len(X)), int(0.2 * len(X))
    parts = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    mu, sd = X[parts["train"]].mean(0), X[parts["train"]].std(0)
    sd = np.where(sd < 1e-3, 1.0, sd)  # a pixel constant in training must not blow up elsewhere
    X = (X - mu) / sd
    ydt = np.int64 if SWEEP_TASKS[task][0] == "classify" else np.float32
    return {k: (torch.from_numpy(X[i]), torch.from_numpy(y[i].astype(ydt)))
            for k, i in parts.items()}


def sweep_hparams(seed: int, runs: range) -> dict[str, np.ndarray]:
    """The random-search draw of each run (from the run's own generator)."""
    keys = ("optimizer", "lr", "width", "depth", "batch_size", "weight_decay", "init_scale",
            "label_noise")
    out: dict[str, list[Any]] = {k: [] for k in keys}
    for r in runs:
        g = np.random.default_rng([seed, r, 13])
        opt = OPTIMIZERS[int(g.integers(2))]
        out["optimizer"].append(opt)
        out["lr"].append(float(10 ** g.uniform(*SWEEP_LOG_LR[opt])))
        out["width"].append(int(g.choice(SWEEP_WIDTHS)))
        out["depth"].append(int(g.choice(SWEEP_DEPTHS)))
        out["batch_size"].append(int(g.choice(SWEEP_BATCHES)))
        out["weight_decay"].append(float(10 ** g.uniform(-6, -2)))
        out["init_scale"].append(float(10 ** g.uniform(-0.5, 0.5)))
        out["label_noise"].append(float(g.uniform(0.0, 0.3)))
    return {k: np.asarray(v) for k, v in out.items()}


def _make_block(task: str) -> Any:
    def block(folder: Path, block: int, runs: range, seed: int, shared_init: bool,
              progress: Any, scale: float = 1.0) -> list[dict[str, Any]]:
        return _sweep_block(task, folder, block, runs, seed, shared_init, progress, scale)

    return block


def _sweep_block(task: str, folder: Path, block: int, runs: range, seed: int,
                 shared_init: bool, progress: Any, scale: float) -> list[dict[str, Any]]:
    hp = sweep_hparams(seed, runs)
    data = sweep_split(task, seed)
    steps = SWEEP_STEPS if scale == 1.0 else max(4 * SWEEP_EVERY, round(SWEEP_STEPS * scale))
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(len(runs)):
        groups.setdefault((int(hp["width"][i]), int(hp["depth"][i])), []).append(i)
    out, done = [], 0
    kind = SWEEP_TASKS[task][0]
    n_out = int(data["train"][1].max()) + 1 if kind == "classify" else 1
    for (width, depth), members in sorted(groups.items()):
        name = f"block-{block:04d}-w{width}-d{depth}.zarr"
        sub = {k: v[members] for k, v in hp.items()}
        member_runs = [runs.start + i for i in members]

        def sub_progress(frac: float, n: int = len(members), base: int = done) -> None:
            progress((base + frac * n) / len(runs))

        widths = [int(data["train"][0].shape[1])] + [width] * depth + [n_out]
        labels = _train_sweep_population(
            folder / name, member_runs, sub, data, widths=widths, kind=kind, steps=steps,
            seed=seed, shared_init=shared_init, progress=sub_progress)
        done += len(members)
        out.append({
            "store": name,
            "widths": widths,
            "activations": ["relu"] * depth,
            "runs_in_zoo": member_runs,
            "labels": {**{k: v.tolist() for k, v in sub.items()}, **labels,
                       "task": [task] * len(members)},
        })
    return out


def _metric(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-run accuracy or R^2. Shapes: out ``[R, N, C]``, y ``[N]``; returns ``[R]``."""
    if kind == "classify":
        return (out.argmax(-1) == y).float().mean(1)
    resid = ((out[..., 0] - y) ** 2).mean(1)
    # clipped at -1: a run far worse than predicting the mean is simply bad (and a raw R^2 of
    # -1e5 would dominate any regression on the scores)
    return (1.0 - resid / y.var(unbiased=False).clamp_min(1e-12)).clamp(min=-1.0)


def _loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example loss. Shapes: out ``[R, B, C]``, y ``[R, B]``; returns ``[R, B]``."""
    if kind == "classify":
        R, B, C = out.shape
        return torch.nn.functional.cross_entropy(
            out.reshape(-1, C), y.reshape(-1), reduction="none").reshape(R, B)
    return (out[..., 0] - y) ** 2


def _train_sweep_population(
    path: Path, runs: list[int], hp: dict[str, np.ndarray],
    data: dict[str, tuple[torch.Tensor, torch.Tensor]], *, widths: list[int], kind: str,
    steps: int, seed: int, shared_init: bool, progress: Any,
) -> dict[str, list[Any]]:
    R = len(runs)
    model = PopulationMLP(R, widths, "relu")
    model.init_runs([run_generator(seed, 0 if shared_init else r) for r in runs])
    init_scale = torch.as_tensor(hp["init_scale"], dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(init_scale.view((R,) + (1,) * (p.dim() - 1)))
    x_tr, y_tr = data["train"]
    x_va, y_va = data["val"]
    n = len(x_tr)
    # each run's own noisy training labels (classes flipped / targets swapped at random)
    y_runs = y_tr.expand(R, n).clone()
    for i, r in enumerate(runs):
        g = torch.Generator().manual_seed(int(seed) * 7919 + r)
        flip = torch.rand(n, generator=g) < float(hp["label_noise"][i])
        if kind == "classify":
            y_runs[i, flip] = torch.randint(0, widths[-1], (int(flip.sum()),), generator=g)
        else:
            y_runs[i, flip] = y_tr[torch.randint(0, n, (int(flip.sum()),), generator=g)]
    chance = 1.0 / widths[-1] if kind == "classify" else 0.0
    lr = torch.as_tensor(hp["lr"], dtype=torch.float32)
    wd = torch.as_tensor(hp["weight_decay"], dtype=torch.float32)
    adam = torch.as_tensor([o == "adam" for o in hp["optimizer"]])
    batch = torch.as_tensor(hp["batch_size"], dtype=torch.int64)
    b_max = int(batch.max())
    # run r averages its loss over its first batch_size[r] draws of the shared maximum
    mask = (torch.arange(b_max)[None, :] < batch[:, None]).float() / batch[:, None]
    alive = torch.ones(R, dtype=torch.bool)
    diverged_at = torch.full((R,), -1, dtype=torch.int64)
    params = list(model.parameters())
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for name in ("train_loss", "val_loss", "val_metric"):
        model.register_buffer(f"{CURVE_PREFIX}{name}", torch.zeros(R))

    def shaped(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view((R,) + (1,) * (p.dim() - 1))

    @torch.no_grad()
    def evaluate() -> None:
        tl = _loss(kind, model(x_tr), y_runs).mean(1)
        out_va = model(x_va)
        vl = _loss(kind, out_va, y_va.expand(R, -1)).mean(1)
        vm = _metric(kind, out_va, y_va)
        bad = ~alive | ~torch.isfinite(tl) | ~torch.isfinite(vl)
        # a diverged run reads as what the user gets from it: chance level
        model.curve_train_loss.copy_(torch.where(bad, torch.nan_to_num(tl, 1e6, 1e6), tl)
                                     .clamp(max=1e6))
        model.curve_val_loss.copy_(torch.nan_to_num(vl, 1e6, 1e6).clamp(max=1e6))
        model.curve_val_metric.copy_(torch.where(bad, torch.full_like(vm, chance), vm))

    order = torch.Generator().manual_seed(int(seed) * 31 + runs[0])
    evaluate()
    rec = population_recorder(str(path), model, SWEEP_EVERY, buffers=True, flush_every_s=None)
    with rec:
        rec.capture()
        for step in range(1, steps + 1):
            idx = torch.randint(0, n, (R, b_max), generator=order)
            xb = x_tr[idx]  # [R, B, in]: each run its own minibatch
            yb = torch.gather(y_runs, 1, idx)
            for p in params:
                p.grad = None
            loss = (_loss(kind, model(xb), yb) * mask).sum(1)
            loss.sum().backward()  # each run's gradient is its own loss's
            with torch.no_grad():
                # SGD with momentum 0.9 and Adam (0.9, 0.999), element-wise per run
                new_alive = alive & torch.isfinite(loss)
                updates = []
                for p, (m, v) in zip(params, state, strict=True):
                    g = torch.nan_to_num(p.grad, 0.0, 0.0, 0.0) + shaped(wd, p) * p
                    a = shaped(adam, p)
                    m.copy_(torch.where(a, 0.9 * m + 0.1 * g, 0.9 * m + g))
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    upd = torch.where(
                        a, (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8), m)
                    updates.append(upd)
                    new = p - shaped(lr * new_alive, p) * upd
                    new_alive &= torch.isfinite(new).flatten(1).all(1)
                for p, upd in zip(params, updates, strict=True):
                    # a run that is non-finite in any layer keeps its weights in all of them
                    p.copy_(torch.where(shaped(new_alive, p), p - shaped(lr, p) * upd, p))
                died = alive & ~new_alive
                diverged_at[died] = step
                alive = new_alive
            if step % SWEEP_EVERY == 0 or step == steps:
                evaluate()
            rec.step()
            if step % 50 == 0:
                progress(step / steps)
    with torch.no_grad():
        x_te, y_te = data["test"]
        test = _metric(kind, model(x_te), y_te)
        test = torch.where(alive & torch.isfinite(test), test, torch.full_like(test, chance))
        val = model.curve_val_metric.clone()
    progress(1.0)
    return {"final_metric": test.tolist(), "final_val_metric": val.tolist(),
            "diverged_at": diverged_at.tolist(), "planned_steps": [steps] * R,
            "sweep_metric": ["val_metric"] * R, "sweep_goal": ["max"] * R}


SWEEP_ZOOS: dict[str, ZooSpec] = {
    name: ZooSpec(name, desc, None, 300, 100, _make_block(name))
    for name, (_, desc) in SWEEP_TASKS.items()
}
ZOOS.update(SWEEP_ZOOS)
