"""TrajectoryRecorder: schedules, metrics, resume, back-pressure, errors, wrappers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import hyperlapse.record.recorder as recorder_module
from hyperlapse import TrajectoryRecorder, describe_mlp, open_trajectory
from hyperlapse.errors import (
    ConfigError,
    HyperlapseWarning,
    IncompatibleStoreError,
    MissingDependencyError,
    NotAStoreError,
    StoreError,
    WriterError,
)
from hyperlapse.record.schedule import Every, LogSpaced, make_schedule
from hyperlapse.store.writer import StoreWriter


def _mlp(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _train(model: nn.Module, rec: TrajectoryRecorder | None, steps: int, log: bool = True):
    """SGD steps on random data; returns the state after each step, keyed by step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if rec is not None:
        rec.attach(opt)
    states = {0: {k: v.clone() for k, v in model.state_dict().items()}}
    for i in range(1, steps + 1):
        opt.zero_grad()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        if rec is not None and log:
            rec.log(loss=loss.detach(), i=i)
        states[i] = {k: v.clone() for k, v in model.state_dict().items()}
    return opt, states


def _assert_matches(traj, states) -> None:
    for t, step in enumerate(traj.steps.tolist()):
        got = traj[t]
        for name, want in states[step].items():
            assert torch.equal(got[name], want), (t, step, name)


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


# -- schedules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "steps", "expected"),
    [
        ({"every": 4}, 10, [0, 4, 8, 10]),
        ({"every": 5}, 10, [0, 5, 10]),  # the final state is not stored twice
        ({}, 3, [0, 1, 2, 3]),
        # after 20 dense steps: the first step >= 10 ** (b / 20) for b = 27, 28, ...
        ({"schedule": "log"}, 60, [*range(21), 23, 26, 29, 32, 36, 40, 45, 51, 57, 60]),
        ({"schedule": lambda s: s in (2, 3, 7)}, 9, [0, 2, 3, 7, 9]),
    ],
)
def test_schedules(kwargs, steps, expected, tmp_path) -> None:
    model = _mlp()
    with TrajectoryRecorder(tmp_path / "r.zarr", model, **kwargs) as rec:
        _, states = _train(model, rec, steps)
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.steps.tolist() == expected
    _assert_matches(traj, states)


def test_log_schedule_is_sparse_late() -> None:
    s = LogSpaced()
    n = sum(s(t) for t in range(1, 100_001))
    assert 20 * 4 <= n <= 20 * 5 + 1  # 20 dense steps, then 20 per decade over 10^1.3..10^5
    assert make_schedule(every=3) == Every(3)


def test_metrics_go_with_the_current_or_next_snapshot(tmp_path) -> None:
    model = _mlp()
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=3, flush_every_s=60) as rec:
        rec.log(before=1.0)  # before training: goes with the initial snapshot
        _, _ = _train(model, rec, 7)
        rec.log(after=5)  # no snapshot at step 7 yet: goes with the final one
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.steps.tolist() == [0, 3, 6, 7]
    np.testing.assert_array_equal(traj.metrics["i"], [np.nan, 3, 6, 7])
    np.testing.assert_array_equal(traj.metrics["before"], [1.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(traj.metrics["after"], [np.nan, np.nan, np.nan, 5])
    assert traj.metrics["loss"].dtype == np.float64 and np.isfinite(traj.metrics["loss"][1:]).all()


def test_resume_from_state_dict(tmp_path) -> None:
    path = tmp_path / "r.zarr"
    model = _mlp()
    rec = TrajectoryRecorder(path, model, every=2, snapshots_per_chunk=4)
    opt, states = _train(model, rec, 6)
    checkpoint = (
        {k: v.clone() for k, v in model.state_dict().items()},
        opt.state_dict(),
        rec.state_dict(),
    )
    for _ in range(3):  # the run goes on past the checkpoint, then crashes
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    rec.close()
    assert open_trajectory(path).steps.tolist() == [0, 2, 4, 6, 8, 9]

    # resume from the checkpoint at step 6: snapshots after step 6 belong to the lost timeline
    model2 = _mlp(seed=1)
    model2.load_state_dict(checkpoint[0])
    with TrajectoryRecorder(path, model2, every=2, snapshots_per_chunk=4) as rec2:
        rec2.load_state_dict(checkpoint[2])
        assert rec2.current_step == 6
        assert open_trajectory(path).steps.tolist() == [0, 2, 4, 6]
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.05)
        opt2.load_state_dict(checkpoint[1])
        rec2.attach(opt2)  # does not capture an "initial" state again
        resumed = {}
        for i in range(7, 11):
            opt2.zero_grad()
            model2(torch.randn(8, 4)).pow(2).mean().backward()
            opt2.step()
            resumed[i] = {k: v.clone() for k, v in model2.state_dict().items()}
    traj = open_trajectory(path)
    assert traj.steps.tolist() == [0, 2, 4, 6, 8, 10]
    _assert_matches(traj, {**{s: states[s] for s in (0, 2, 4, 6)}, **resumed})
    with pytest.raises(ConfigError, match="state dict"):
        TrajectoryRecorder(tmp_path / "o.zarr", model2).load_state_dict({"step": 3})


# -- back-pressure -----------------------------------------------------------------------------
_GATE_S = 10.0  # a writer held at the gate waits this long at most


@pytest.fixture
def slow_writer(monkeypatch):
    """Each append takes >= 20 ms; with ``gate``, appends wait until the gate opens instead
    (at most 10 s), so "did not wait" needs no timing assumption on a busy machine."""
    original = StoreWriter.append
    gate = threading.Event()
    gate.used = False

    def slow_append(self, *args, **kwargs):
        if gate.used:
            gate.wait(_GATE_S)
        else:
            time.sleep(0.02)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "append", slow_append)
    return gate


