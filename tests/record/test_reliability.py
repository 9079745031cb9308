"""Recorder reliability: options that would hang, a dead writer, a model that changes under the
recorder, tied weights, non-numeric scalars, SIGTERM, and the recorder's own cost."""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
import torch
from torch import nn

import hyperlapse.record.pipeline as pipeline_module
from hyperlapse import TrajectoryRecorder, describe_mlp, open_trajectory
from hyperlapse.errors import ConfigError, HyperlapseWarning, WriterError
from hyperlapse.graph.state import check_state, layer_tensors
from hyperlapse.record.pipeline import Pipeline
from hyperlapse.store.writer import StoreWriter


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _within(seconds: float, fn, *args):
    """Run ``fn`` on a helper thread; fail (instead of hanging the suite) if it blocks."""
    result: dict[str, object] = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


# -- (2) options that would hang, and a dead writer ---------------------------------------------
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0, -1.0, True, "2"])
def test_flush_every_s_must_be_finite_and_positive(tmp_path, value) -> None:
    with pytest.raises(ConfigError, match="flush_every_s.*finite positive"):
        TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), flush_every_s=value)
    assert not (tmp_path / "r.zarr").exists()  # nothing written


def test_a_huge_finite_flush_interval_records_everything(tmp_path) -> None:
    rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), flush_every_s=1e300, queue_size=2)
    for step in range(6):  # more captures than buffers: the writer must be alive
        _within(20, rec.capture, step)
    _within(20, rec.close)
    assert open_trajectory(tmp_path / "r.zarr").steps.tolist() == list(range(6))


@pytest.mark.parametrize("on_full", ["block", "drop"])
def test_a_dead_writer_thread_is_raised_and_never_blocks(tmp_path, monkeypatch, on_full) -> None:
    """The writer loop dies outside any guarded call (as ``queue.get(timeout=inf)`` did) while
    the training thread fills the buffer pool: captures raise, nothing hangs."""
    gate = threading.Event()
    original = StoreWriter.flush_due

    def dying_flush_due(self):
        if self.pending:
            gate.wait(10)  # hold the writer until the pool is full, then die
            raise OverflowError("timeout value is too large")
        return original(self)

    monkeypatch.setattr(StoreWriter, "flush_due", dying_flush_due)
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model, queue_size=2, on_full=on_full)

    def train():
        step, deadline = 0, time.monotonic() + 15  # a busy machine may run the writer late
        while time.monotonic() < deadline:
            if step == 4:
                gate.set()  # the pool is exhausted: the writer dies now
            rec.capture(step=step)
            step += 1
            time.sleep(0.001)

    with pytest.raises(WriterError, match="OverflowError") as info:
        _within(20, train)
    assert isinstance(info.value.__cause__, OverflowError)
    with pytest.raises(WriterError):  # every later capture raises too: nothing silently lost
        _within(5, rec.capture, 1000)
    _within(5, rec.close)  # returns, does not raise what was raised already
    assert rec.overhead()["snapshots"] >= 1
    monkeypatch.undo()
    # the failed writer gave its lock back: a retry at the same path in this process works
    with TrajectoryRecorder(tmp_path / "r.zarr", model) as again:
        again.capture(step=10_000)
    assert open_trajectory(tmp_path / "r.zarr").steps.tolist()[-1] == 10_000


def test_a_writer_death_while_the_training_thread_waits_for_a_buffer(tmp_path, monkeypatch):
    """The training thread is blocked in the on_full="block" wait when the writer dies."""
    entered, gate = threading.Event(), threading.Event()

    def dying_append(self, *args, **kwargs):
        entered.set()
        gate.wait(10)
        raise MemoryError("simulated")

    monkeypatch.setattr(StoreWriter, "append", dying_append)
    # an error escaping the guard ends the thread: make the guard re-raise
    monkeypatch.setattr(Pipeline, "_guarded", lambda self, fn, *args: fn(*args), raising=True)
    rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), queue_size=1, writes="background")
    rec.capture(step=0)  # the only buffer, held by the stuck writer
    assert entered.wait(10)
    threading.Timer(0.3, gate.set).start()  # dies while the next capture waits
    t0 = time.monotonic()
    with pytest.raises(WriterError, match="MemoryError"):
        _within(20, rec.capture, 1)
    assert time.monotonic() - t0 < 10
    assert not rec._pipeline.alive()
    _within(5, rec.close)


