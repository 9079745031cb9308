"""What the board's API returns, read from a store and its analysis on each request.

Every function streams from disk and keeps nothing between calls, so the server's memory does
not grow with the number of snapshots. Long series are decimated here (every k-th point, the
first and last kept) and say so: ``{"total": n, "shown": m, "stride": k}``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_POINTS",
    "metrics_series",
    "report_series",
    "embedding_frame",
    "volume_frame",
    "read_report",
]

#: Points per series sent to the browser unless the request asks otherwise.
DEFAULT_MAX_POINTS = 1500
#: Forecast targets of ``reports.jsonl`` ``scores``; each is shown only beside its baselines.
TARGETS = ("link", "new_link", "sign_flip")
#: How many "fastest change" phases the run page lists.
FASTEST = 3


def _num(value: Any) -> float | None:
    """A JSON-safe float: None for missing and non-finite values."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def stride_for(total: int, max_points: int) -> int:
    return max(1, math.ceil(total / max(int(max_points), 2)))


def _keep(i: int, total: int, stride: int) -> bool:
    return i % stride == 0 or i == total - 1


def _decimation(total: int, stride: int) -> dict[str, int]:
    shown = sum(1 for _ in range(0, total, stride)) + (1 if total and (total - 1) % stride else 0)
    return {"total": total, "shown": shown, "stride": stride}


