"""`hyperlapse board`: latency of a new snapshot, first load of a large folder, server memory.

Measured against a real `hyperlapse board` process (uvicorn + Starlette), as a user runs it:

1. **latency**: a recorder in another process commits one snapshot every `--interval` s; the
   API (`GET /api/runs`) is polled every 50 ms. Per snapshot: seconds from its capture
   (`wall_time`, an upper bound on the commit time) until the API lists it, and until it is
   analysed, minus the analysis' own time (`timing.total` of its report). The pages poll the
   API every second, so a page shows a snapshot at most 1 s after the API.
2. **first load**: a folder of R runs x S snapshots (small MLPs recorded with the
   TrajectoryRecorder). A fresh board is started per repeat; times: `GET /api/runs` (all runs,
   first request), `GET /api/runs/<run>/metrics` (one 1,000-snapshot run), and in headless
   chromium the run list filled and a run page's metric chart drawn. Baseline in the same
   repeats, interleaved: a folder of 1 run x S snapshots.
3. **memory**: resident memory of the board process (`--no-analysis`: the serving path) after
   serving every endpoint 20 times, for one run of N snapshots with its analysis outputs (a
   real analysis of 8 snapshots, its report lines and embedding rows repeated to N), as a
   ratio to the smallest N.

Usage: python benchmarks/board_latency.py [--quick] [--screenshot docs/board-run.png]
Results: benchmarks/results/board_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hyperlapse import TrajectoryRecorder

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def record(path: Path, snapshots: int, *, seed: int = 0, pause_s: float = 0.0,
           flush_every_s: float | None = 2.0) -> None:
    """A 2-16-2 tanh MLP on moons-like data, one snapshot per step, loss and val logged."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    with TrajectoryRecorder(path, model, every=1, flush_every_s=flush_every_s) as rec:
        rec.attach(opt)
        for step in range(snapshots - 1):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            metrics = {"loss": loss.item()}
            if step % 10 == 0:
                metrics["val_acc"] = float((model(x).argmax(1) == y).float().mean())
            rec.log(**metrics)
            if pause_s:
                time.sleep(pause_s)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    body = urllib.request.urlopen(url, timeout=60).read()
    return time.perf_counter() - t0, body