def test_writer_failure_at_close_does_not_block(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(StoreWriter, "flush_due", lambda self: 1 / 0)
    rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp())
    with pytest.raises(WriterError, match="ZeroDivisionError"):
        _within(20, rec.close)


# -- (6) the model changes under the recorder ---------------------------------------------------
def test_a_replaced_parameter_is_followed_with_one_warning(tmp_path) -> None:
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model)
    rec.capture(step=0)
    model[0].weight = nn.Parameter(torch.full((8, 4), 3.0))  # same name and shape, new object
    with pytest.warns(HyperlapseWarning, match=r"\['0.weight'\] were replaced") as record:
        rec.capture(step=1)
        rec.capture(step=2)
    assert len(record) == 1
    rec.close()
    traj = open_trajectory(tmp_path / "r.zarr")
    assert len(traj) == 3 and torch.equal(traj[2]["0.weight"], torch.full((8, 4), 3.0))


@pytest.mark.parametrize("change", ["added", "removed", "shape"])
def test_a_changed_parameter_set_is_a_clear_error(tmp_path, change) -> None:
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model, flush_every_s=60)
    rec.capture(step=0)
    rec.capture(step=1)
    if change == "added":
        model.append(nn.Linear(2, 3))
        match = r"added \['3.weight', '3.bias'\]"
    elif change == "removed":
        model[2].bias = None
        match = r"removed \['2.bias'\]"
    else:
        model[0].weight.data = torch.zeros(5, 4)
        match = r"'0.weight' \(8, 4\) -> \(5, 4\)"
    with pytest.raises(ConfigError, match=match):
        rec.capture(step=2)
    with pytest.raises(ConfigError, match=match):  # and again: nothing is silently skipped
        rec.capture(step=3)
    rec.close()  # said already: close commits what was captured, no raw RuntimeError
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.attrs["closed"] is True and traj.steps.tolist() == [0, 1]


def test_a_shape_change_first_seen_at_close_is_raised_after_closing_the_store(tmp_path):
    model = _mlp()
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model)
    rec.capture(step=0)
    rec._step = 5  # steps were counted without a capture: close() captures the final state
    model[2].weight.data = torch.zeros(2, 9)
    with pytest.raises(ConfigError, match="shape"):
        rec.close()
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.attrs["closed"] is True and traj.steps.tolist() == [0]


def test_drift_check_costs_no_device_sync_and_little_time(tmp_path) -> None:
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(50)])
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model)
    watch = rec._watch
    t0 = time.perf_counter()
    for _ in range(200):
        assert not watch.changed()
    per_check = (time.perf_counter() - t0) / 200
    rec.close()
    assert per_check < 1e-3, per_check  # 100 tensors, 51 modules: identity and shape only


# -- tied weights ------------------------------------------------------------------------------
def test_tied_layers_are_described_with_their_stored_names(tmp_path) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.Tanh(), nn.Linear(4, 2))
    arch = describe_mlp(model)
    assert arch["widths"] == [4, 4, 4, 2]
    assert [layer["weight"] for layer in arch["layers"]] == ["0.weight", "0.weight", "4.weight"]
    assert [layer.get("tied_to") for layer in arch["layers"]] == [None, "0", None]
    assert [layer["activation"] for layer in arch["layers"]] == ["relu", "tanh", None]
    with TrajectoryRecorder(tmp_path / "r.zarr", model) as rec:
        rec.capture(step=0)
    traj = open_trajectory(tmp_path / "r.zarr")
    assert traj.architecture == arch
    state = traj[0]
    named = {layer["weight"] for layer in arch["layers"]} | {
        layer["bias"] for layer in arch["layers"]
    }
    assert named <= set(state)  # every parameter the architecture names is stored
    check_state(state, arch)
    weights, _ = layer_tensors(state, arch)
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], lin.weight)