@pytest.mark.parametrize("on_full", ["block", "drop"])
def test_block_vs_drop_under_a_slow_writer(on_full, slow_writer, tmp_path) -> None:
    model = _mlp()
    captures = 40
    slow_writer.used = on_full == "drop"  # a blocking capture would wait for the gate
    with TrajectoryRecorder(tmp_path / "r.zarr", model, on_full=on_full, queue_size=2,
                            writes="background") as rec:  # the pool's back-pressure
        t0 = time.perf_counter()
        for step in range(captures):
            with torch.no_grad():
                model[0].bias.fill_(step)
            rec.capture(step=step)
        elapsed = time.perf_counter() - t0
        slow_writer.set()
    traj = open_trajectory(tmp_path / "r.zarr")
    dropped = traj.attrs["dropped"]
    # every capture was either stored or counted; close() stores the final state even when
    # the last scheduled capture was dropped
    assert captures <= len(traj) + dropped <= captures + 1
    for t, step in enumerate(traj.steps.tolist()):  # what was kept is the right snapshot
        assert traj[t]["0.bias"].eq(step).all()
    if on_full == "block":
        assert dropped == 0 and elapsed > 0.02 * (captures - 3)
    else:
        # the writer was held at the gate all along: blocking would have taken >= 10 s
        assert dropped >= captures - 3 and elapsed < _GATE_S / 2
        assert traj.steps[0] == 0 and traj.steps[-1] == captures - 1  # first and last kept


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "positive"),
        ({"every": -3}, "positive"),
        ({"schedule": "sometimes"}, "unknown name"),
        ({"schedule": 2.5}, "callable"),
        ({"every": 2, "schedule": "log"}, "both"),
        ({"dtype": "int8"}, "dtype"),
        ({"on_full": "wait"}, "on_full"),
        ({"flush_every_s": 0}, "flush_every_s"),
        ({"snapshots_per_chunk": 0}, "snapshots_per_chunk"),
        ({"report": object()}, "on_snapshot"),
    ],
)
def test_config_errors(kwargs, match, tmp_path) -> None:
    with pytest.raises(ConfigError, match=match):
        TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), **kwargs)
    assert not (tmp_path / "r.zarr").exists()  # validated before touching the disk


def test_parent_directories_are_created(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "c" / "r.zarr"
    TrajectoryRecorder(path, _mlp()).close()
    assert len(open_trajectory(path)) == 1


@pytest.mark.parametrize("kind", ["folder", "file", "zarr_group"])
def test_not_a_store_is_left_untouched(kind, tmp_path) -> None:
    path = tmp_path / "data.zarr"
    if kind == "folder":
        path.mkdir()
        (path / "important.csv").write_text("a,b\n1,2\n")
    elif kind == "file":
        path.write_text("not a folder")
    else:
        zarr.create_array(path, name="x", shape=(3,), dtype="int8")
    before = _tree_digest(path) if path.is_dir() else path.read_bytes()
    with pytest.raises(NotAStoreError, match="hyperlapse"):
        TrajectoryRecorder(path, _mlp())
    assert (_tree_digest(path) if path.is_dir() else path.read_bytes()) == before


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (lambda: _mlp(hidden=9), "parameters"),
        (lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), "architecture"),
        ("float16", "parameters"),
    ],
)
def test_resume_with_another_model_is_refused(other, match, tmp_path) -> None:
    path = tmp_path / "r.zarr"
    model = _mlp()
    with TrajectoryRecorder(path, model) as rec:
        _train(model, rec, 3)
    before = _tree_digest(path)
    with pytest.raises(IncompatibleStoreError, match=match):
        if other == "float16":
            TrajectoryRecorder(path, _mlp(), dtype="float16")
        else:
            TrajectoryRecorder(path, other())
    assert _tree_digest(path) == before


