"""Recording overhead after the recorder rebuild (issue 16) against the code before it, in the
same run, interleaved.

Each round runs ``recording_overhead.py`` (one repeat of the chosen groups and variants, with
its own ``bare`` baseline) once from the old checkout and once from this one, in alternating
order, each in a fresh interpreter whose ``PYTHONPATH`` points at that checkout's ``src``. The
ratio of every variant to the bare loop of the same invocation is collected per round; the
summary gives medians and min-max over the rounds for both codes, and the new/old ratio of the
medians. torch's default thread count is used (what users get).

Run::

    .venv/bin/python benchmarks/recording_overhead_rebuild.py --old /work/main --rounds 4
    .venv/bin/python benchmarks/recording_overhead_rebuild.py --combine a.json b.json

Results: ``benchmarks/results/recording_overhead_rebuild.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "recording_overhead_rebuild.json"
VARIANTS = "hyperlapse_10,hyperlapse_1,hyperlapse_10_background,hyperlapse_1_background"


def run_one(root: Path, group: str, args: argparse.Namespace, tmp: Path, out: Path
            ) -> dict[str, Any]:
    model, steps = group.split(":")
    cmd = [
        sys.executable, str(root / "benchmarks" / "recording_overhead.py"),
        "--models", model, "--lengths", steps, "--variants", args.variants,
        "--repeats", "1", "--no-close", "--no-long", "--dir", str(tmp), "--out", str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    subprocess.run(cmd, check=True, env=env, cwd=root, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{group/variant: {"loop": x, "total": y, "blocked_ms": z}}`` against that run's bare."""
    rows: dict[str, dict[str, float]] = {}
    for name, group in result["groups"].items():
        variants = group["variants"]
        bare = variants["bare"]["runs"][0]["loop_s"]
        for variant, data in variants.items():
            if variant == "bare" or not data.get("runs"):
                continue
            run = data["runs"][0]
            rows[f"{name}/{variant}"] = {
                "loop": run["loop_s"] / bare,
                "total": run["total_s"] / bare,
                "blocked_ms": 1e3 * run.get("blocked_s_per_snapshot", float("nan")),
                "dropped": run.get("dropped", 0),
            }
    return rows


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default=None, help="checkout of the code before the rebuild")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--groups", default="mlp:150,tiny:2000",
                    help="comma-separated model:steps groups of recording_overhead.py")
    ap.add_argument("--variants", default=VARIANTS)
    ap.add_argument("--note", default="2-core machine shared with ~6 engineers' tests and "
                    "benchmarks during the run (load average 6-9): absolute times are noisy; "
                    "compare the ratios, old and new, taken in alternating rounds.")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--combine", nargs="+", default=None,
                    help="merge the samples of earlier result files (more rounds)")
    args = ap.parse_args(argv)
    if args.combine:
        return combine(args, [json.loads(Path(p).read_text()) for p in args.combine])
    if args.old is None:
        ap.error("--old is required (the checkout of the code before the rebuild)")
    codes = {"old": Path(args.old).resolve(), "new": ROOT}
    tmp = Path(tempfile.mkdtemp(prefix=".rebuild-bench-", dir=HERE))
    samples: dict[str, dict[str, list[dict[str, float]]]] = {"old": {}, "new": {}}
    started = time.perf_counter()
    try:
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for group in args.groups.split(","):
                for code in order:
                    t0 = time.perf_counter()
                    out = tmp / f"{code}{r}.json"
                    result = run_one(codes[code], group, args, tmp, out)
                    for key, row in ratios(result).items():
                        samples[code].setdefault(key, []).append(row)
                    print(f"round {r} {group} {code}: {time.perf_counter() - t0:.0f} s",
                          flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return finish(args, codes, samples, time.perf_counter() - started, args.rounds)


def combine(args: argparse.Namespace, parts: list[dict[str, Any]]) -> dict[str, Any]:
    samples: dict[str, dict[str, list[dict[str, float]]]] = {"old": {}, "new": {}}
    for part in parts:
        for code in ("old", "new"):
            for key, rows in part["samples"][code].items():
                samples[code].setdefault(key, []).extend(rows)
    codes = {k: Path(v) for k, v in parts[0]["codes"].items()}
    seconds = sum(p["seconds"] for p in parts)
    return finish(args, codes, samples, seconds, sum(p["rounds"] for p in parts))


def finish(args: argparse.Namespace, codes: dict[str, Path],
           samples: dict[str, dict[str, list[dict[str, float]]]], seconds: float,
           rounds: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in sorted(samples["new"]):
        entry: dict[str, Any] = {}
        for code in ("old", "new"):
            rows = samples[code].get(key, [])
            entry[code] = {m: spread([row[m] for row in rows]) for m in ("loop", "total",
                                                                          "blocked_ms")}
            entry[code]["dropped"] = sum(row["dropped"] for row in rows)
        for m in ("loop", "total"):
            entry[f"{m}_new_over_old"] = entry["new"][m]["median"] / entry["old"][m]["median"]
        summary[key] = entry
    results = {
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_end": os.getloadavg(),
            "note": args.note,
        },
        "argv": sys.argv[1:],
        "codes": {k: str(v) for k, v in codes.items()},
        "rounds": rounds,
        "seconds": seconds,
        "summary": summary,
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Recording overhead: after the recorder rebuild (issue 16) vs before, same run",
        "",
        f"{results['rounds']} rounds, old and new alternating, each a fresh "
        f"`recording_overhead.py` invocation (one repeat, its own bare baseline), torch's "
        f"default threads. Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; "
        f"{m['note']} Load average at the end: {', '.join(f'{x:.1f}' for x in m['loadavg_end'])}."
        f" Wall time of the comparison: {results['seconds']:.0f} s.",
        "",
        "Ratios are the variant's loop (or loop + close) time over the bare loop of the same "
        "invocation: median [min-max] over the rounds.",
        "",
        "| group/variant | loop old | loop new | new/old | total old | total new | new/old "
        "| blocked ms/snapshot old | new |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"

    for key, e in results["summary"].items():
        lines.append(
            f"| {key} | {cell(e['old']['loop'])} | {cell(e['new']['loop'])} | "
            f"{e['loop_new_over_old']:.3f} | {cell(e['old']['total'])} | "
            f"{cell(e['new']['total'])} | {e['total_new_over_old']:.3f} | "
            f"{e['old']['blocked_ms']['median']:.2f} | {e['new']['blocked_ms']['median']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
