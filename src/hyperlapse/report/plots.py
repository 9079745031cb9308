"""PNG plots of a run's structure reports (matplotlib, object API: no pyplot, thread-safe).

Each function takes the reports (and, for the disk and heat maps, arrays) and writes one PNG;
it returns the path. matplotlib is an optional dependency (``pip install -e '.[plots]'`` in the
hyperlapse clone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import MissingDependencyError

__all__ = [
    "plot_radius",
    "plot_drift",
    "plot_scores",
    "plot_disk",
    "plot_volume_maps",
    "project_to_disk",
    "disk_nodes",
    "MAX_INPUTS_DRAWN",
]

_DPI = 100

#: Input layers wider than this are left out of the disk figure and the radius/drift plots:
#: hundreds of input neurons (a 784-pixel input) would hide the hidden structure.
MAX_INPUTS_DRAWN = 64
#: Points drawn per series at most; longer runs are decimated (every k-th snapshot, said in the
#: title).
MAX_POINTS = 500


def _figure(width: float = 7.0, height: float = 3.6):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "Plots need matplotlib, which is not installed. Install it with "
            "`pip install -e '.[plots]' in the hyperlapse clone`, or pass plots=False."
        ) from exc
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _thin(reports: Sequence[Mapping[str, Any]]) -> tuple[Sequence[Mapping[str, Any]], str]:
    """At most :data:`MAX_POINTS` reports, evenly spaced, and a note saying so (thousands of
    snapshots would draw an unreadable line)."""
    from .summary import decimate

    picks, note = decimate(len(reports), MAX_POINTS)
    if not note:
        return reports, ""
    return [reports[i] for i in picks], f" ({note})"


def _series(reports: Sequence[Mapping[str, Any]], get) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rep in reports:
        value = get(rep)
        if value is not None:
            xs.append(rep["step"])
            ys.append(value)
    return xs, ys


def _layer_label(layer: Mapping[str, Any]) -> str:
    return f"layer {layer['layer']} ({layer['type']}, {layer['width']})"


def _shown_layers(
    reports: Sequence[Mapping[str, Any]], max_inputs: int | None
) -> tuple[list[int], str]:
    """Layers to draw (the input layer only if at most ``max_inputs`` wide) and a note."""
    layers = reports[0]["layers"]
    shown = list(range(len(layers)))
    if max_inputs is not None and layers and layers[0]["type"] == "input" and \
            layers[0]["width"] > max_inputs:
        return shown[1:], f" ({layers[0]['width']} input neurons not drawn)"
    return shown, ""


def _legend_outside(ax, count: int, handles: list | None = None) -> None:
    """A legend beside the axes, never over the data."""
    kwargs = {"handles": handles} if handles is not None else {}
    ax.legend(fontsize=7 if count > 4 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, **kwargs)


def plot_radius(
    reports: Sequence[Mapping[str, Any]], path: str | Path, *,
    max_inputs: int | None = MAX_INPUTS_DRAWN,
) -> Path:
    """Mean hyperbolic radius per layer over optimizer steps (band: +- one std, drawn for up to
    four layers; with more the bands would hide each other)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    shown, note = _shown_layers(reports, max_inputs)
    reports, thinned = _thin(reports)
    note += thinned
    for l in shown:
        layer = reports[0]["layers"][l]
        xs, mean = _series(reports, lambda r, l=l: r["layers"][l]["radius_mean"])
        _, std = _series(reports, lambda r, l=l: r["layers"][l]["radius_std"])
        ax.plot(xs, mean, marker="." if len(xs) < 30 else None, label=_layer_label(layer))
        if len(shown) <= 4:
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("hyperbolic radius d(0, z)")
    ax.set_title("Radius per layer (small = central in the hierarchy)" + note, fontsize=10)
    _legend_outside(ax, len(shown))
    return _save(fig, path)