def test_unwritable_location(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="writable"):
        TrajectoryRecorder(blocker / "r.zarr", _mlp())  # parent is a file

    def deny(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", deny)  # a read-only location (we run as root here)
    with pytest.raises(StoreError, match="Permission denied"):
        TrajectoryRecorder(tmp_path / "ro" / "r.zarr", _mlp())


def test_url_protocols(tmp_path) -> None:
    url = f"memory://hyperlapse-{uuid.uuid4().hex}/r.zarr"
    model = _mlp()
    with TrajectoryRecorder(url, model, every=2) as rec:
        _, states = _train(model, rec, 4)
    _assert_matches(open_trajectory(url), states)
    with pytest.raises(StoreError, match="protocol"):
        TrajectoryRecorder("nosuchproto://bucket/r.zarr", _mlp())


def test_missing_fsspec_backend_names_the_package(monkeypatch) -> None:
    from fsspec.registry import known_implementations

    impl = known_implementations.get("gcs")
    if impl is None:
        pytest.skip("this fsspec does not know gs://")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match="pip install gcsfs"):
        TrajectoryRecorder("gs://some-bucket/r.zarr", _mlp())


def test_writer_failure_is_raised_on_the_training_thread(tmp_path, monkeypatch) -> None:
    def broken_flush(self):
        if self.pending:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "flush", broken_flush)
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model, snapshots_per_chunk=2)
    deadline = time.monotonic() + 60  # the writer may be slow to run on a busy machine
    with pytest.raises(WriterError, match="No space left") as info:
        step = 0
        while time.monotonic() < deadline:
            rec.capture(step=step)
            step += 1
            time.sleep(0.002)
    assert isinstance(info.value.__cause__, OSError)
    rec.close()  # already reported: close does not raise it again


def test_writer_failure_at_close(tmp_path, monkeypatch) -> None:
    def failing_close(self, **kwargs):
        raise OSError("disk")

    monkeypatch.setattr(StoreWriter, "close", failing_close)
    rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp())
    with pytest.raises(WriterError, match="disk") as info:
        rec.close()
    assert isinstance(info.value.__cause__, OSError)


def test_nonfinite_weights_are_recorded_counted_and_warned_once(tmp_path) -> None:
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model)
    rec.capture(step=0)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[2].bias[1] = float("inf")
    with pytest.warns(HyperlapseWarning, match="NaN or infinite") as record:
        for step in range(1, 5):
            rec.capture(step=step)
            time.sleep(0.01)
        rec.close()
    assert len(record) == 1
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.attrs["nonfinite"] == 4
    assert torch.isnan(traj[2]["0.weight"][0, 0]) and torch.isinf(traj[2]["2.bias"][1])


def test_non_mlp_is_recorded_with_a_warning(tmp_path) -> None:
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(HyperlapseWarning, match="not an MLP"):
        rec = TrajectoryRecorder(tmp_path / "r.zarr", model)
    rec.close()
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.architecture is None
    assert torch.equal(traj[0]["0.weight"], model[0].weight)


def test_exception_in_with_block_loses_nothing(tmp_path) -> None:
    model = _mlp()
    with pytest.raises(KeyError), TrajectoryRecorder(tmp_path / "r.zarr", model, every=1) as rec:
        _, states = _train(model, rec, 5)
        raise KeyError("boom")
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.steps.tolist() == [0, 1, 2, 3, 4, 5] and traj.attrs["closed"]
    _assert_matches(traj, states)


