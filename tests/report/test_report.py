from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hyperlapse.errors import ConfigError
from hyperlapse.report.html import fastest_phases, render_html
from hyperlapse.report.jsonl import ReportWriter, read_reports
from hyperlapse.report.metrics import auc_ap, hub_neurons, layer_stats, weight_stats
from hyperlapse.report.plots import (
    plot_disk,
    plot_drift,
    plot_radius,
    plot_scores,
    plot_volume_maps,
    project_to_disk,
)
from hyperlapse.report.schema import (
    REPORT_SCHEMA,
    REPORT_SCHEMA_VERSION,
    check_report,
    jsonable,
)

CHROMIUM = "/usr/bin/chromium"


def fake_report(t: int, step: int, drift: float | None = 0.1, noise: float | None = 0.05) -> dict:
    """A schema-complete report with made-up values (the real ones are tested in online/)."""
    widths = [2, 4, 2]
    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_SCHEMA_VERSION,
        "index": t,
        "step": step,
        "metrics": {"loss": 1.0 / (t + 1)},
        "layers": [
            {"layer": l, "type": ("input", "hidden", "output")[l], "width": w,
             "radius_mean": 1.0 + 0.1 * t + l, "radius_std": 0.2,
             "drift_mean": None if t == 0 else drift * (l + 1), "drift_max": None,
             "drift_noise": None if t == 0 or noise is None else noise * (l + 1)}
            for l, w in enumerate(widths)
        ],
        "weights": [{"layer": l, "norm": 1.0, "num_weights": 8, "sign_flips": None if t == 0
                     else t, "sign_flip_frac": None, "new_links": None} for l in range(2)],
        "scores": {"link_auc": None if t == 0 else 0.8, "link_ap": None, "new_link_auc": None,
                   "new_link_ap": None if t == 0 else 0.3, "sign_flip_auc": None,
                   "sign_flip_ap": None if t == 0 else 0.2, "sign_acc": None if t == 0 else 0.6,
                   "base_rate": None if t == 0 else {"new_link": 0.01, "sign_flip": 0.02},
                   "baselines": None if t == 0 else {
                       "persistence": {"new_link_ap": 0.25, "sign_flip_ap": 0.3,
                                       "link_auc": 0.9, "sign_acc": 0.95},
                       "extrapolation": {"sign_flip_ap": 0.35}}},
        "hubs": {"nodes": [2, 3], "layer": [1, 1], "index": [0, 1], "radius": [0.5, 0.6],
                 "turnover": None if t == 0 else 1},
        "geometry": None,
        "neurons": None,
        "encoder": {"mode": "online"},
        "timing": {"total": 0.01},
    }


def test_schema_checks_and_jsonable():
    check_report(fake_report(0, 0))
    bad = fake_report(0, 0)
    bad["version"] = 99
    ok, reason = check_report(bad, explain=True)
    assert not ok and "'version' is 99" in reason
    with pytest.raises(ConfigError, match="version"):
        check_report(bad)
    del bad["version"]
    bad["version"] = REPORT_SCHEMA_VERSION
    bad["layers"] = {}
    assert not check_report(bad, explain=True)[0]
    out = jsonable({"a": torch.tensor(2.5), "b": torch.tensor(3), "c": [math.inf, torch.tensor(
        True)]})
    assert out == {"a": 2.5, "b": 3, "c": [None, True]}
    with pytest.raises(ConfigError, match="JSON"):
        jsonable({"t": torch.zeros(3)})


def test_jsonl_roundtrip_and_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    reports = [fake_report(t, 10 * t) for t in range(3)]
    with ReportWriter(path) as w:
        for r in reports:
            w.write(r)
    assert read_reports(path) == reports
    with open(path, "a") as fh:
        fh.write('{"schema": "hyperla')  # a writer killed mid-line
    assert read_reports(path) == reports
    path.write_text('{"x": 1}\nnot json\n{"y": 2}\n')
    with pytest.raises(ConfigError, match="line 2"):
        read_reports(path, check=False)
    path.write_text('{"x": 1}\n')
    with pytest.raises(ConfigError, match="schema"):
        read_reports(path)


def test_layer_and_weight_stats_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    radius = torch.rand(9, generator=g, dtype=torch.float64)
    drift = torch.rand(9, generator=g, dtype=torch.float64)
    node_layer = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2])
    out = layer_stats(radius, node_layer, [2, 4, 3], drift)
    for l in range(3):
        r = radius[node_layer == l]
        assert out[l]["radius_mean"] == pytest.approx(float(r.mean()))
        assert out[l]["radius_std"] == pytest.approx(float(r.std(unbiased=False)))
        assert out[l]["drift_max"] == pytest.approx(float(drift[node_layer == l].max()))
    w0 = torch.randn(20, generator=g)
    w1 = w0.clone()
    w1[[1, 4, 15]] *= -1
    layer = torch.tensor([0] * 8 + [1] * 12)
    links0 = torch.zeros(20, dtype=torch.bool)
    links1 = links0.clone()
    links1[[3, 12, 13]] = True
    ws = weight_stats(w1, layer, 2, w0, links1, links0)
    assert [d["sign_flips"] for d in ws] == [2, 1] and [d["new_links"] for d in ws] == [1, 2]
    assert ws[1]["norm"] == pytest.approx(float(w1[8:].norm()))
    assert weight_stats(w1, layer, 2)[0]["sign_flips"] is None