class Board:
    """A `hyperlapse board` subprocess."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hyperlapse.cli", "board", str(folder), "--port",
             str(self.port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(self.url + "/api/board", timeout=2).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the board did not start")

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


# ------------------------------------------------------------------------------------ latency
def latency(work: Path, snapshots: int, interval: float) -> dict:
    from hyperlapse import open_trajectory
    from hyperlapse.report.jsonl import read_reports

    folder = work / "live"
    folder.mkdir()
    board = Board(folder)
    seen: dict[int, float] = {}
    analysed: dict[int, float] = {}
    writer = subprocess.Popen(
        [sys.executable, __file__, "--record", str(folder / "live.zarr"), str(snapshots),
         str(interval)], stdout=subprocess.DEVNULL)
    try:
        end = time.monotonic() + snapshots * interval + 180
        while time.monotonic() < end:
            _, body = _get(board.url + "/api/runs")
            now = time.time()
            for run in json.loads(body):
                for i in range(run["snapshots"]):
                    seen.setdefault(i, now)
                for i in range(run["analysed"]):
                    analysed.setdefault(i, now)
            if writer.poll() is not None and len(analysed) >= snapshots:
                break
            time.sleep(0.05)
    finally:
        writer.wait()
        board.stop()
    traj = open_trajectory(folder / "live.zarr")
    wall = traj.wall_time
    reports = read_reports(folder / ".hyperlapse-board" / "live.zarr" / "reports.jsonl",
                           check=False)
    api = [seen[i] - wall[i] for i in range(len(traj)) if i in seen]
    own = [float(r["timing"]["total"]) for r in reports]
    ana = [analysed[i] - wall[i] for i in range(len(reports)) if i in analysed]
    beyond = [a - o for a, o in zip(ana, own, strict=False)]
    return {
        "snapshots": len(traj), "interval_s": interval,
        "api_s": stats(api), "analysed_s": stats(ana), "analysis_own_s": stats(own),
        "analysed_minus_analysis_s": stats(beyond),
        "within_2s_plus_analysis": sum(b <= 2.0 for b in beyond) / max(len(beyond), 1),
        "each": {"api_s": api, "analysed_minus_analysis_s": beyond, "analysis_own_s": own},
        "page_bound_s": "API time + up to 1 s (the pages poll every second)",
    }


# ------------------------------------------------------------------------------------ first load
def _browser_load(url: str, runs: int, run_name: str) -> dict[str, float]:
    """Seconds until the run list is filled, until a run page's metric chart is drawn in a
    fresh browser (plotly.js compiled cold), and the same after the list was open 3 s (the
    list page compiles plotly.js in the background)."""
    from playwright.sync_api import sync_playwright

    drawn = ("document.getElementById('metric-loss') && "
             "document.getElementById('metric-loss').data")
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(url + "/run?name=" + run_name)
        page.wait_for_function(drawn, timeout=60_000)
        out["page_run_cold_s"] = time.perf_counter() - t0
        browser.close()
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(url + "/")
        page.wait_for_function(f"document.querySelectorAll('#runs tbody tr').length >= {runs}",
                               timeout=60_000)
        out["page_list_s"] = time.perf_counter() - t0
        time.sleep(3.0)
        t0 = time.perf_counter()
        page.goto(url + "/run?name=" + run_name)
        page.wait_for_function(drawn, timeout=60_000)
        out["page_run_after_list_s"] = time.perf_counter() - t0
        browser.close()
    return out


def first_load(work: Path, runs: int, snapshots: int, repeats: int) -> dict:
    big, one = work / "big", work / "one"
    big.mkdir()
    one.mkdir()
    t0 = time.perf_counter()
    for r in range(runs):
        record(big / f"run{r:02d}.zarr", snapshots, seed=r)
    generate = time.perf_counter() - t0
    shutil.copytree(big / "run00.zarr", one / "run00.zarr")
    browser = os.path.exists(CHROMIUM)
    out: dict = {"runs": runs, "snapshots": snapshots, "generate_s": generate, "browser": browser}
    rows: dict[str, dict[str, list[float]]] = {"folder": {}, "baseline_1_run": {}}
    for _ in range(repeats):
        for label, folder, n in (("folder", big, runs), ("baseline_1_run", one, 1)):
            board = Board(folder)  # analysing in the background, as a fresh board does
            try:
                t, body = _get(board.url + "/api/runs")
                assert len(json.loads(body)) == n
                rows[label].setdefault("api_runs_s", []).append(t)
                t, _ = _get(board.url + "/api/runs/run00.zarr/metrics")
                rows[label].setdefault("api_metrics_s", []).append(t)
                if browser:
                    for key, value in _browser_load(board.url, n, "run00.zarr").items():
                        rows[label].setdefault(key, []).append(value)
            finally:
                board.stop()
            shutil.rmtree(folder / ".hyperlapse-board", ignore_errors=True)
    out["seconds"] = {label: {k: stats(v) for k, v in r.items()} for label, r in rows.items()}
    out["ratio_folder_over_1_run"] = {
        k: statistics.median(rows["folder"][k]) / statistics.median(rows["baseline_1_run"][k])
        for k in rows["folder"]}
    return out


# ------------------------------------------------------------------------------------ memory
def _analysis_of(store: Path, out: Path, n: int, template: Path) -> None:
    """Outputs of an analysis of ``n`` snapshots: the template's real report lines and
    embedding rows, repeated (steps renumbered)."""
    import zarr

    lines = (template / "reports.jsonl").read_text().splitlines()
    src = zarr.open_group(str(template / "embeddings.zarr"), mode="r")
    out.mkdir(parents=True)
    with open(out / "reports.jsonl", "w") as f:
        for i in range(n):
            rep = json.loads(lines[i % len(lines)])
            rep["index"], rep["step"] = i, i
            f.write(json.dumps(rep) + "\n")
    dst = zarr.open_group(str(out / "embeddings.zarr"), mode="w")
    attrs = dict(src.attrs)
    attrs.update(committed=n, source_index=list(range(n)))
    dst.attrs.update(attrs)
    z = np.asarray(src["z"][: len(lines)])
    arr = dst.create_array("z", shape=(n, *z.shape[1:]), chunks=(1, *z.shape[1:]), dtype="f4")
    arr[:] = np.concatenate([z] * (n // len(z) + 1))[:n]
    dst.create_array("step", shape=(n,), chunks=(1024,), dtype="i8")[:] = np.arange(n)
    for name in ("node_layer", "node_index", "node_type"):
        a = np.asarray(src[name][...])
        dst.create_array(name, shape=a.shape, chunks=a.shape, dtype="i8")[:] = a


def memory(work: Path, sizes: list[int], repeats: int) -> dict:
    from hyperlapse.online.runner import RunAnalysis

    tdir = work / "template"
    record(tdir / "t.zarr", 8)
    run = RunAnalysis(tdir / "t.zarr", tdir / "out")
    run.advance()
    run.close(page=False)
    folders = {}
    for n in sizes:
        folder = work / f"mem{n}"
        record(folder / "run.zarr", n, flush_every_s=None)
        _analysis_of(folder / "run.zarr", folder / ".hyperlapse-board" / "run.zarr", n,
                     tdir / "out")
        folders[n] = folder
    rss: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:  # interleaved
            board = Board(folders[n], "--no-analysis")
            try:
                for _ in range(20):
                    for path in ("/api/runs", "/api/runs/run.zarr/metrics",
                                 "/api/runs/run.zarr/reports",
                                 f"/api/runs/run.zarr/embedding?i={n - 1}",
                                 f"/api/runs/run.zarr/volume?i={n - 1}"):
                        _get(board.url + path)
                rss[n].append(board.rss() / 2 ** 20)
            finally:
                board.stop()
    base = statistics.median(rss[sizes[0]])
    return {"rss_mib": {str(n): stats(v) for n, v in rss.items()},
            "ratio_to_smallest": {str(n): statistics.median(v) / base for n, v in rss.items()}}


def screenshot(work: Path, path: Path) -> None:
    """A run page of a finished, analysed moons run (plus a second run for the list)."""
    from playwright.sync_api import sync_playwright

    folder = work / "shot"
    folder.mkdir()
    record(folder / "moons.zarr", 60, pause_s=0.0)
    board = Board(folder)
    try:
        end = time.monotonic() + 600
        while time.monotonic() < end:
            runs = json.loads(_get(board.url + "/api/runs")[1])
            if runs and runs[0]["analysed"] >= 60:
                break
            time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1800})
            page.goto(board.url + "/run?name=moons.zarr")
            page.wait_for_function("document.getElementById('disk').data && "
                                   "!document.getElementById('volume').hidden", timeout=60_000)
            page.uncheck("#follow")
            page.evaluate("() => { const s = document.getElementById('slider'); s.value = 40; "
                          "s.dispatchEvent(new Event('input')); }")
            page.wait_for_function("document.getElementById('frame').textContent"
                                   ".startsWith('snapshot 41 ')", timeout=60_000)
            time.sleep(1.0)
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        board.stop()


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "note": "2-core shared machine, loaded by other engineers' work (tests, benchmarks "
                    "and builds of ~6 people) while this ran: absolute times are pessimistic "
                    "and noisy"}


def write_md(res: dict, path: Path) -> None:
    lat, load, mem = res["latency"], res["first_load"], res["memory"]
    s = load["seconds"]
    lines = [
        "# `hyperlapse board`: latency, first load, memory",
        "",
        f"Machine: {res['machine']['cpu_count']} cores, {res['machine']['platform']}, "
        f"torch {res['machine']['torch']}. {res['machine']['note']}.",
        "Command: `nice -n 5 .venv/bin/python benchmarks/board_latency.py`; raw numbers in "
        "`board_latency.json`. Medians (min-max) over the repeats.",
        "",
        "## A committed snapshot on the API and analysed",
        "",
        f"A recorder in another process, one snapshot every {lat['interval_s']} s "
        f"({lat['snapshots']} snapshots, 2-16-2 MLP); board with its defaults (one analysis "
        "worker, one torch thread).",
        "",
        "| seconds after capture | median | min | max |",
        "|---|---|---|---|",
    ]
    for key, label in (("api_s", "listed by `GET /api/runs`"),
                       ("analysed_s", "analysed (report + embedding written)"),
                       ("analysis_own_s", "the analysis' own time (`timing.total`)"),
                       ("analysed_minus_analysis_s", "analysed, minus the analysis' own time")):
        v = lat[key]
        lines.append(f"| {label} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} |")
    lines += [
        "",
        f"Share of snapshots analysed within 2 s plus their analysis time: "
        f"{100 * lat['within_2s_plus_analysis']:.0f} %. The pages poll the API every second: "
        "a page shows a snapshot at most 1 s after the API lists it.",
        "",
        f"## First load: {load['runs']} runs x {load['snapshots']} snapshots",
        "",
        f"Generated in {load['generate_s']:.0f} s with the TrajectoryRecorder. A fresh board per "
        "repeat (its analyser starts at once and competes for the CPU); baseline: 1 run of the "
        "same length, interleaved.",
        "",
        "| seconds | folder | 1 run (baseline) | ratio |",
        "|---|---|---|---|",
    ]
    names = {"api_runs_s": "`GET /api/runs` (first request)",
             "api_metrics_s": "`GET /api/runs/<run>/metrics` (1,000 snapshots)",
             "page_list_s": "run list page, table filled (chromium)",
             "page_run_cold_s": "run page opened first, metric chart drawn (fresh chromium: "
                                "plotly.js compiled cold)",
             "page_run_after_list_s": "run page after the list was open 3 s (plotly.js "
                                      "warmed by the list)"}
    for key, label in names.items():
        if key in s["folder"]:
            a, b = s["folder"][key], s["baseline_1_run"][key]
            lines.append(f"| {label} | {a['median']:.3f} ({a['min']:.3f}-{a['max']:.3f}) | "
                         f"{b['median']:.3f} ({b['min']:.3f}-{b['max']:.3f}) | "
                         f"{load['ratio_folder_over_1_run'][key]:.2f} |")
    lines += ["", "## Server memory vs snapshots", "",
              "Resident memory of the board process (`--no-analysis`: the serving path) after "
              "20 rounds of every endpoint on one run of N snapshots with its analysis outputs.",
              "", "| N snapshots | RSS MiB | ratio to the smallest N |", "|---|---|---|"]
    for n, v in mem["rss_mib"].items():
        lines.append(f"| {n} | {v['median']:.0f} ({v['min']:.0f}-{v['max']:.0f}) | "
                     f"{mem['ratio_to_smallest'][n]:.3f} |")
    lines += ["", "Not covered: the analyser's own memory (`RunAnalysis` keeps each analysed "
              "run's reports in memory for its report.html; see docs/board.md)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "board_latency.json"))
    ap.add_argument("--screenshot", default=None, help="also save a run page PNG here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    q = args.quick
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        res = {"machine": machine(), "quick": q}
        res["latency"] = latency(work, 4 if q else 30, 0.3 if q else 1.0)
        res["first_load"] = first_load(work, 2 if q else 20, 30 if q else 1000, 1 if q else 5)
        res["memory"] = memory(work, [20, 60] if q else [250, 1000, 4000], 1 if q else 3)
        if args.screenshot:
            screenshot(work, Path(args.screenshot))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    write_md(res, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return res


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--record":  # the live writer of latency()
        torch.set_num_threads(1)
        record(Path(sys.argv[2]), int(sys.argv[3]), pause_s=float(sys.argv[4]),
               flush_every_s=0.05)
    else:
        main()
