"""One reporting session: an OnlineEncoder, ``reports.jsonl``, a terminal line per snapshot,
and at the end the plots and ``report.html``. Shared by :class:`~hyperlapse.online.live.LiveReport`
(in-process), :func:`~hyperlapse.online.analyze.analyze_store` and
:func:`~hyperlapse.online.analyze.watch_store` (from a store).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..progress import write as write_above_progress
from ..report.jsonl import ReportWriter
from ..report.schema import Report
from .analyzer import OnlineEncoder

__all__ = ["ReportSession", "summary_line", "auto_geometry_every"]

#: Snapshots whose embeddings are kept for the Poincare-disk figure: the first, every power of
#: two, and the last (so memory grows as log T).
_DISK_PANELS = 4


def auto_geometry_every(in_features: int) -> int:
    """Geometry every snapshot for inputs of at most 64 dimensions, else every 10th."""
    return 1 if in_features <= 64 else 10


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _vs(scores: dict, key: str, baseline: str, label: str, spec: str = ".3f") -> str:
    """'label model/baseline' (a score is never printed without its baseline)."""
    base = ((scores.get("baselines") or {}).get(baseline) or {}).get(key)
    if scores.get(key) is None or base is None:
        return f"{label} -"
    return f"{label} {format(scores[key], spec)}/{format(base, spec)}"


def summary_line(report: Report) -> str:
    """The one-line terminal summary of a report. Each forecast score is printed as
    ``model/baseline`` on the same candidates (persistence for links and new links, copying
    the signs for sign accuracy); drift is the node-weighted mean between snapshots, with its
    noise floor when measured.

    Example:
        >>> summary_line({"index": 3, "step": 30, "metrics": {"loss": 0.5}, "layers": [
        ...     {"type": "hidden", "radius_mean": 1.0, "drift_mean": 0.1, "drift_noise": 0.04,
        ...      "width": 4}],
        ...     "scores": {"link_auc": 0.9, "new_link_ap": None, "sign_acc": 0.8, "baselines":
        ...                {"persistence": {"link_auc": 0.95, "sign_acc": 0.97}}},
        ...     "hubs": {"turnover": 1}, "timing": {"total": 0.05}})
        '#3    step 30     loss 0.5     radius 1.000  drift 0.1000 (floor 0.0400)  link AUC 0.900/0.950  new-link AP -  sign acc 0.800/0.970  central +1  50 ms'
    """  # noqa: E501
    metrics = report.get("metrics") or {}
    loss = next((metrics[k] for k in ("loss", "train_loss") if metrics.get(k) is not None), None)
    hidden = [layer for layer in report["layers"] if layer["type"] == "hidden"] or report["layers"]
    width = sum(layer["width"] for layer in hidden)
    radius = sum(layer["radius_mean"] * layer["width"] for layer in hidden) / width

    def mean(key: str) -> float | None:
        values = [layer.get(key) for layer in hidden]
        if None in values:
            return None
        return sum(v * layer["width"] for v, layer in zip(values, hidden, strict=True)) / width

    drift, noise = mean("drift_mean"), mean("drift_noise")
    drift_text = _fmt(drift, ".4f") + ("" if noise is None or drift is None
                                       else f" (floor {noise:.4f})")
    s = report["scores"]
    turnover = report["hubs"].get("turnover")
    return (
        f"#{report['index']:<4d} step {report['step']:<6d} loss {_fmt(loss, '<7.4g')} "
        f"radius {radius:.3f}  drift {drift_text}  {_vs(s, 'link_auc', 'persistence', 'link AUC')}"
        f"  {_vs(s, 'new_link_ap', 'persistence', 'new-link AP')}  "
        f"{_vs(s, 'sign_acc', 'persistence', 'sign acc')}  "
        f"central {'+' + str(turnover) if turnover is not None else '-'}  "
        f"{1000 * report['timing']['total']:.0f} ms"
    )


class ReportSession:
    """Process snapshots one by one into ``out/reports.jsonl``; :meth:`finish` draws the page.

    Args:
        out: output folder.
        architecture: ``describe_mlp`` of the model.
        quiet: no terminal output.
        plots: draw the PNGs and ``report.html`` at :meth:`finish`.
        points, labels: optional 2-D data drawn on the volume-element maps.
        volume_layer: hidden layer of the volume-element maps (default: the last hidden one).
        volume_grid: points per side of the volume-element maps.
        title: of the HTML page.
        append: keep an existing ``reports.jsonl`` (a restart: see :meth:`load_state`).
        keep_reports: hold every report in :attr:`reports` (``False``: only count them and
            read them back from ``reports.jsonl`` for the page, so a long-lived follower's
            memory does not grow with the run; :class:`~hyperlapse.online.runner.RunAnalysis`).
        **online: arguments of :class:`~hyperlapse.online.analyzer.OnlineEncoder`.
    """

    def __init__(
        self,
        out: str | Path,
        architecture: Mapping[str, Any],
        *,
        quiet: bool = False,
        plots: bool = True,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        volume_layer: int | None = None,
        title: str = "hyperlapse report",
        total: int | None = None,
        volume_grid: int = 64,
        append: bool = False,
        keep_reports: bool = True,
        **online: Any,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        widths = list(architecture["widths"])
        online.setdefault("geometry_every", auto_geometry_every(widths[0]))
        if "geometry_k" not in online:
            from ..geometry.pullback import default_top_k

            online["geometry_k"] = default_top_k(widths[0])
        if online.get("probes") is None and widths[0] > 2 and online["geometry_every"]:
            from .analyzer import default_probes

            online["probes"] = default_probes(widths[0], num=64, seed=online.get("seed", 0))
        if points is not None and online.get("data_probes") is None:
            online["data_probes"] = points  # geometry and importance also on the data
        self.online = OnlineEncoder(architecture, **online)
        self.architecture = dict(architecture)
        self.quiet = quiet
        self.plots = plots
        self.points, self.labels = points, labels
        self.volume_layer = volume_layer or max(len(widths) - 2, 1)
        self.title = title
        self.total = total
        self.volume_grid = volume_grid
        #: the reports of this session, held in memory when ``keep_reports`` (else ``[]``: a
        #: long-lived follower such as the board reads them back from ``reports.jsonl`` only
        #: for the page, so its memory does not grow with the run)
        self.reports: list[Report] = []
        self.keep_reports = bool(keep_reports)
        #: reports written to ``reports.jsonl`` (kept or not)
        self.count = 0
        self.disk: dict[int, Tensor] = {}
        self.disk_hubs: dict[int, list[int]] = {}
        self.first_state: dict[str, Tensor] | None = None
        self.last_state: dict[str, Tensor] | None = None
        self.writer = ReportWriter(self.out / "reports.jsonl", append=append)
        self.seconds = 0.0
        self.html: Path | None = None

    def process(
        self,
        index: int,
        step: int,
        state: Mapping[str, Tensor],
        metrics: Mapping[str, Any] | None = None,
    ) -> Report:
        """Encode one snapshot, append its report, print its line; returns the report."""
        start = time.perf_counter()
        report = self.online.update(state, step, metrics)
        if index != report["index"]:
            report["source_index"] = int(index)  # snapshots were dropped upstream
        self.writer.write(report)
        self.count += 1
        if self.keep_reports:
            self.reports.append(report)
        keep = {k: v.detach().clone() for k, v in state.items()}
        if self.first_state is None:
            self.first_state = keep
        self.last_state = keep
        t = report["index"]
        if t == 0 or (t & (t - 1)) == 0:
            self.disk[report["step"]] = self.online.z.clone()
            self.disk_hubs[report["step"]] = report["hubs"]["nodes"]
        self._last = (report["step"], self.online.z.clone(), report["hubs"]["nodes"])
        self.seconds += time.perf_counter() - start
        if not self.quiet:
            line = summary_line(report)
            if self.total:
                line = f"[{report['index'] + 1}/{self.total}] " + line
            write_above_progress(line)
        return report

    # ----------------------------------------------------------------------------- restart
    def state(self) -> dict[str, Any]:
        """What :meth:`load_state` needs to continue this session in a new process (the
        analyzer itself included); the reports are re-read from ``reports.jsonl``."""
        return {
            "online": self.online,
            "disk": self.disk,
            "disk_hubs": self.disk_hubs,
            "first_state": self.first_state,
            "last_state": self.last_state,
            "last": getattr(self, "_last", None),
            "seconds": self.seconds,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` of an earlier session on the same run and options."""
        self.online = state["online"]
        self.disk, self.disk_hubs = dict(state["disk"]), dict(state["disk_hubs"])
        self.first_state, self.last_state = state["first_state"], state["last_state"]
        if state["last"] is not None:
            self._last = state["last"]
        self.seconds = float(state["seconds"])

    def truncate_reports(self, count: int) -> None:
        """Keep the first ``count`` reports of ``reports.jsonl`` (a restart: rows written
        after the checkpoint are analysed again), and hold them in :attr:`reports`."""
        from ..report.jsonl import read_reports

        path = self.out / "reports.jsonl"
        self.writer.close()
        kept = read_reports(path, check=False)[:count] if path.is_file() else []
        if len(kept) < count:
            raise ConfigError(
                f"Expected {count} reports in '{path}' to continue the analysis, found "
                f"{len(kept)}. Delete '{self.out}' to analyse the run from the start."
            )
        tmp = path.with_name(path.name + ".partial")
        with ReportWriter(tmp) as writer:  # then renamed: a crash here keeps the old file
            for report in kept:
                writer.write(report)
        os.replace(tmp, path)
        self.writer = ReportWriter(path, append=True)
        self.count = len(kept)
        self.reports = kept if self.keep_reports else []

    def close_writer(self) -> None:
        self.writer.close()

    def finish(self, summary: Mapping[str, Any] | None = None) -> Path | None:
        """Close ``reports.jsonl``; draw the plots and ``report.html`` (returns its path)."""
        self.writer.close()
        if not self.keep_reports and self.plots and self.count:
            from ..report.jsonl import read_reports

            self.reports = read_reports(self.out / "reports.jsonl", check=False)
        if not self.plots or not self.reports:
            return None
        from ..report import plots as P
        from ..report.html import render_html

        out = self.out
        images: dict[str, Path] = {}
        captions: dict[str, str] = {}
        images["Hyperbolic radius per layer"] = P.plot_radius(self.reports, out / "radius.png")
        captions["Hyperbolic radius per layer"] = (
            "Measures: mean distance to the origin of the Poincare ball per layer (band: one "
            "std); smaller = more central in the embedding. Good: layers separate and settle as "
            "training converges. Baseline: none. Whether the radius says more than a neuron's "
            "weight norm is measured on this run where ablations are computed: the summary's "
            "Spearman(radius, importance) and its partial value given the weight norms (near 0: "
            "read the radius as a norm proxy)."
        )
        if len(self.reports) > 1:
            images["Drift"] = P.plot_drift(self.reports, out / "drift.png")
            captions["Drift"] = (
                "Measures: how far neurons moved in the embedding between snapshots, beyond the "
                "noise floor (the drift the pipeline shows when the weights do not change, "
                "measured on this run at its recording interval), per optimizer step: "
                "sqrt(drift^2 - floor^2) / steps. Intervals whose drift is under the floor are "
                "hollow markers at the bottom: jitter of the embedding, not change in the "
                "network. Good: large early, small once training settles. Compare runs recorded "
                "at the same interval only: the displacement between snapshots grows slower "
                "than the steps between them (10x the interval gave 2.3x the drift above the "
                "floor on a synthetic run, docs/reports.md), so a run recorded every 2 steps "
                "reads about 4x faster per step than the same run recorded every 20."
            )
            images["Prediction scores"] = P.plot_scores(self.reports, out / "scores.png")
            captions["Prediction scores"] = (
                "Measures: average precision of forecasting snapshot t's new links (left) and "
                "sign flips (right) from the state at t-1, held out, each beside its baseline "
                "on the same candidates (dashed: persistence for new links, the normalised "
                "extrapolation for sign flips) and the base rate (dotted: a random ranking). "
                "Good: the solid line above the dashed one. The table 'Forecasts beside their "
                "baselines' gives every score with its baseline."
            )
        step, z, hubs = self._last
        disk = dict(self.disk)
        disk_hubs = dict(self.disk_hubs)
        disk[step], disk_hubs[step] = z, hubs
        chosen = _spread(sorted(disk), _DISK_PANELS)
        images["Poincare disk"] = P.plot_disk(
            {s: disk[s] for s in chosen},
            self.online.node_table()["node_layer"],
            out / "disk.png",
            c=self.online.curvature or 1.0,
            hubs={s: disk_hubs[s] for s in chosen},
        )
        captions["Poincare disk"] = (
            "Measures: where neurons sit in the ball, coloured by layer; central neurons "
            "(smallest radius: a proxy for large weight norm, not for importance) ringed. Good: "
            "layers form separate shells. Baseline: none. For d > 2 the points are "
            "projected on the two principal tangent directions at the origin and mapped back."
        )
        if self.architecture["widths"][0] == 2 and self.first_state is not None:
            images["Input-space volume element"] = self._volume_maps(out / "volume.png")
            captions["Input-space volume element"] = (
                f"Measures: log sqrt(det g) of hidden layer {self.volume_layer}'s pullback "
                f"metric over the input plane (how much the layer stretches input space), "
                f"decision boundary in cyan, at the first and the last snapshot, on one shared "
                f"colour scale. Good: a bright band along the boundary after training. Baseline: "
                f"the first snapshot. The summary gives this run's correlation of the volume "
                f"with boundary closeness on the probes (and on the data points when given)."
            )
        rows = {"output folder": str(out), "encoder": self.online.mode}
        if self.online.data_probes is not None:
            rows["data probes"] = (
                f"{self.online.data_probes.shape[0]} points given (points=): geometry and "
                f"neuron importance also measured on them"
            )
        if not self.online.activations_known:
            rows["activations"] = (
                "activations unknown: input-space geometry and neuron ablations skipped"
            )
        steps = [r["step"] for r in self.reports]
        gaps = sorted(b - a for a, b in zip(steps[:-1], steps[1:], strict=True))
        if gaps:
            rows["recording interval"] = (
                f"{gaps[len(gaps) // 2]} optimizer steps between snapshots (median); drift per "
                f"step compares only between runs recorded at the same interval"
            )
        rows.update(summary or {})
        rows["online seconds / snapshot"] = self.seconds / len(self.reports)
        self.html = render_html(
            self.reports, images, out / "report.html", title=self.title, summary=rows,
            captions=captions,
        )
        return self.html

    def _volume_maps(self, path: Path) -> Path:
        from ..geometry.pullback import (
            feature_map,
            grid_probes,
            jacobian,
            log_volume_element,
            mlp_forward,
        )
        from ..report.plots import plot_volume_maps

        if self.points is not None:
            lo = self.points.min(0).values.double() - 0.5
            hi = self.points.max(0).values.double() + 0.5
        else:
            lo, hi = torch.tensor([-3.0, -3.0]), torch.tensor([3.0, 3.0])
        n = self.volume_grid
        probes, xs, ys = grid_probes((float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1])), n)
        panels = []
        for title, state in (
            (f"step {self.reports[0]['step']} (first)", self.first_state),
            (f"step {self.reports[-1]['step']} (last)", self.last_state),
        ):
            with torch.no_grad():
                phi = feature_map(state, self.architecture, self.volume_layer)
                lv = log_volume_element(jacobian(phi, probes))
                logits = mlp_forward(state, self.architecture, probes, dtype=torch.float64)[-1]
            panels.append(
                {
                    "title": title,
                    "xs": xs,
                    "ys": ys,
                    "log_volume": lv.reshape(n, n),
                    "logits": logits.reshape(n, n, -1),
                }
            )
        return plot_volume_maps(panels, path, points=self.points, labels=self.labels)


def _spread(items: list[int], k: int) -> list[int]:
    if len(items) <= k:
        return items
    picks = {round(i * (len(items) - 1) / (k - 1)) for i in range(k)}
    return [items[i] for i in sorted(picks)]