def plot_drift(
    reports: Sequence[Mapping[str, Any]], path: str | Path, *,
    max_inputs: int | None = MAX_INPUTS_DRAWN,
) -> Path:
    """Drift per layer above its noise floor, per optimizer step (``drift_rate``:
    ``sqrt(drift^2 - floor^2) / steps``; compare runs recorded at the same interval); intervals
    whose drift is under the floor are hollow markers on the bottom edge (noise). Without a
    measured floor (``noise_every=0``) the raw drift per step is drawn and the title says so.
    Log scale; long runs decimated (said in the title)."""
    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    shown, note = _shown_layers(reports, max_inputs)
    has_floor = any(
        layer.get("drift_noise") is not None for r in reports for layer in r["layers"]
    )
    steps = [r["step"] for r in reports]
    from .summary import decimate

    kept, thinned = decimate(len(reports) - 1, MAX_POINTS) if len(reports) > 1 else ([], "")
    picks = [i + 1 for i in kept]
    series = []
    for l in shown:
        xs, ys, under = [], [], []
        for i in picks:
            entry = reports[i]["layers"][l]
            drift, noise = entry.get("drift_mean"), entry.get("drift_noise")
            if drift is None:
                continue
            gap = max(steps[i] - steps[i - 1], 1)
            if not has_floor:
                xs.append(steps[i])
                ys.append(drift / gap)
            elif noise is not None and drift <= noise:
                under.append(steps[i])
                xs.append(steps[i])
                ys.append(math.nan)  # breaks the line: no motion drawn through noise
            elif noise is not None:
                xs.append(steps[i])
                ys.append(math.sqrt(drift * drift - noise * noise) / gap)
        series.append((l, xs, ys, under))
    positive = [y for _, _, ys, _ in series for y in ys if y > 0]  # NaN > 0 is False
    bottom = min(positive) / 3 if positive else 1e-6
    handles = []
    for l, xs, ys, under in series:
        (line,) = ax.plot(xs, ys, marker="." if len(xs) < 30 else None,
                          label=_layer_label(reports[0]["layers"][l]))
        handles.append(line)
        if under:
            ax.scatter(under, [bottom] * len(under), marker="o", s=16, facecolors="none",
                       edgecolors=line.get_color(), clip_on=False, zorder=3)
    if positive:
        ax.set_yscale("log")
        ax.set_ylim(bottom=bottom * 0.8)
    if has_floor:
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", color="grey",
                              label="under the noise floor"))
    _legend_outside(ax, len(handles), handles)
    ax.set_xlabel("optimizer step")
    if has_floor:
        ax.set_ylabel("drift above noise per step")
        title = "How far neurons moved beyond the noise floor, per step"
    else:
        ax.set_ylabel("raw drift per step")
        title = "Raw drift per step (no noise floor measured: may be jitter)"
    ax.set_title(title + note + (f" ({thinned})" if thinned else ""), fontsize=9)
    return _save(fig, path)


