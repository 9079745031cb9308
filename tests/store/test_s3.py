"""Recording to and reading from a real S3 API: moto's server on loopback, reached via s3fs.

Credentials and the endpoint come from the environment, as for any boto/s3fs user
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``; docs/integrations.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder, open_trajectory
from hyperlapse.errors import NotAStoreError

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

BUCKET = "hyperlapse-test"

CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    from hyperlapse import TrajectoryRecorder, open_trajectory
    from hyperlapse.errors import StoreError

    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    try:  # continue the killed run from its last committed snapshot (a true continuation)
        traj = open_trajectory(sys.argv[1])
        if len(traj):
            model.load_state_dict(traj[-1])
    except StoreError:
        pass
    rec = TrajectoryRecorder(sys.argv[1], model, every=1, snapshots_per_chunk=4,
                             flush_every_s=0.05)
    step = rec.current_step
    while True:
        g = torch.Generator().manual_seed(1000 + step)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        rec.capture(step=step)
        if step % 5 == 0:
            print(f"step {step}", flush=True)
        step += 1
        time.sleep(0.005)
    """
)


def _weights_for_step(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}).mkdir(BUCKET)
    try:
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_record_and_read_back_through_s3(s3_env):
    url = f"s3://{BUCKET}/roundtrip.zarr"
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    states = []
    with TrajectoryRecorder(url, model, every=2, snapshots_per_chunk=4) as rec:
        rec.attach(opt)
        for step in range(10):
            if step % 2 == 0:
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            opt.zero_grad()
            model(torch.randn(4, 6)).pow(2).mean().backward()
            opt.step()
            rec.log(loss=float(step))
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    traj = open_trajectory(url)
    assert traj.steps.tolist() == [0, 2, 4, 6, 8, 10]
    for t, want in enumerate(states):
        for name, value in want.items():
            assert torch.equal(traj[t][name], value), (t, name)
    # resume: a second recorder continues the same object-store run
    with TrajectoryRecorder(url, model, every=1) as rec:
        rec.capture(step=11)
    assert open_trajectory(url).steps.tolist()[-1] == 11
    with pytest.raises(NotAStoreError):
        open_trajectory(f"s3://{BUCKET}/nothing-here.zarr")


@pytest.mark.slow
def test_sigkill_while_recording_to_s3_keeps_committed_snapshots(s3_env, tmp_path):
    url = f"s3://{BUCKET}/killed.zarr"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    model = _mlp()
    before = 0
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, **s3_env})
        try:
            for _ in range(3):  # a few flushes happen
                line = proc.stdout.readline()
                assert line.startswith("step"), f"child failed: {line!r}"
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        traj = open_trajectory(url)
        steps = traj.steps.tolist()
        assert len(steps) > before, "the resumed run committed nothing new"
        assert steps == list(range(len(steps))), "steps must be 0, 1, 2, ... without gaps"
        for t in range(len(traj)):
            for name, want in _weights_for_step(model, steps[t]).items():
                assert torch.equal(traj[t][name], want), (t, name)
        before = len(steps)


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    from hyperlapse.store import format as fmt

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup here
    monkeypatch.setattr(fmt, "_S3_CREDENTIALS_FOUND", False)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_without_credentials_fails_fast_saying_what_to_do(no_aws_credentials, capsys):
    from hyperlapse.cli import main
    from hyperlapse.errors import StoreError
    from hyperlapse.store.writer import StoreWriter

    start = time.monotonic()
    assert main(["info", "s3://some-bucket/x.zarr"]) == 1
    err = capsys.readouterr().err
    assert "needs AWS credentials, but none were found" in err and "aws configure" in err
    assert "FSSPEC_S3_ANON" in err and "Traceback" not in err
    with pytest.raises(StoreError, match="needs AWS credentials"):
        StoreWriter("s3://some-bucket/x.zarr", [{"name": "w", "shape": [2], "dtype": "float32"}])
    with pytest.raises(StoreError, match="needs AWS credentials"):
        TrajectoryRecorder("s3://some-bucket/x.zarr", _mlp())
    assert time.monotonic() - start < 10  # it took 24 s to a raw NoCredentialsError
