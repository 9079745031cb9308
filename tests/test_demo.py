from __future__ import annotations

import pytest

from hyperlapse.cli import main
from hyperlapse.report.jsonl import read_reports


@pytest.mark.slow
@pytest.mark.parametrize("run", [1, 2])
def test_demo_end_to_end(tmp_path, capsys, run):
    """The README's main command, reduced (``--fast``): stores, live and post-hoc reports. Run
    twice into the same folder, as `bash scripts/demo.sh` twice: no error and no gluing (on
    146d920 the second moons store held both runs, the loss jumping at the re-initialisation)."""
    for _ in range(run):
        assert main(["demo", "--out", str(tmp_path), "--fast"]) == 0
    printed = capsys.readouterr().out
    from hyperlapse import open_trajectory

    assert open_trajectory(tmp_path / "moons.zarr").steps.tolist() == list(range(0, 101, 20))
    assert open_trajectory(tmp_path / "digits.zarr").steps.tolist() == list(range(0, 61, 10))
    for name in ("digits", "moons"):
        page = tmp_path / name / "report.html"
        assert str(page) in printed
        assert page.read_text().count("data:image/png;base64,") >= 4
        reports = read_reports(tmp_path / name / "reports.jsonl")
        assert len(reports) >= 5
        assert reports[-1]["scores"]["link_auc"] is not None
        assert (tmp_path / f"{name}.zarr" / "zarr.json").exists()
    # the live report saw every digits snapshot (the worker queue holds them)
    assert [r["step"] for r in read_reports(tmp_path / "digits" / "reports.jsonl")] == list(
        range(0, 61, 10)
    )
    # the moons page has the volume-element maps; the digits probes are real digits
    assert (tmp_path / "moons" / "volume.png").exists()
    assert read_reports(tmp_path / "digits" / "reports.jsonl")[0]["geometry"]["num_probes"] == 64
    assert "test accuracy" in printed and "snapshots" in printed


def test_demo_quiet_prints_nothing(tmp_path, capsys, monkeypatch):
    import hyperlapse.demo as demo

    calls = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: calls.update(kw))
    assert main(["demo", "--out", str(tmp_path), "--quiet", "--seed", "3"]) == 0
    assert calls == {"out": str(tmp_path), "seed": 3, "quiet": True, "fast": False}
    assert capsys.readouterr().out == ""