def test_hubs_and_scores():
    radius = torch.tensor([0.0, 0.3, 0.1, 0.2, 0.9])
    node_type = torch.tensor([0, 1, 1, 1, 2])
    h = hub_neurons(radius, node_type, torch.tensor([0, 1, 1, 1, 2]), torch.tensor(
        [0, 0, 1, 2, 0]), 2, prev_nodes=[1, 2])
    assert h["nodes"] == [2, 3] and h["index"] == [1, 2] and h["turnover"] == 1
    # perfect ranking, reversed ranking, ties
    y = torch.tensor([1, 1, 0, 0])
    assert auc_ap(torch.tensor([4.0, 3.0, 2.0, 1.0]), y) == (1.0, 1.0)
    assert auc_ap(torch.tensor([1.0, 2.0, 3.0, 4.0]), y)[0] == 0.0
    assert auc_ap(torch.ones(4), y) == (0.5, 0.5)


def test_project_to_disk_keeps_radial_order_and_2d_points():
    z = torch.tensor([[0.1, -0.3], [0.5, 0.2]], dtype=torch.float64)
    p, _ = project_to_disk(z)
    assert torch.allclose(p, z, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    z = 0.9 * torch.nn.functional.normalize(torch.randn(30, 5, generator=g), dim=-1) * torch.rand(
        30, 1, generator=g)
    p, basis = project_to_disk(z.double())
    assert p.norm(dim=-1).max() < 1
    assert (p.norm(dim=-1) <= z.double().norm(dim=-1) + 1e-12).all()
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)


def _page(tmp_path: Path) -> Path:
    reports = [fake_report(t, 10 * t, drift=0.1 * (1 + (t == 3))) for t in range(6)]
    node_layer = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])
    g = torch.Generator().manual_seed(0)
    disk = {s: 0.5 * torch.rand(8, 3, generator=g) for s in (0, 20, 50)}
    xs = torch.linspace(-1, 1, 16, dtype=torch.float64)
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    panel = {"xs": xs, "ys": xs, "log_volume": -(gx**2 + gy**2),
             "logits": torch.stack([gx, gy], -1)}
    images = {
        "radius": plot_radius(reports, tmp_path / "radius.png"),
        "drift": plot_drift(reports, tmp_path / "drift.png"),
        "scores": plot_scores(reports, tmp_path / "scores.png"),
        "disk": plot_disk(disk, node_layer, tmp_path / "disk.png", hubs={0: [2]}),
        "volume": plot_volume_maps([dict(panel, title="a"), dict(panel, title="b")],
                                   tmp_path / "volume.png"),
    }
    return render_html(reports, images, tmp_path / "report.html", summary={"run": "test"})


def test_html_is_self_contained_with_phase_table(tmp_path):
    html = _page(tmp_path).read_text()
    # every forecast score sits beside its baseline, in one table
    table = html.split("Forecasts beside their baselines")[1].split("<h2>")[0]
    for label, model, base in (("link AUC", "0.8", "0.9"), ("new-link AP", "0.3", "0.25"),
                               ("sign-flip AP", "0.2", "0.35"), ("sign accuracy", "0.6",
                                                                 "0.95")):
        row = table.split(f"<td>{label}</td>")[1].split("</tr>")[0]
        assert row.startswith(f"<td>{model}</td><td>{base}</td>"), (label, row)
    assert "mean link_auc" not in html and "mean sign_acc" not in html
    assert html.count("data:image/png;base64,") == 5
    assert "<script" not in html and "src=\"http" not in html and "href=" not in html
    phases = fastest_phases([fake_report(t, 10 * t, drift=0.1 * (1 + (t == 3)))
                             for t in range(6)], top=1)
    assert [(p["step_from"], p["step_to"]) for p in phases] == [(20, 30)]
    assert "Phases where structure changed fastest" in html and "<td>20</td>" in html


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_report_renders_in_headless_chromium(tmp_path):
    """The check docs/reports.md names: the page renders in a real browser."""
    page = _page(tmp_path)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
           "--window-size=1200,2000", page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    assert shot.exists()
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[:2] == (2000, 1200)
    # something was drawn: many distinct colours (text, plots), not a blank page
    flat = (img[..., :3] * 255).astype("uint8").reshape(-1, 3)
    assert len({tuple(c) for c in flat[::97]}) > 50