def test_interpreter_exit_flushes(tmp_path) -> None:
    path = tmp_path / "r.zarr"
    code = textwrap.dedent(
        f"""
        import torch
        from torch import nn
        from hyperlapse import TrajectoryRecorder
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        rec = TrajectoryRecorder({str(path)!r}, model, every=1, flush_every_s=60)
        for step in range(1, 8):
            with torch.no_grad():
                model[0].bias.fill_(step)
            rec.step()
        # no close(): atexit must flush and capture nothing twice
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    traj = open_trajectory(path)
    assert traj.steps.tolist() == list(range(8)) and traj.attrs["closed"]
    assert [float(traj[t]["0.bias"][0]) for t in range(1, 8)] == list(range(1, 8))


# -- report listener ---------------------------------------------------------------------------
class _Listener:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple] = []
        self.closed = False
        self.thread: str | None = None

    def on_snapshot(self, index, step, state, metrics) -> None:
        self.thread = threading.current_thread().name
        time.sleep(self.delay)
        self.calls.append((index, step, state, metrics))

    def close(self) -> None:
        self.closed = True


def test_report_listener_sees_every_snapshot(tmp_path) -> None:
    listener = _Listener()
    model = _mlp()
    # no time flush during the test: it could seal a snapshot before its log() (documented)
    with TrajectoryRecorder(
        tmp_path / "r.zarr", model, every=2, report=listener, flush_every_s=60
    ) as rec:
        _, states = _train(model, rec, 7)
        assert not listener.closed
    assert listener.closed and listener.thread == "hyperlapse-report"
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.steps.tolist() == [0, 2, 4, 6, 7]
    # in order; on a busy machine the listener may miss some, and those are counted
    indices = [c[0] for c in listener.calls]
    assert indices == sorted(set(indices)) and len(indices) + traj.attrs["report_dropped"] == 5
    assert [c[1] for c in listener.calls] == [int(traj.steps[i]) for i in indices]
    for index, step, state, metrics in listener.calls:
        assert all(torch.equal(state[k], states[step][k]) for k in states[step])
        if step in (2, 4, 6):  # log() after the step that captured: same snapshot
            assert metrics["i"] == step and metrics["loss"] == traj.metrics["loss"][index]


def test_report_on_start_gets_the_architecture_before_any_snapshot(tmp_path) -> None:
    class WithStart(_Listener):
        def on_start(self, architecture) -> None:
            self.start = (architecture, len(self.calls))

    listener = WithStart()
    model = _mlp()
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=1, report=listener) as rec:
        _train(model, rec, 2)
    architecture, calls_before = listener.start
    assert calls_before == 0 and architecture == describe_mlp(model)


def test_log_keeps_the_value_of_a_tensor_changed_in_place_later(tmp_path) -> None:
    model = _mlp()
    value = torch.tensor(1.5)
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=1, flush_every_s=60) as rec:
        rec.capture()
        rec.log(loss=value)
        value.fill_(-7.0)
    assert open_trajectory(tmp_path / "r.zarr").metrics["loss"][0] == 1.5


def test_slow_report_drops_instead_of_blocking(tmp_path) -> None:
    gate = threading.Event()

    class Stuck(_Listener):
        def on_snapshot(self, *args) -> None:
            gate.wait(_GATE_S)  # held until training is done (at most 10 s)
            super().on_snapshot(*args)

    listener = Stuck()
    model = _mlp()
    with TrajectoryRecorder(tmp_path / "r.zarr", model, report=listener, queue_size=4) as rec:
        t0 = time.perf_counter()
        for step in range(60):
            rec.capture(step=step)
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        gate.set()
    traj = open_trajectory(tmp_path / "r.zarr")
    assert len(traj) == 60 and traj.attrs["dropped"] == 0
    assert elapsed < _GATE_S / 2  # training did not wait for the listener (held for 10 s)
    assert traj.attrs["report_dropped"] > 0
    assert len(listener.calls) + traj.attrs["report_dropped"] == 60


@pytest.mark.parametrize("where", ["on_snapshot", "on_start", "close"])
def test_failing_report_is_detached_and_costs_no_snapshot(tmp_path, where) -> None:
    class Broken(_Listener):
        def on_start(self, architecture) -> None:
            if where == "on_start":
                raise ValueError("plot failed")

        def on_snapshot(self, index, step, state, metrics) -> None:
            if where == "on_snapshot" and len(self.calls) == 2:
                raise ValueError("plot failed")
            self.calls.append(index)

        def close(self) -> None:
            self.closed = True
            if where == "close":
                raise ValueError("plot failed")

    listener = Broken()
    # a long flush interval: the snapshots are still pending when the listener fails
    rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), report=listener, flush_every_s=60)
    with pytest.warns(HyperlapseWarning, match="plot failed.*detached") as record:
        for step in range(100):
            assert rec.capture(step=step)  # later captures keep recording
            # snapshot s - 1 is handed over once s is captured: wait for the first ones, so
            # that none is dropped for the listener on a busy machine
            deadline = time.monotonic() + 30
            while (
                1 <= step <= 3
                and len(listener.calls) < step
                and not rec.stats["report_detached"]
                and time.monotonic() < deadline
            ):
                time.sleep(0.001)
        rec.close()  # no error: the store is complete
    assert len([w for w in record if "detached" in str(w.message)]) == 1
    assert listener.closed  # still given the chance to release what it holds
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.attrs["closed"] is True and len(traj) == 100
    assert traj.steps.tolist() == list(range(100))
    assert rec.stats["report_detached"]
    if where == "on_snapshot":
        assert listener.calls == [0, 1] and rec.stats["report_delivered"] == 2
    elif where == "on_start":
        assert listener.calls == [] and rec.stats["report_delivered"] == 0


# -- wrappers ----------------------------------------------------------------------------------
def test_only_rank_zero_writes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    model = _mlp()
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=1) as rec:
        _train(model, rec, 3)
        assert rec.capture() is False and rec.state_dict()["step"] == 0
    assert not (tmp_path / "r.zarr").exists()
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=1) as rec:
        _train(model, rec, 3)
    assert len(open_trajectory(tmp_path / "r.zarr")) == 4


def test_dataparallel_and_buffers(tmp_path) -> None:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model = nn.DataParallel(inner)
    with (
        pytest.warns(HyperlapseWarning, match="not an MLP"),
        TrajectoryRecorder(tmp_path / "r.zarr", model, buffers=True) as rec,
    ):
        _, states = _train(model, rec, 3, log=False)
    traj = open_trajectory(tmp_path / "r.zarr")
    assert "1.running_mean" in traj.param_names and "1.num_batches_tracked" in traj.param_names
    assert not any(n.startswith("module.") for n in traj.param_names)
    assert traj[-1]["1.num_batches_tracked"].dtype == torch.int64
    assert int(traj[-1]["1.num_batches_tracked"]) == 3
    _assert_matches(
        traj, {s: {k[len("module.") :]: v for k, v in st.items()} for s, st in states.items()}
    )


def test_autocast_stores_float32_master_weights(tmp_path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with TrajectoryRecorder(tmp_path / "r.zarr", model) as rec:
        rec.attach(opt)
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(torch.randn(8, 4)).float().pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj[-1]["0.weight"].dtype == torch.float32
    assert torch.equal(traj[-1]["0.weight"], model[0].weight)


@pytest.mark.slow
def test_torch_compile_records_the_original_parameters(tmp_path) -> None:
    # backend="eager": the inductor compile costs tens of seconds on 2 CPU cores; the wrapper
    # (OptimizedModule with _orig_mod) is the same either way.
    model = _mlp()
    compiled = torch.compile(model, backend="eager")
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    with TrajectoryRecorder(tmp_path / "r.zarr", compiled, every=1) as rec:
        _, states = _train(compiled, rec, 3)
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.param_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert traj.architecture["widths"] == [4, 8, 2]
    states = {
        s: {k.replace("_orig_mod.", ""): v for k, v in st.items()} for s, st in states.items()
    }
    _assert_matches(traj, states)


def test_recorder_module_exports() -> None:
    assert recorder_module.__all__ == ["TrajectoryRecorder"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_capture_is_asynchronous_and_exact(dtype, tmp_path) -> None:
    model = _mlp().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    states = {}
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=1, dtype=dtype) as rec:
        rec.attach(opt)
        assert rec._layout.pinned
        states[0] = {k: v.cpu() for k, v in model.state_dict().items()}
        for i in range(1, 6):
            opt.zero_grad()
            model(torch.randn(8, 4, device="cuda")).pow(2).mean().backward()
            opt.step()
            states[i] = {k: v.cpu() for k, v in model.state_dict().items()}
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.steps.tolist() == list(range(6))
    target = getattr(torch, dtype)
    _assert_matches(traj, {s: {k: v.to(target) for k, v in st.items()} for s, st in states.items()})


def test_manual_step_and_capture_without_an_optimizer(tmp_path) -> None:
    model = _mlp()
    with TrajectoryRecorder(tmp_path / "r.zarr", model, every=2) as rec:
        for _ in range(5):
            rec.step()  # the first call captures the initial state (step 0)
        assert rec.current_step == 5
        assert rec.capture(step=3) is False and rec.current_step == 5  # not after step 4
        assert rec.capture() is True
        assert rec.capture() is False  # step 5 again
    assert open_trajectory(tmp_path / "r.zarr").steps.tolist() == [0, 2, 4, 5]