def plot_scores(reports: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Held-out forecasts of snapshot t made at t-1: the model's AP on new links and sign flips
    (solid) beside the strongest baseline of each snapshot (dashed) and the base rate (dotted,
    what a random ranking scores), over optimizer steps."""
    fig = _figure(7.0, 4.0)
    reports, thinned = _thin(reports)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    baseline_of = {"new_link": "persistence", "sign_flip": "extrapolation"}
    for ax, target, label in zip(
        axes, ("new_link", "sign_flip"), ("new links", "sign flips"), strict=True
    ):
        key = f"{target}_ap"
        xs, ys = _series(reports, lambda r, key=key: r["scores"].get(key))
        marker = "." if len(xs) < 30 else None
        if xs:
            ax.plot(xs, ys, marker=marker, label="model AP", color="C0")

        def ours(r, target=target):
            base = (r["scores"].get("baselines") or {}).get(baseline_of[target]) or {}
            return base.get(f"{target}_ap")

        xs, ys = _series(reports, ours)
        if xs:
            ax.plot(xs, ys, ls="--", marker=marker, color="C1",
                    label=f"baseline AP ({baseline_of[target]})")
        xs, ys = _series(
            reports, lambda r, target=target: (r["scores"].get("base_rate") or {}).get(target)
        )
        if xs:
            ax.plot(xs, ys, ls=":", label="base rate (random)", color="grey")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{label}: AP, t from t-1" + thinned, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1,
                      frameon=False)  # below the axes: never over the lines
    fig.tight_layout()
    return _save(fig, path)


def project_to_disk(
    z: Tensor, c: float = 1.0, basis: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Project Poincare-ball points to the 2-D disk through the tangent space at the origin.

    ``log0`` maps the points to the tangent space; they are projected on the two principal
    (uncentred) directions (or ``basis``) and mapped back with ``exp0`` of the 2-D ball, so the
    origin and radial order are kept and radii only shrink.

    Shapes:
        z: ``[N, d]``; returns ``(points [N, 2], basis [d, 2])``.
    """
    z = z.detach().to(torch.float64)
    sqrt_c = c**0.5
    norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    u = torch.atanh((sqrt_c * norm).clamp(max=1 - 1e-7)) * z / (sqrt_c * norm)
    if z.shape[-1] <= 2:
        u2 = torch.nn.functional.pad(u, (0, 2 - z.shape[-1]))
        basis = torch.eye(z.shape[-1], 2, dtype=torch.float64)
    else:
        if basis is None:
            _, _, vh = torch.linalg.svd(u, full_matrices=False)
            basis = vh[:2].T
        u2 = u @ basis
    n2 = u2.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    return torch.tanh(sqrt_c * n2) * u2 / (sqrt_c * n2), basis


def plot_disk(
    snapshots: Mapping[int, Tensor],
    node_layer: Tensor,
    path: str | Path,
    *,
    c: float = 1.0,
    hubs: Mapping[int, Sequence[int]] | None = None,
    max_inputs: int | None = MAX_INPUTS_DRAWN,
) -> Path:
    """The Poincare disk with neurons coloured by layer, one panel per chosen snapshot.

    Args:
        snapshots: ``{step: z [N, d]}``, at most ~4 for a readable figure. For ``d > 2`` all
            panels share the principal directions of the last snapshot.
        node_layer: ``[N]`` layer of each node.
        hubs: optional ``{step: node ids}`` drawn with a black ring.
        max_inputs: an input layer wider than this is not drawn (nor used for the projection),
            so the hidden structure stays visible; None draws every neuron.
    """
    steps = list(snapshots)
    keep = disk_nodes(node_layer, max_inputs)
    idx = keep.nonzero().flatten()
    fig = _figure(max(4.2 * len(steps), 5.0), 4.8)
    basis = None
    if steps:
        _, basis = project_to_disk(snapshots[steps[-1]][idx], c)
    all_layers = node_layer.tolist()
    num_layers = max(all_layers) + 1
    layers = [all_layers[i] for i in idx.tolist()]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    colours = [cmap(layer / max(num_layers - 1, 1)) for layer in layers]
    size = 14 if len(layers) <= 200 else 6
    for i, step in enumerate(steps):
        ax = fig.add_subplot(1, len(steps), i + 1)
        p, _ = project_to_disk(snapshots[step][idx], c, basis)
        radius = 1 / c**0.5
        from matplotlib.patches import Circle

        ax.add_patch(Circle((0, 0), radius, fill=False, color="grey", lw=0.8))
        ax.scatter(p[:, 0], p[:, 1], s=size, c=colours, linewidths=0)
        if hubs and step in hubs and len(hubs[step]):
            where = {int(n): j for j, n in enumerate(idx.tolist())}
            h = [where[int(n)] for n in hubs[step] if int(n) in where]
            if h:
                ax.scatter(p[h, 0], p[h, 1], s=3 * size, facecolors="none",
                           edgecolors="black", lw=0.8)
        ax.set_xlim(-radius * 1.02, radius * 1.02)
        ax.set_ylim(-radius * 1.02, radius * 1.02)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"step {step}", fontsize=9)
    from matplotlib.lines import Line2D

    counts = [all_layers.count(layer) for layer in range(num_layers)]
    handles = [
        Line2D([], [], ls="", marker="o", color=cmap(layer / max(num_layers - 1, 1)),
               label=_disk_label(layer, num_layers, counts[layer])
               + ("" if layer in layers else ", not drawn"))
        for layer in range(num_layers)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(num_layers, 4), fontsize=8)
    rows = (num_layers - 1) // 4 + 1
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04 + 0.05 * rows, top=0.93, wspace=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def disk_nodes(node_layer: Tensor, max_inputs: int | None = MAX_INPUTS_DRAWN) -> Tensor:
    """Boolean mask ``[N]`` of the nodes the disk figure draws: all but a wide input layer.

    Example:
        >>> disk_nodes(torch.tensor([0] * 100 + [1] * 8 + [2] * 2)).sum().item()
        10
        >>> disk_nodes(torch.tensor([0] * 3 + [1] * 8 + [2] * 2)).sum().item()
        13
    """
    keep = torch.ones(node_layer.shape[0], dtype=torch.bool)
    if max_inputs is not None and int((node_layer == 0).sum()) > max_inputs:
        keep &= node_layer != 0
    return keep


