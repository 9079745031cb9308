from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import hyperlapse
from hyperlapse.cli import main
from hyperlapse.errors import ConfigError, NotAStoreError, StoreError
from hyperlapse.store.info import format_info, store_info
from hyperlapse.zoo import ZOOS, PopulationMLP, build_zoo, open_zoo
from hyperlapse.zoo.builders import ZooSpec
from hyperlapse.zoo.population import population_recorder, run_generator


def test_population_forward_matches_members():
    pop = PopulationMLP(4, [3, 8, 5, 2], ["tanh", "sine(30)"])
    pop.init_runs([run_generator(1, r) for r in range(4)])
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    out = pop(x)
    for r in range(4):
        # bmm and addmm round differently and sin(30 x) scales that up: up to 2e-6 over 200
        # draws (atol 1e-6 failed for ~1 in 4 global RNG states, i.e. depending on test order)
        assert torch.allclose(pop.member(r)(x), out[r], atol=1e-5)
    assert pop.architecture()["widths"] == [3, 8, 5, 2]


def test_population_training_equals_training_each_run_alone():
    """Adam on stacked parameters with the summed loss == Adam on each run by itself."""
    x = torch.randn(16, 2)
    y = torch.randn(3, 16, 1)
    pop = PopulationMLP(3, [2, 6, 1], "tanh")
    pop.init_runs([run_generator(0, r) for r in range(3)])
    alone = [pop.member(r) for r in range(3)]
    opt = torch.optim.Adam(pop.parameters(), lr=1e-2)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in alone]
    for _ in range(20):
        opt.zero_grad()
        ((pop(x) - y) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
        for r, (m, o) in enumerate(zip(alone, opts, strict=True)):
            o.zero_grad()
            ((m(x) - y[r]) ** 2).mean().backward()
            o.step()
    for r, m in enumerate(alone):
        for name, p in m.state_dict().items():
            assert torch.allclose(pop.member_state(r)[name], p, atol=1e-5)


def test_run_init_does_not_depend_on_blocking():
    a = PopulationMLP(5, [2, 4, 1], "relu")
    a.init_runs([run_generator(3, r) for r in range(5)])
    b = PopulationMLP(2, [2, 4, 1], "relu")
    b.init_runs([run_generator(3, r) for r in (3, 4)])
    assert torch.equal(a[0].weight[3:], b[0].weight)


def test_population_recorder_describes_the_stacked_parameters(tmp_path):
    pop = PopulationMLP(3, [2, 4, 1], "tanh")
    pop.init_runs([run_generator(0, r) for r in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stacked module is described, not inferred
        rec = population_recorder(str(tmp_path / "p.zarr"), pop, 1)
    rec.capture()
    rec.close()
    arch = hyperlapse.open_trajectory(tmp_path / "p.zarr").architecture
    assert arch == pop.recorded_architecture()
    assert arch["runs"] == 3
    assert arch["member"] == hyperlapse.describe_mlp(pop.member(0))


@pytest.fixture(scope="module")
def sines_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "sines"
    return build_zoo("sines", out, runs=6, block_size=4, quiet=True)


def test_zoo_build_shows_a_bar_with_eta_on_a_terminal(tmp_path, terminal):
    build_zoo("sines", tmp_path / "z", runs=2, block_size=1, scale=0.05)
    assert "ETA" in terminal.getvalue()  # drawn while runs were left
    bar = terminal.screen()[-1].split()
    assert bar[:5] == ["zoo", "sines", "100%|####################|", "2/2", "runs"]
    assert len(terminal.screen()) == 1  # one line, redrawn in place


def test_zoo_layout_labels_and_views(sines_zoo):
    zoo = sines_zoo
    assert len(zoo) == 6 and zoo.complete and zoo.name == "sines"
    assert [run.attrs["run"] for run in zoo] == list(range(6))
    stores = sorted(p.name for p in zoo.folder.glob("*.zarr"))
    assert stores == ["block-0000.zarr", "block-0001.zarr"]  # one store per block, not per run
    # the population store is an ordinary trajectory store with a leading run axis
    traj = hyperlapse.open_trajectory(zoo.folder / "block-0000.zarr")
    assert traj.weights("0.weight").shape == (21, 4, 32, 1)
    assert traj.attrs["population"]["architecture"]["widths"] == [1, 32, 32, 1]
    # ... described by the recorder's architecture= (no not-an-MLP warning: warnings are errors)
    assert traj.architecture == {"kind": "population", "runs": 4,
                                 "member": traj.attrs["population"]["architecture"]}
    assert hyperlapse.open_trajectory(zoo.folder / "block-0001.zarr").architecture["runs"] == 2
    text = format_info(store_info(zoo.folder / "block-0000.zarr"))
    assert "architecture population of 4 MLPs 1-32-32-1" in text
    run = zoo[5]  # second run of the second block
    assert len(run) == 21 and run.steps[-1] == 400
    assert np.array_equal(run.weights("2.weight"), np.asarray(
        hyperlapse.open_trajectory(zoo.folder / "block-0001.zarr").weights("2.weight"))[:, 1])
    assert set(run.metrics) == {"loss"} and run.metrics["loss"].shape == (21,)
    assert all(0.5 <= r.attrs["a"] <= 2 and 0 <= r.attrs["p"] <= math.pi for r in zoo)


def test_recorded_last_snapshot_reproduces_the_fit(sines_zoo):
    """The final snapshot holds the trained weights: re-evaluating it gives the stored PSNR."""
    run = sines_zoo[2]
    net = PopulationMLP(1, [1, 32, 32, 1], ["tanh", "tanh"]).template()
    net.load_state_dict(run[-1])
    x = torch.linspace(-math.pi, math.pi, 64).unsqueeze(-1)
    a, f, p = (run.attrs[k] for k in "afp")
    y = (a * torch.sin(f * x + p) + 2.0) / 4.0
    with torch.no_grad():
        mse = ((net(x / math.pi) - y) ** 2).mean()
    assert abs(10 * math.log10(1 / mse.item()) - run.attrs["psnr"]) < 1e-3
    assert run.attrs["psnr"] > 25  # it fits (scaled targets in [0, 1])
    # the recorded loss curve falls
    assert run.metrics["loss"][-1] < 0.1 * run.metrics["loss"][0]


def test_killed_build_resumes_without_duplicates(tmp_path, monkeypatch):
    calls = []
    real = ZOOS["sines"]

    def dying(folder, block, runs, seed, shared, progress, scale):
        calls.append(block)
        out = real.train_block(folder, block, runs, seed, shared, progress, scale)
        if block == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt  # killed after writing block 1, before the manifest says so
        return out

    monkeypatch.setitem(ZOOS, "sines", ZooSpec(**{**real.__dict__, "train_block": dying}))
    with pytest.raises(KeyboardInterrupt):
        build_zoo("sines", tmp_path / "z", runs=7, block_size=3, quiet=True)
    first = (tmp_path / "z" / "block-0000.zarr" / "zarr.json").stat().st_mtime_ns
    partial = open_zoo(tmp_path / "z")  # readable: the finished blocks only
    assert len(partial) == 3 and not partial.complete
    with pytest.raises(StoreError, match="killed"):  # the unfinished store has no labels
        from hyperlapse.zoo.reader import _Population

        _Population(str(tmp_path / "z" / "block-0001.zarr"))
    zoo = build_zoo("sines", tmp_path / "z", runs=7, block_size=3, quiet=True)
    assert calls == [0, 1, 1, 2]  # block 0 kept, block 1 trained again, then block 2
    assert (tmp_path / "z" / "block-0000.zarr" / "zarr.json").stat().st_mtime_ns == first
    assert [r.attrs["run"] for r in zoo] == list(range(7))
    # same result as an uninterrupted build (runs depend on their seeds only)
    monkeypatch.setitem(ZOOS, "sines", real)
    ref = build_zoo("sines", tmp_path / "ref", runs=7, block_size=3, quiet=True)
    for a, b in zip(zoo, ref, strict=True):
        assert a.attrs == b.attrs
        assert np.allclose(a.weights("0.weight"), b.weights("0.weight"), atol=1e-6)


def test_zoo_folder_errors(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError, match="holds other files"):
        build_zoo("sines", other, runs=2, quiet=True)
    assert (other / "notes.txt").read_text() == "mine"
    assert main(["zoo", "sines", "--out", str(other), "--runs", "2", "--quiet"]) == 1
    assert "holds other files" in capsys.readouterr().err
    done = tmp_path / "done"
    build_zoo("sines", done, runs=2, quiet=True)
    with pytest.raises(ConfigError, match="other settings"):
        build_zoo("sines", done, runs=3, quiet=True)
    with pytest.raises(ConfigError, match="digits-inr"):
        build_zoo("mnist", tmp_path / "x")
    with pytest.raises(ConfigError, match="1..1797"):
        build_zoo("digits-inr", tmp_path / "x", runs=5000)
    with pytest.raises(NotAStoreError, match="hyperlapse zoo"):
        open_zoo(tmp_path / "nothing")


def test_cli_zoo_and_shared_init(tmp_path, capsys):
    out = tmp_path / "inr"
    assert main(["zoo", "digits-inr", "--out", str(out), "--runs", "3", "--shared-init",
                 "--quiet"]) == 0
    assert "PSNR mean" in capsys.readouterr().out
    zoo = open_zoo(out)
    first = [run.weights("0.weight")[0] for run in zoo]
    assert all(np.array_equal(first[0], w) for w in first[1:])  # one shared initialisation
    assert not np.array_equal(zoo[0].weights("0.weight")[-1], zoo[1].weights("0.weight")[-1])
    assert [r.attrs["digit"] for r in zoo] == [0, 1, 2]
    assert min(r.attrs["psnr"] for r in zoo) > 30  # the INRs fit their images
    manifest = json.loads((out / "zoo.json").read_text())
    assert manifest["config"]["shared_init"] is True
    # resuming a finished build does nothing
    assert main(["zoo", "digits-inr", "--out", str(out), "--runs", "3", "--shared-init",
                 "--quiet"]) == 0


@pytest.mark.slow
def test_digits_generalisation_zoo(tmp_path):
    zoo = build_zoo("digits-generalisation", tmp_path / "gen", runs=5, quiet=True)
    assert len(zoo) == 5
    for run in zoo:
        a = run.attrs
        assert 0 <= a["test_acc"] <= 1 and a["depth"] in (1, 2, 3)
        assert len(run) == a["epochs"] + 1  # a snapshot per epoch, cut at the run's own end
        assert run.architecture["widths"] == [64] + [a["width"]] * a["depth"] + [10]
        assert set(run.metrics) == {"loss", "train_acc", "val_acc"}
        assert abs(run.metrics["val_acc"][-1] - a["final_val_acc"]) < 1e-6


def test_inr_runs_evaluate_from_their_recorded_architecture(tmp_path):
    """The SIREN layer is recorded as sine(30.0), so probe outputs are the INR's own outputs;
    a zoo built before that (plain 'sine') reads back with the build's frequency."""
    from hyperlapse.nn.probes import probe_inputs
    from hyperlapse.predict.features import ProbeOutputs
    from hyperlapse.zoo.builders import INR_ACTIVATIONS, INR_WIDTHS

    pytest.importorskip("sklearn")
    zoo = build_zoo("digits-inr", tmp_path / "z", runs=2, block_size=2, quiet=True, scale=0.05)
    run = zoo[1]
    assert run.architecture["layers"][0]["activation"] == "sine(30.0)"
    net = PopulationMLP(1, INR_WIDTHS, INR_ACTIVATIONS).template()
    net.load_state_dict({k: torch.as_tensor(v) for k, v in run[-1].items()})
    x = probe_inputs(2, 64)
    with torch.no_grad():
        want = net.double()(x)[:, 0].numpy()
    got = ProbeOutputs(64)([run], [np.array([len(run) - 1])])[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # an older build recorded plain "sine": rewrite the attrs as it did, read back the same
    meta = tmp_path / "z" / "block-0000.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["population"]["architecture"]["layers"][0]["activation"] = "sine"
    meta.write_text(json.dumps(doc))
    old = open_zoo(tmp_path / "z")[1]
    assert old.architecture["layers"][0]["activation"] == "sine(30)"
    np.testing.assert_allclose(ProbeOutputs(64)([old], [np.array([len(old) - 1])])[0], got)
