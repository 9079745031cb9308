"""benchmarks/recording_overhead.py --quick: every variant ran and wrote what it claims, and
the verdicts follow from the measurements."""

from __future__ import annotations

import errno
import json
import math
import os

import pytest
import torch


@pytest.mark.slow
def test_quick_recording_overhead(tmp_path, load_benchmark) -> None:
    bench = load_benchmark("recording_overhead")
    out = tmp_path / "rec.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--out", str(out), "--dir", str(tmp_path / "work")])
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert list((tmp_path / "work").iterdir()) == []  # the temporary files were removed
    m = results["machine"]
    assert m["cores"] >= 1 and m["torch_threads"] >= 1 and m["store_fs"] and m["cpu"]
    assert "shared" in m["note"] and m["default_compression"] == bench.DEFAULT_COMPRESSION

    g = results["groups"]["tiny_20"]
    v = g["variants"]
    assert set(v) == set(bench.VARIANTS) and g["every_step_measured"]
    assert v["bare"]["total_ratio"]["median"] == 1.0
    nbytes = bench.param_bytes(g["widths"])
    for name, e in v.items():
        if name == "bare":
            continue
        every = 1 if bench._is_every_step(name) else 10
        assert e["snapshots"] == bench.snapshot_steps(20, every) == (21 if every == 1 else 3)
        assert e["files"] >= 1 and e["bytes_on_disk"] > 0
        if name.startswith("floor"):
            # the floors' writes landed: every snapshot's bytes, the last one read back
            assert e["verified"] is True
            assert e["bytes_written"] == e["snapshots"] * e["write_length"]
            assert e["bytes_on_disk"] >= e["bytes_written"]
            if e["io_path"] == "O_DIRECT":
                assert e["write_length"] % bench.PAGE == 0 and e["write_length"] >= nbytes
            else:
                assert e["write_length"] == nbytes
        if name.startswith("hyperlapse"):
            assert e["verified"] is True and e["dropped"] == 0
            assert e["total_s"]["median"] >= e["loop_s"]["median"] > 0
            assert e["blocked_ms_per_snapshot"]["median"] > 0
        if name.startswith("torch_save"):
            assert e["files"] == e["snapshots"]
        lo, med, hi = (e["total_ratio"][k] for k in ("min", "median", "max"))
        assert lo <= med <= hi
    assert v["floor_buffered_10"]["io_path"] == "buffered"
    assert g["bare_copy_ms"]["median"] > 0

    # the verdicts are a function of the measurements, and say what the numbers say
    assert bench.verdicts(results) == results["verdicts"]
    ver = results["verdicts"]
    assert set(ver) == {"every10", "every1", "blocking", "close", "growth"}
    for row in ver["every10"]["rows"]:
        suffix = {bench.DEFAULT_COMPRESSION: "", "none": "_none"}.get(
            row["compression"], "_background"
        )
        added = v["hyperlapse_10" + suffix]["total_ratio"]["median"] - 1
        floor = v["floor_buffered_10"]["total_ratio"]["median"] - 1
        assert math.isclose(row["hyperlapse_added"], added)
        assert row["met"] == (added <= 1.25 * floor and added <= 0.05)
    for row in ver["blocking"]["rows"]:
        assert row["met"] == (row["blocked_ms_per_snapshot"] <= 1.5 * row["bare_copy_ms"])
    for name, t in ver.items():
        judged = [r for r in t["rows"] if r["compression"] == bench.DEFAULT_COMPRESSION]
        assert judged and t["met"] == all(r["met"] for r in judged), name

    close = results["close"]
    for e in close["close_1mb"].values():
        assert e["snapshots"] == 20 and e["bytes_per_snapshot"] == (512 * 512 + 512) * 4
        assert e["close_s"]["median"] > 0 and e["dropped"] == 0
    for e in close["long"]:
        assert e["verified"] and e["snapshots"] == 3000 and e["dropped"] == 0
        assert set(e["per_point"]) == {"100", "2000"}
        assert all(len(p["windows"]) == bench.WINDOWS for p in e["per_point"].values())
        for p in e["per_point"].values():  # CPU per snapshot = training thread + writer
            cpu = p["cpu_ms_per_snapshot"]["median"]
            assert cpu > 0 and cpu >= p["writer_cpu_ms_per_snapshot"]["min"]
    md = out.with_suffix(".md").read_text()
    assert "## Verdicts" in md and "| tiny | 20 | floor_direct_1 |" in md

    # split runs combine into the same verdicts
    merged = bench.main(["--combine", str(out), "--out", str(tmp_path / "merged.json")])
    assert merged["verdicts"] == results["verdicts"]


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
@pytest.mark.parametrize("refuses", ["open", "pwrite"])
def test_direct_floor_falls_back_and_says_so(tmp_path, load_benchmark, monkeypatch, refuses):
    """Where the filesystem refuses O_DIRECT (e.g. tmpfs before Linux 6.6), the direct floor
    writes buffered, says so, and its bytes still land."""
    bench = load_benchmark("recording_overhead")
    real_open, real_pwrite, direct_fds = os.open, os.pwrite, set()

    def fake_open(path, flags, *args):
        if flags & os.O_DIRECT and refuses == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args)
        (direct_fds.add if flags & os.O_DIRECT else direct_fds.discard)(fd)  # fds are reused
        return fd

    def fake_pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(bench.os, "open", fake_open)
    monkeypatch.setattr(bench.os, "pwrite", fake_pwrite)
    params = [torch.randn(7, 5), torch.randn(5)]
    floor = bench.Floor(params, tmp_path / "floor.bin", snapshots=3, direct=True)
    for k in range(3):
        params[0].add_(k)  # verify() compares the file's last snapshot with these values
        floor.snapshot()
    floor.finish()
    assert not floor.direct and floor.note.startswith("buffered:") and "O_DIRECT" in floor.note
    assert refuses in floor.note
    assert floor.written == 3 * floor.nbytes == 3 * 40 * 4
    assert floor.verify()


def test_direct_floor_writes_pages(tmp_path, load_benchmark):
    """With O_DIRECT, whole aligned pages are written and read back bit for bit."""
    bench = load_benchmark("recording_overhead")
    params = [torch.randn(300, 5), torch.randn(5)]
    floor = bench.Floor(params, tmp_path / "floor.bin", snapshots=2, direct=True)
    floor.snapshot()
    params[1].mul_(2.0)
    floor.snapshot()
    floor.finish()
    if not floor.direct:
        pytest.skip(f"the filesystem of tmp_path refuses O_DIRECT: {floor.note}")
    assert floor.length == floor.stride == 2 * bench.PAGE  # 6,020 bytes round up to 2 pages
    assert floor.written == 2 * floor.length and floor.verify()