def _disk_label(layer: int, num_layers: int, count: int) -> str:
    kind = "input" if layer == 0 else "output" if layer == num_layers - 1 else f"hidden {layer}"
    return f"{kind} ({count})"


def plot_volume_maps(
    panels: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    points: Tensor | None = None,
    labels: Tensor | None = None,
) -> Path:
    """Heat maps of the log volume element over a 2-D input grid, decision boundary on top.

    Args:
        panels: one dict per panel (e.g. init and end, side by side), each with ``title``,
            ``xs`` ``[nx]``, ``ys`` ``[ny]``, ``log_volume`` ``[ny, nx]`` and ``logits``
            ``[ny, nx, C]``.
        points, labels: optional data ``[M, 2]`` / ``[M]`` drawn on top.
    """
    fig = _figure(4.2 * len(panels), 3.8)
    # one colour scale for every panel: the panels are compared with each other
    finite = [p["log_volume"][torch.isfinite(p["log_volume"])] for p in panels]
    finite = [f for f in finite if f.numel()]
    vmin = min(float(f.min()) for f in finite) if finite else None
    vmax = max(float(f.max()) for f in finite) if finite else None
    axes, mesh = [], None
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        axes.append(ax)
        xs, ys = panel["xs"].numpy(), panel["ys"].numpy()
        lv = panel["log_volume"].numpy()
        mesh = ax.pcolormesh(xs, ys, lv, shading="auto", cmap="magma", vmin=vmin, vmax=vmax)
        logits = panel["logits"]
        if logits.shape[-1] == 2:
            field, levels = (logits[..., 1] - logits[..., 0]).numpy(), [0.0]
        elif logits.shape[-1] == 1:
            field, levels = logits[..., 0].numpy(), [0.0]
        else:
            field = logits.argmax(-1).to(torch.float64).numpy()
            levels = [k + 0.5 for k in range(logits.shape[-1] - 1)]
        if field.min() < levels[0] < field.max() or len(levels) > 1:
            ax.contour(xs, ys, field, levels=levels, colors="cyan", linewidths=1.2)
        if points is not None:
            ax.scatter(points[:, 0], points[:, 1], s=3, c=labels, cmap="coolwarm", alpha=0.5)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("input x1")
        ax.set_ylabel("input x2")
        ax.set_aspect("equal")
    fig.tight_layout()
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, label="log sqrt(det g) (shared scale)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