def metrics_series(store: str | Path, max_points: int = DEFAULT_MAX_POINTS) -> dict[str, Any]:
    """Every logged metric of a store against the optimizer step, and the snapshot steps.

    Returns:
        ``{"snapshot_steps": [...], "snapshots": {...decimation}, "metrics": {name: {"step",
        "value", "total", "shown", "stride"}}}``; a metric's points are the snapshots where it
        was logged (NaN = not logged that time), decimated separately.
    """
    import zarr

    from ..store import format as fmt

    location = str(store)
    attrs = fmt.read_attrs(fmt.make_store(location, read_only=True), location)
    n = fmt.committed(attrs)
    steps = np.asarray(zarr.open_array(location, path=fmt.STEP, mode="r")[:n], dtype=np.int64)
    k = stride_for(n, max_points)
    idx = [i for i in range(n) if _keep(i, n, k)]
    out: dict[str, Any] = {
        "snapshot_steps": steps[idx].tolist(),
        "snapshots": _decimation(n, k),
        "metrics": {},
    }
    for name in attrs.get("metrics", []):
        values = np.asarray(
            zarr.open_array(location, path=f"{fmt.METRICS}/{name}", mode="r")[:n],
            dtype=np.float64,
        )
        logged = np.flatnonzero(np.isfinite(values))
        km = stride_for(len(logged), max_points)
        pick = [j for j in range(len(logged)) if _keep(j, len(logged), km)]
        out["metrics"][name] = {
            "step": steps[logged[pick]].tolist(),
            "value": values[logged[pick]].tolist(),
            **_decimation(len(logged), km),
        }
    return out


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """Complete JSON lines of ``reports.jsonl`` (a torn last line is skipped)."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def _scores(scores: dict[str, Any] | None) -> dict[str, Any]:
    """The model's forecast scores, each beside the baselines on the same candidates; a score
    whose baselines are missing is dropped (a number without its baseline is not shown)."""
    scores = scores or {}
    baselines = scores.get("baselines") or {}
    base_rate = scores.get("base_rate") or {}
    out: dict[str, Any] = {}
    for target in TARGETS:
        for metric in ("ap", "auc"):
            key = f"{target}_{metric}"
            model = _num(scores.get(key))
            base = {name: _num((b or {}).get(key)) for name, b in baselines.items()}
            base = {k: v for k, v in base.items() if v is not None}
            if model is None or not base:
                continue
            best = max(base, key=lambda k: base[k])
            out[key] = {"model": model, "baselines": base, "best": best,
                        "best_value": base[best], "margin": model - base[best]}
            if metric == "ap" and _num(base_rate.get(target)) is not None:
                out[key]["base_rate"] = _num(base_rate.get(target))
    # The Fermi-Dirac head scores the links among every edge: the link baselines apply.
    for metric in ("ap", "auc"):
        head = _num(scores.get(f"head_link_{metric}"))
        if head is not None and f"link_{metric}" in out:
            ref = out[f"link_{metric}"]
            out[f"head_link_{metric}"] = {**ref, "model": head, "margin": head - ref["best_value"]}
    return out


def report_series(
    analysis: str | Path, max_points: int = DEFAULT_MAX_POINTS
) -> dict[str, Any]:
    """Per-snapshot series from an analysis' ``reports.jsonl``, decimated.

    Drift is kept only against its noise floor: ``drift`` (mean ``d_c(z_t, z_{t-1})`` per
    layer), ``noise`` (the floor, carried forward from its last measurement) and
    ``excess_per_step`` = ``max(drift - noise, 0) / steps since the previous snapshot``, which
    is comparable between runs recorded at different intervals (raw drift per snapshot grows
    with the interval; its floor does not). ``fastest`` lists the snapshots of largest excess
    drift per step, found over every report (not only the decimated ones), above the floor only.
    """
    path = Path(analysis) / "reports.jsonl"
    total = _count(path)
    k = stride_for(total, max_points)
    out: dict[str, Any] = {"index": [], "step": [], "radius": {}, "drift": {}, "noise": {},
                           "excess_per_step": {}, "weight_norm": {}, "scores": {},
                           "volume": {}, "metrics": {}, "layer_types": {}}
    floor: dict[str, float] = {}
    prev_step: int | None = None
    fastest: list[tuple[float, int, int, str]] = []
    above_floor = 0
    i = -1
    for i, rep in enumerate(_lines(path)):
        if i >= total:  # appended while reading: the next request shows it
            i -= 1
            break
        step = int(rep.get("step", i))
        dstep = None if prev_step is None else max(step - prev_step, 1)
        prev_step = step
        row: dict[str, dict[str, Any]] = {"radius": {}, "drift": {}, "noise": {},
                                          "excess_per_step": {}}
        for layer in rep.get("layers") or []:
            name = str(layer.get("layer"))
            out["layer_types"][name] = layer.get("type")
            row["radius"][name] = _num(layer.get("radius_mean"))
            noise = _num(layer.get("drift_noise"))
            if noise is not None:
                floor[name] = noise
            drift = _num(layer.get("drift_mean"))
            row["drift"][name] = drift
            row["noise"][name] = floor.get(name)
            excess = None
            if drift is not None and name in floor and dstep is not None:
                excess = max(drift - floor[name], 0.0) / dstep
                if drift > floor[name]:
                    above_floor += 1
                    item = (excess, i, step, name)
                    if len(fastest) < FASTEST:
                        heapq.heappush(fastest, item)
                    else:
                        heapq.heappushpop(fastest, item)
            row["excess_per_step"][name] = excess
        if not _keep(i, total, k):
            continue
        n = len(out["index"])

        def put(group: dict[str, list], key: str, value: Any, n: int = n) -> None:
            group.setdefault(key, [None] * n).append(value)

        out["index"].append(i)
        out["step"].append(step)
        for field in ("radius", "drift", "noise", "excess_per_step"):
            for name, value in row[field].items():
                put(out[field], name, value)
        for j, w in enumerate(rep.get("weights") or []):
            put(out["weight_norm"], f"{j}->{j + 1}", _num(w.get("norm")))
        for key, value in _scores(rep.get("scores")).items():
            put(out["scores"], key, value)
        geo = rep.get("geometry") or {}
        for source, block in (("probes", geo), ("data", geo.get("data") or {})):
            kind = "held-out data" if source == "data" else (block.get("probes") or "probes")
            for layer, stats in (block.get("layers") or {}).items():
                put(out["volume"], f"layer {layer} ({kind})", _num(stats.get("log_volume_mean")))
        for name, value in (rep.get("metrics") or {}).items():
            put(out["metrics"], name, _num(value))
        # pad series that did not appear in this report
        for group in ("radius", "drift", "noise", "excess_per_step", "weight_norm", "scores",
                      "volume", "metrics"):
            for series in out[group].values():
                if len(series) < n + 1:
                    series.append(None)
    out["decimation"] = _decimation(i + 1, k)
    out["analysed"] = i + 1
    out["fastest"] = [{"index": idx, "step": st, "layer": lay, "excess_per_step": ex}
                      for ex, idx, st, lay in sorted(fastest, reverse=True)]
    out["above_floor"] = above_floor
    return out


def read_report(analysis: str | Path, index: int) -> dict[str, Any] | None:
    """Report number ``index`` of an analysis (streamed; None if not written yet)."""
    for i, rep in enumerate(_lines(Path(analysis) / "reports.jsonl")):
        if i == index:
            return rep
    return None


def _open_embeddings(analysis: Path):
    from ..store.embeddings import open_embeddings

    return open_embeddings(analysis / "embeddings.zarr")


def _project(z: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """2-D disk coordinates of ball points ``z [N, d]``: directions from the snapshot's two
    principal axes, Euclidean norm kept (so the hyperbolic radius drawn is exact). Axis signs
    are fixed by ``anchor`` (a node mask) so consecutive frames do not mirror at random."""
    norm = np.linalg.norm(z, axis=1)
    if z.shape[1] <= 2:
        xy = np.zeros((z.shape[0], 2))
        xy[:, : z.shape[1]] = z
        return xy
    centred = z - z.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    for axis in range(2):
        ref = xy[anchor, axis].mean() if anchor.any() else 0.0
        if ref < 0 or (ref == 0 and (xy[:, axis] ** 3).sum() < 0):
            xy[:, axis] *= -1
    lengths = np.linalg.norm(xy, axis=1)
    scale = np.divide(norm, lengths, out=np.zeros_like(norm), where=lengths > 0)
    return xy * scale[:, None]


def _node_norms(state: dict[str, Any], arch: dict[str, Any]) -> tuple[list, list]:
    """Per node (graph order), the norm of its incoming and outgoing weights."""
    widths = arch["widths"]
    ins = [np.zeros(w) for w in widths]
    outs = [np.zeros(w) for w in widths]
    for l, layer in enumerate(arch["layers"]):
        w = state[layer["weight"]].double().numpy()  # (out, in)
        ins[l + 1] = np.linalg.norm(w, axis=1)
        outs[l] = np.linalg.norm(w, axis=0)
    cat = np.concatenate
    return cat(ins).tolist(), cat(outs).tolist()


def embedding_frame(analysis: str | Path, store: str | Path, index: int) -> dict[str, Any]:
    """One analysed snapshot's neurons on the Poincare disk, with what the hover shows.

    Reads one row of ``embeddings.zarr`` (one chunk), that snapshot's report line and its
    weights from the store.

    Raises:
        NotAStoreError: no embeddings yet.
        IndexError: ``index`` is not an analysed snapshot.
    """
    from ..store.reader import open_trajectory

    analysis = Path(analysis)
    group, attrs, n = _open_embeddings(analysis)
    if not 0 <= index < n:
        raise IndexError(f"snapshot {index} is not analysed yet ({n} are)")
    z = np.asarray(group["z"][index], dtype=np.float64)
    step = int(group["step"][index])
    layer = np.asarray(group["node_layer"][...]).tolist()
    within = np.asarray(group["node_index"][...]).tolist()
    ntype = np.asarray(group["node_type"][...])
    c = float(attrs.get("c", 1.0))
    radius = 2 / math.sqrt(c) * np.arctanh(np.clip(math.sqrt(c) * np.linalg.norm(z, axis=1),
                                                   0, 1 - 1e-7))
    xy = _project(z, ntype == 2)
    rep = read_report(analysis, index) or {}
    source = (attrs.get("source_index") or [])
    source = int(source[index]) if index < len(source) else int(rep.get("source_index", index))
    importance: list = [None] * len(layer)
    neurons = rep.get("neurons") or {}
    hidden = [j for j, t in enumerate(ntype.tolist()) if t == 1]
    if isinstance(neurons.get("importance"), list) and len(neurons["importance"]) == len(hidden):
        for j, v in zip(hidden, neurons["importance"], strict=True):
            importance[j] = _num(v)
    in_norm = out_norm = [None] * len(layer)
    traj = open_trajectory(store)
    arch = traj.architecture
    if arch and arch.get("widths") and source < len(traj):
        in_norm, out_norm = _node_norms(traj[source], arch)
    return {
        "index": index, "analysed": n, "step": step, "source_index": source,
        "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "radius": radius.tolist(),
        "layer": layer, "neuron": within, "type": ntype.tolist(),
        "in_norm": in_norm, "out_norm": out_norm, "importance": importance,
        "importance_probes": neurons.get("probes"), "c": c,
    }


#: Points per side of the on-demand volume-element map.
VOLUME_GRID = 32


def volume_frame(store: str | Path, index: int, *, grid: int = VOLUME_GRID) -> dict[str, Any]:
    """The log volume element ``log sqrt(det g)`` of the last hidden layer over a grid of a
    2-D input space at snapshot ``index``, with the predicted class per point (the decision
    boundary), computed on request from the store's weights.

    Raises:
        ValueError: not an MLP with 2 inputs and known activations.
        IndexError: no such committed snapshot.
    """
    import torch

    from ..arch import activations_known
    from ..geometry.pullback import (
        feature_map,
        grid_probes,
        jacobian,
        log_volume_element,
        mlp_forward,
    )
    from ..store.reader import open_trajectory

    traj = open_trajectory(store)
    arch = traj.architecture or {}
    widths = arch.get("widths") or []
    if len(widths) < 3 or widths[0] != 2 or not activations_known(arch):
        raise ValueError("the volume-element map needs an MLP with 2 inputs, a hidden layer "
                         "and known activations")
    if not 0 <= index < len(traj):
        raise IndexError(f"snapshot {index} is not committed ({len(traj)} are)")
    probes_in = traj.probes
    if probes_in is not None and probes_in.shape[-1] == 2:
        lo = (probes_in.min(0).values.double() - 0.5).tolist()
        hi = (probes_in.max(0).values.double() + 0.5).tolist()
    else:
        lo, hi = [-3.0, -3.0], [3.0, 3.0]
    probes, xs, ys = grid_probes((lo[0], lo[1]), (hi[0], hi[1]), grid)
    state = traj[index]
    layer = len(widths) - 2
    with torch.no_grad():
        phi = feature_map(state, arch, layer)
        lv = log_volume_element(jacobian(phi, probes))
        logits = mlp_forward(state, arch, probes, dtype=torch.float64)[-1]
    binary = logits.shape[-1] <= 2
    if logits.shape[-1] == 2:  # a smooth boundary: the logit difference, drawn at 0
        boundary = logits[..., 1] - logits[..., 0]
    elif logits.shape[-1] == 1:
        boundary = logits[..., 0]
    else:
        boundary = logits.argmax(-1).double()
    cls = logits.argmax(-1) if logits.shape[-1] > 1 else (logits[..., 0] > 0).long()
    return {
        "index": index, "step": int(traj.steps[index]), "layer": layer,
        "x": xs.tolist(), "y": ys.tolist(),
        "log_volume": lv.reshape(grid, grid).tolist(),
        "cls": cls.reshape(grid, grid).tolist(),
        "boundary": boundary.reshape(grid, grid).tolist(), "binary": binary,
    }