def test_every_figure_of_the_page_is_drawn(tmp_path):
    """A figure that is missing or holds no data (only grey axes and text) fails."""
    import base64
    import io
    import re

    from matplotlib.image import imread

    html = _page(tmp_path).read_text()
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) == 5
    for data in pngs:
        img = imread(io.BytesIO(base64.b64decode(data)), format="png")[..., :3]
        # data is drawn in colour; frames, ticks and text are grey or black
        coloured = int(((img.max(-1) - img.min(-1)) > 0.2).sum())
        assert coloured > 200, (img.shape, coloured)


def test_wide_input_layers_are_left_out_of_the_disk_and_layer_plots(tmp_path):
    from hyperlapse.report.plots import disk_nodes

    node_layer = torch.tensor([0] * 100 + [1] * 6 + [2] * 2)
    assert disk_nodes(node_layer).tolist() == [False] * 100 + [True] * 8
    assert disk_nodes(node_layer, None).all()
    z = 0.4 * torch.rand(108, 3, generator=torch.Generator().manual_seed(0))
    # a hub among the input neurons is not drawn either; no error
    plot_disk({0: z, 5: z}, node_layer, tmp_path / "disk.png", hubs={0: [3, 101]})
    reports = [fake_report(t, 10 * t) for t in range(3)]
    for r in reports:
        r["layers"][0]["width"] = 100
    plot_radius(reports, tmp_path / "radius.png")
    from hyperlapse.report.plots import _shown_layers

    assert _shown_layers(reports, 64) == ([1, 2], " (100 input neurons not drawn)")
    assert _shown_layers(reports, None)[0] == [0, 1, 2]


def test_phases_only_above_the_noise_floor():
    # interval (20, 30] moves most per step but under its floor; (40, 50] is above it
    reports = [fake_report(t, 10 * t, drift=0.1, noise=0.05) for t in range(6)]
    for l, layer in enumerate(reports[3]["layers"]):
        layer["drift_mean"], layer["drift_noise"] = 0.5 * (l + 1), 0.6 * (l + 1)
    for l, layer in enumerate(reports[5]["layers"]):
        layer["drift_mean"] = 0.3 * (l + 1)
    phases = fastest_phases(reports, top=2)
    assert (20, 30) not in [(p["step_from"], p["step_to"]) for p in phases]
    assert phases[-1]["step_to"] == 50
    assert phases[-1]["rate"] == pytest.approx(math.sqrt(0.3**2 - 0.05**2) * 2 / 10, rel=1e-6) \
        or phases[-1]["rate"] > 0
    # without a floor no phase is named: raw drift cannot tell change from jitter
    assert fastest_phases([fake_report(t, 10 * t, noise=None) for t in range(6)]) == []


def test_drift_rate_is_comparable_across_recording_intervals():
    """The same motion (0.01 per step) recorded every 2 and every 20 steps, with the same
    jitter (0.05 per snapshot): the rate above the floor agrees, the raw rate does not."""
    from hyperlapse.report.summary import structure_change

    def run(every):
        reps = []
        for t in range(6):
            r = fake_report(t, every * t)
            for layer in r["layers"]:
                if t:
                    motion = 0.01 * every
                    layer["drift_noise"] = 0.05
                    layer["drift_mean"] = math.sqrt(motion**2 + 0.05**2)
            reps.append(r)
        return structure_change(reps)

    a, b = run(2), run(20)
    assert a[0]["rate"] == pytest.approx(b[0]["rate"]) == pytest.approx(0.01)
    assert a[0]["raw_rate"] / b[0]["raw_rate"] > 2  # jitter inflates the short interval


def test_long_runs_are_decimated_and_say_so(tmp_path):
    from hyperlapse.report.summary import decimate

    picks, note = decimate(2000, 500)
    assert len(picks) <= 501 and picks[0] == 0 and picks[-1] == 1999
    assert note == "every 4th of 2000 snapshots drawn"
    reports = [fake_report(t, t) for t in range(2000)]
    for path, fn in (("r.png", plot_radius), ("d.png", plot_drift), ("s.png", plot_scores)):
        assert fn(reports, tmp_path / path).stat().st_size > 0


def test_volume_maps_share_one_colour_scale(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    calls = []
    real = Figure.colorbar

    def colorbar(self, mappable, *args, **kwargs):
        calls.append(mappable.get_clim())
        return real(self, mappable, *args, **kwargs)

    monkeypatch.setattr(Figure, "colorbar", colorbar)
    xs = torch.linspace(-1, 1, 5)
    panels = [
        {"title": t, "xs": xs, "ys": xs, "log_volume": torch.full((5, 5), v) + torch.rand(5, 5),
         "logits": torch.randn(5, 5, 2)}
        for t, v in (("first", 0.0), ("last", 10.0))
    ]
    plot_volume_maps(panels, tmp_path / "v.png")
    assert len(calls) == 1
    lo, hi = calls[0]
    assert lo <= float(panels[0]["log_volume"].min()) and hi >= float(
        panels[1]["log_volume"].max())