def test_a_parameter_shared_by_two_layers_names_the_stored_one() -> None:
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    arch = describe_mlp(nn.Sequential(a, nn.ReLU(), b))
    assert arch["layers"][1]["weight"] == "0.weight" and arch["layers"][1]["bias"] == "2.bias"
    assert arch["layers"][1]["tied_to"] == "0"


# -- log() values ------------------------------------------------------------------------------
def test_non_numeric_log_values_warn_once(tmp_path) -> None:
    rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), flush_every_s=60)
    rec.capture(step=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numbers, numpy scalars, 1-element tensors: silent
        rec.log(a=1, b=2.5, c=torch.tensor(3.0), d=torch.ones(1, 1), e=float("nan"))
    with pytest.warns(HyperlapseWarning, match="stored as NaN") as record:
        rec.log(name="adam", vec=torch.ones(3))
        rec.log(other=None)
    assert len(record) == 1 and "name=str" in str(record[0].message)
    rec.close()
    metrics = open_trajectory(tmp_path / "r.zarr").metrics
    assert metrics["c"][0] == 3.0 and math.isnan(metrics["name"][0])


# -- (10) SIGTERM ------------------------------------------------------------------------------
_SIGTERM_CHILD = textwrap.dedent(
    """
    import signal, sys, time, torch
    from torch import nn
    from hyperlapse import TrajectoryRecorder
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "chained":
        seen = []
        signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    rec = TrajectoryRecorder(path, model, every=1, flush_every_s=60)
    for step in range(1, 41):
        with torch.no_grad():
            model[0].bias.fill_(step)
        rec.step()
    print("ready", flush=True)
    while mode != "chained" or not seen:
        time.sleep(0.01)
    # the program's own handler ran after a flush; the recorder is still open
    from hyperlapse import open_trajectory
    print(len(open_trajectory(path)), flush=True)
    with torch.no_grad():
        model[0].bias.fill_(41)
    rec.step()
    rec.close()
    """
)


@pytest.mark.parametrize("mode", ["default", "chained"])
def test_sigterm_flushes_and_closes(tmp_path, mode) -> None:
    path = tmp_path / "r.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(path), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    traj = open_trajectory(path)
    if mode == "default":  # ends by SIGTERM, as without hyperlapse, with everything committed
        assert proc.returncode == -signal.SIGTERM
        assert traj.steps.tolist() == list(range(41)) and traj.attrs["closed"] is True
    else:  # flushed before the program's handler; recording went on
        assert proc.returncode == 0 and out.split() == ["41"]
        assert traj.steps.tolist() == list(range(42)) and traj.attrs["closed"] is True
    assert [float(traj[t]["0.bias"][0]) for t in range(1, len(traj))] == list(range(1, len(traj)))


def test_sigterm_in_a_forked_child_leaves_the_parents_recorder_alone(tmp_path) -> None:
    """A forked worker (e.g. a DataLoader's) inherits the handler: SIGTERM there ends the
    worker as before and neither touches nor closes the parent's store."""
    code = textwrap.dedent(
        f"""
        import os, signal, time
        from torch import nn
        from hyperlapse import TrajectoryRecorder, open_trajectory
        rec = TrajectoryRecorder({str(tmp_path / "r.zarr")!r}, nn.Linear(2, 2), flush_every_s=60)
        rec.capture(step=0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"x")  # a signal right at fork is lost (Python clears it in the child)
            time.sleep(60)
            os._exit(0)
        os.read(r, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
        rec.capture(step=1)
        rec.close()
        traj = open_trajectory({str(tmp_path / "r.zarr")!r})
        assert traj.steps.tolist() == [0, 1] and traj.attrs["closed"] is True
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sigterm_handler_is_installed_from_the_main_thread_only(tmp_path) -> None:
    code = textwrap.dedent(
        f"""
        import signal, threading
        from torch import nn
        from hyperlapse import TrajectoryRecorder
        model = nn.Linear(2, 2)
        t = threading.Thread(
            target=lambda: TrajectoryRecorder({str(tmp_path / "a.zarr")!r}, model).close())
        t.start(); t.join()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        TrajectoryRecorder({str(tmp_path / "b.zarr")!r}, model).close()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # ignored stays ignored
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- issue 9: the recorder reports its own cost ------------------------------------------------
def test_overhead_reports_what_recording_cost(tmp_path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(tmp_path / "r.zarr", model, every=2)
    rec.attach(opt)
    for _ in range(20):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    live = rec.overhead()  # while recording
    assert live["snapshots"] == 11 and live["snapshots_dropped"] == 0
    rec.close()
    cost = rec.overhead()
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    assert cost["bytes_per_snapshot"] == nbytes
    stored = len(open_trajectory(tmp_path / "r.zarr"))
    assert cost["bytes_written"] == nbytes * stored == 11 * nbytes
    assert 0 < cost["capture_mean_s"] <= cost["capture_max_s"] <= cost["training_blocked_s"]
    assert cost["training_blocked_s"] == pytest.approx(cost["capture_mean_s"] * 11)
    assert cost["training_blocked_s"] <= cost["elapsed_s"]
    assert 0 < cost["training_blocked_fraction"] < 1
    assert cost["writer_cpu_s"] > 0  # compression and writes happened on the writer thread
    assert cost["report_cpu_s"] == 0.0


def test_short_flush_interval_warns_on_the_training_thread(tmp_path) -> None:
    # shards assembled per flush (compressed): short intervals rewrite the partial shard
    with pytest.warns(HyperlapseWarning, match="flush_every_s=0.05"):
        rec = TrajectoryRecorder(tmp_path / "r.zarr", _mlp(), flush_every_s=0.05,
                                 compression="lz4")
    rec.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrajectoryRecorder(tmp_path / "s.zarr", _mlp(), flush_every_s=0.5, fsync=False).close()
        # filled in place (the local default): a time flush rewrites nothing, no warning
        TrajectoryRecorder(tmp_path / "t.zarr", _mlp(), flush_every_s=0.05).close()
    assert open_trajectory(tmp_path / "s.zarr").attrs["recorder"]["fsync"] is False


# -- issue 16 item 5: backpressure in every writes mode ------------------------------------------
def _overloaded() -> bool:
    """A machine so loaded (run queue > 3x the cores) that any thread may wait seconds for a
    CPU: time bounds then measure the scheduler, not the recorder (counts still hold)."""
    return os.getloadavg()[0] > 3 * (os.cpu_count() or 1)


def _fast_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )


@pytest.mark.parametrize("writes", ["inline", "background"])
@pytest.mark.parametrize("on_full", ["block", "drop"])
def test_the_uncommitted_backlog_is_bounded_and_close_is_fast(tmp_path, monkeypatch, writes,
                                                             on_full):
    """The issue's reproduction, shortened: an 8-64-64-2 MLP captured at every step with
    16-snapshot shards. On 146d920 (inline) thousands of snapshots piled up uncommitted (a
    SIGKILL lost seconds of them, growing with the run) and close() took 37-58 s after 20 s."""
    # the writer at the training thread's priority: on this shared machine a niced writer is
    # starved by other processes for seconds, which no in-process bound can prevent
    monkeypatch.setattr(pipeline_module, "WRITER_NICENESS", 0)
    flush_every_s, threads = 0.5, torch.get_num_threads()
    torch.set_num_threads(1)  # the fastest loop this shared machine runs
    try:
        model = _fast_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
        rec = TrajectoryRecorder(tmp_path / "r.zarr", model, every=1, snapshots_per_chunk=16,
                                 flush_every_s=flush_every_s, writes=writes, on_full=on_full)
        rec.attach(opt)
        times = [time.monotonic()]  # capture time of snapshot i (the initial state first)
        worst_age, worst_backlog = 0.0, 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6.0:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()  # the hook captures (or drops)
            n = rec.overhead()["snapshots"]
            if n > len(times):
                times.append(time.monotonic())
            committed = rec.writer.committed
            if committed < len(times):  # the oldest captured snapshot not yet committed
                worst_age = max(worst_age, time.monotonic() - times[committed])
            worst_backlog = max(worst_backlog, len(times) - committed)
        t1 = time.monotonic()
        rec.close()
        close_s = time.monotonic() - t1
    finally:
        torch.set_num_threads(threads)
    assert worst_backlog <= rec.queue_size + 16 + 1, worst_backlog  # queue + one shard
    if not _overloaded():
        assert worst_age <= flush_every_s + 2.5, worst_age  # the promise, plus one slow flush
        assert close_s < 3.0, close_s
    assert close_s < 15.0, close_s  # 146d920 (inline): 37-58 s after 20 s
    traj = open_trajectory(tmp_path / "r.zarr")
    stats = rec.overhead()
    assert len(traj) == stats["snapshots"] + (1 if traj.steps[-1] != rec.current_step else 0)
    assert traj.attrs["dropped"] == stats["snapshots_dropped"]
    if on_full == "block":
        assert stats["snapshots_dropped"] == 0


_BACKLOG_CHILD = textwrap.dedent(
    """
    import mmap, struct, sys, time, torch
    from torch import nn
    from hyperlapse import TrajectoryRecorder
    path, k, flush, stamp = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with open(stamp, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 16)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    rec = TrajectoryRecorder(path, model, every=1, snapshots_per_chunk=k, flush_every_s=flush,
                             writes="inline")
    print("ready", flush=True)
    step = 0
    while True:
        with torch.no_grad():
            model[0].bias.fill_(step)
        rec.capture(step=step)
        struct.pack_into("dq", mm, 0, time.time(), step)  # for the parent: cheap, no syscall
        step += 1
    """
)


@pytest.mark.slow
def test_sigkill_with_an_inline_backlog_loses_at_most_the_flush_interval(tmp_path) -> None:
    """Random SIGKILLs of a fast inline recorder (issue 16: 5.7 s lost at flush_every_s=0.3):
    every committed snapshot is exact, and what is lost was captured within the interval plus
    one flush before the kill."""
    import random

    rng = random.Random(16)
    flush_every_s = 0.3
    for trial in range(4):
        path = tmp_path / f"r{trial}.zarr"
        k = rng.choice([1, 4, 16, 64])
        stamp = tmp_path / f"stamp{trial}"
        stamp.write_bytes(bytes(16))
        proc = subprocess.Popen(
            [sys.executable, "-c", _BACKLOG_CHILD, str(path), str(k), str(flush_every_s),
             str(stamp)],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "HYPERLAPSE_WRITER_NICENESS": "0"},  # see the test above
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(5.0, 7.0))
            proc.kill()
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        last_time, last_step = struct.unpack("dq", stamp.read_bytes()[:16])
        traj = open_trajectory(path)
        steps = traj.steps.tolist()
        assert steps == list(range(len(steps)))  # every committed snapshot, none skipped
        for t in (0, len(traj) // 2, len(traj) - 1):
            assert torch.equal(traj[t]["0.bias"], torch.full((64,), float(t)))
        lost_s = last_time - float(traj.wall_time[-1])
        if not _overloaded():
            assert lost_s <= flush_every_s + 2.5, (k, last_step, steps[-1], lost_s)
        # whatever the load, far fewer snapshots than the run: 146d920 lost thousands
        assert last_step - steps[-1] <= 64 + k + 64, (k, last_step, steps[-1])
