/* hyperlapse board: the run list, a run's time-lapse and curves, and the comparison page.
   Data come from the board's JSON API, or from window.HYPERLAPSE_STATIC in a static page. */
"use strict";

const STATIC = window.HYPERLAPSE_STATIC || null;
const POLL_MS = 1000;
const SERIES_MS = 3000;
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22"];
const PLOT_CONFIG = { displaylogo: false, responsive: true };

function $(id) { return document.getElementById(id); }
function esc(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}
function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  const d = digits === undefined ? 3 : digits;
  return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(d);
}
async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg); err.status = r.status; throw err;
  }
  return r.json();
}
function runURL(name) { return "/api/runs/" + name.split("/").map(encodeURIComponent).join("/"); }
function api(name, what, query) {
  if (STATIC) return Promise.resolve(STATIC[what][name]);
  return getJSON(runURL(name) + "/" + what + (query ? "?" + query : ""));
}
function listRuns() { return STATIC ? Promise.resolve(STATIC.runs) : getJSON("/api/runs"); }
function decimationNote(d) {
  if (!d || d.stride <= 1) return "";
  return `decimated: every ${d.stride}th of ${d.total} points shown (${d.shown})`;
}
function costText(cost) {
  if (!cost || cost.training_blocked_fraction === undefined) return "–";
  let t = `${(100 * cost.training_blocked_fraction).toFixed(2)} % of training`;
  if (cost.capture_mean_s !== undefined) t += `, ${(1000 * cost.capture_mean_s).toFixed(2)} ms/snapshot`;
  return t;
}
function layout(title, extra) {
  return Object.assign({
    title: { text: title, font: { size: 14 } },
    margin: { l: 55, r: 15, t: 40, b: 90 },
    legend: { orientation: "h", y: -0.3, x: 0 },  /* below the plot: never over the data */
    hovermode: "closest",
  }, extra || {});
}
function snapshotMarks(steps, yref) {
  /* the snapshot steps as ticks along the bottom of a chart */
  return { x: steps, y: steps.map(() => 0), yaxis: yref || "y2", type: "scatter", mode: "markers",
    marker: { symbol: "line-ns-open", size: 8, color: "#999" }, name: "snapshots",
    hovertemplate: "snapshot at step %{x}<extra></extra>" };
}
const Y2 = { yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true } };

/* ---------------------------------------------------------------- run list */
async function indexPage() {
  const board = STATIC ? null : await getJSON("/api/board");
  if (board) { $("root").textContent = board.root; $("role").textContent = board.note; }
  const selected = new Set();
  $("compare").onclick = () => {
    const q = [...selected].map((n) => "runs=" + encodeURIComponent(n)).join("&");
    window.location.href = "/compare?" + q;
  };
  let forecast = { available: false, reason: "not computed yet", runs: {}, waiting: [] };
  function forecastText(name) {
    const f = forecast.runs[name];
    if (f) {  /* beside the run's current value: what a cut on the current metric sees */
      return `#${f.rank} ${fmt(f.predicted, 3)} [${fmt(f.low, 3)}, ${fmt(f.high, 3)}]` +
        ` (now ${fmt(f.current, 3)})`;
    }
    return (forecast.waiting || []).includes(name) ? "before the cut" : "";
  }
  async function refreshForecast() {
    if (STATIC) return;
    try { forecast = await getJSON("/api/forecast"); } catch (e) { return; }
    $("forecast-note").textContent = forecast.available
      ? `Forecast of the final ${forecast.metric} (${forecast.goal}) of each run in progress, ` +
        `from its first ${Math.round(forecast.at * 100)} % of the planned steps, fitted on ` +
        `${forecast.finished} finished runs of this folder (80 % interval; rank 1 = best). ` +
        `"now": the run's current ${forecast.metric}, what a cut on the current value sees. ` +
        `Measured against that baseline: docs/sweep-forecast.md.`
      : `No sweep forecast: ${forecast.reason}`;
  }
  async function refresh() {
    let runs;
    try { runs = await listRuns(); } catch (e) { return; }
    $("none").hidden = runs.length > 0;
    const body = $("runs").tBodies[0];
    body.innerHTML = runs.map((r) => {
      const a = r.analysis || {};
      const analysis = a.state + (a.error ? ": " + a.error : "");
      return `<tr data-run="${esc(r.name)}">
        <td><input type="checkbox" class="pick" value="${esc(r.name)}" ${selected.has(r.name) ? "checked" : ""}></td>
        <td><a href="/run?name=${encodeURIComponent(r.name)}">${esc(r.name)}</a></td>
        <td><span class="status status-${esc(r.status)}">${esc(r.status)}</span></td>
        <td class="num snapshots">${r.snapshots}</td><td class="num">${fmt(r.last_step, 0)}</td>
        <td class="num">${r.analysed}</td><td class="detail">${esc(analysis)}</td>
        <td>${esc(costText(r.recording_cost))}</td><td class="forecast">${esc(forecastText(r.name))}</td>
        <td class="detail">${esc(r.detail || "")}</td></tr>`;
    }).join("");
    for (const box of body.querySelectorAll(".pick")) {
      box.onchange = () => {
        if (box.checked) selected.add(box.value); else selected.delete(box.value);
        $("compare").disabled = selected.size === 0;
      };
    }
  }
  await refresh();
  setInterval(refresh, POLL_MS);
  refreshForecast();  /* a refit costs seconds: every 30 s, not at every poll */
  setInterval(refreshForecast, 30000);
  /* compile plotly.js now, while the list is read: the first run page then opens at once
     (the first compile of its 4.8 MB took ~2 s on the 2-core benchmark machine) */
  const warm = document.createElement("script");
  warm.src = "/vendor/plotly.min.js"; warm.async = true;
  document.body.appendChild(warm);
}

/* ---------------------------------------------------------------- run page */
function layerColor(layer) { return PALETTE[layer % PALETTE.length]; }

async function runPage() {
  const name = new URLSearchParams(window.location.search).get("name");
  $("name").textContent = name; document.title = "hyperlapse: " + name;
  const state = { snapshots: -1, analysed: -1, reported: -1, frame: -1, playing: null, volume: null,
    vrange: null, busy: false, metricsAt: -Infinity, reportsAt: -Infinity, ticket: 0 };
  const slider = $("slider");

  async function drawFrame(i) {
    if (i < 0) return;
    const ticket = ++state.ticket;  /* a slow answer for an older frame must not win */
    let f;
    try { f = await api(name, "embedding", "i=" + i); } catch (e) { return; }
    if (ticket !== state.ticket) return;
    state.frame = i;
    const R = 1 / Math.sqrt(f.c);
    const types = ["input", "hidden", "output"];
    const layers = [...new Set(f.layer)];
    const traces = layers.map((l) => {
      const idx = f.layer.map((v, j) => (v === l ? j : -1)).filter((j) => j >= 0);
      return { type: "scatter", mode: "markers", name: `layer ${l} (${types[f.type[idx[0]]]})`,
        x: idx.map((j) => f.x[j]), y: idx.map((j) => f.y[j]),
        marker: { size: 7, color: layerColor(l), line: { width: 0.5, color: "#333" } },
        customdata: idx.map((j) => [l, f.neuron[j], f.radius[j], fmt(f.in_norm[j]), fmt(f.out_norm[j]),
          f.importance[j] === null ? "not computed" : fmt(f.importance[j], 4)]),
        hovertemplate: "layer %{customdata[0]}, neuron %{customdata[1]}<br>radius %{customdata[2]:.3f}" +
          "<br>weight norm in %{customdata[3]}, out %{customdata[4]}<br>ablation importance " +
          "%{customdata[5]}<extra></extra>" };
    });
    Plotly.react("disk", traces, layout(`step ${f.step} (snapshot ${f.source_index})`, {
      xaxis: { range: [-1.05 * R, 1.05 * R], zeroline: false, showgrid: false, visible: false },
      yaxis: { range: [-1.05 * R, 1.05 * R], zeroline: false, showgrid: false, visible: false,
        scaleanchor: "x" },
      shapes: [{ type: "circle", x0: -R, y0: -R, x1: R, y1: R, line: { color: "#888" } }],
      margin: { l: 10, r: 10, t: 40, b: 60 }, legend: { orientation: "h", y: -0.02 },
    }), PLOT_CONFIG);
    $("frame").textContent = `snapshot ${i + 1} of ${state.analysed} analysed · step ${f.step}`;
    if (state.volume) drawVolume(f.source_index);
  }

  async function drawVolume(source) {
    let v;
    try { v = await api(name, "volume", "i=" + source); } catch (e) { $("volume").hidden = true; return; }
    Plotly.react("volume", [
      { type: "heatmap", x: v.x, y: v.y, z: v.log_volume, colorscale: "Viridis",
        zmin: state.vrange[0], zmax: state.vrange[1],
        colorbar: { title: { text: "log vol" } },
        hovertemplate: "x %{x:.2f}, y %{y:.2f}<br>log volume %{z:.3f}<extra></extra>" },
      { type: "contour", x: v.x, y: v.y, z: v.boundary, showscale: false, hoverinfo: "skip",
        contours: v.binary ? { coloring: "none", start: 0, end: 0, size: 1 } : { coloring: "none" },
        line: { color: "white", width: 1.5 }, name: "decision boundary" },
    ], layout(`log volume element, hidden layer ${v.layer}, step ${v.step} (white: decision boundary)`, {
      xaxis: { title: { text: "x1" }, zeroline: false, constrain: "domain" },
      yaxis: { title: { text: "x2" }, scaleanchor: "x", zeroline: false, constrain: "domain" },
      margin: { l: 50, r: 10, t: 40, b: 50 }, showlegend: false,
    }), PLOT_CONFIG);
    $("volume").hidden = false;
  }

  async function setupVolume(snapshots) {
    /* the colour scale is fixed from the first and the newest snapshot, so frames compare */
    if (state.volume === false || snapshots < 1) return;
    try {
      const a = await api(name, "volume", "i=0");
      const b = await api(name, "volume", "i=" + (snapshots - 1));
      const all = a.log_volume.flat().concat(b.log_volume.flat());
      state.vrange = [Math.min(...all), Math.max(...all)];
      state.volume = true;
    } catch (e) { state.volume = false; }
  }

  function drawMetrics(m) {
    const box = $("metrics");
    const names = Object.keys(m.metrics);
    if (!names.length) { box.innerHTML = '<p class="empty">No metric logged (rec.log(loss=...)).</p>'; return; }
    for (const metric of names) {
      const id = "metric-" + metric.replace(/[^a-zA-Z0-9_-]/g, "_");
      if (!$(id)) {
        const div = document.createElement("div");
        div.innerHTML = `<div id="${id}" class="chart"></div><p class="note" id="${id}-note"></p>`;
        box.appendChild(div);
      }
      const s = m.metrics[metric];
      Plotly.react(id, [{ x: s.step, y: s.value, type: "scatter", mode: "lines", name: metric,
        line: { color: PALETTE[0] } }, snapshotMarks(m.snapshot_steps)],
      layout(metric, Object.assign({ xaxis: { title: { text: "optimizer step" }, zeroline: false } }, Y2)),
      PLOT_CONFIG);
      $(id + "-note").textContent = [decimationNote(s), decimationNote(m.snapshots) &&
        "snapshot marks " + decimationNote(m.snapshots)].filter(Boolean).join("; ");
    }
  }

  function lines(series, x, names, extra) {
    return Object.keys(series).map((k, j) => Object.assign({ x: x, y: series[k], type: "scatter",
      mode: "lines", name: (names ? names(k) : k), line: { color: PALETTE[j % PALETTE.length] } }, extra || {}));
  }

  function drawReports(r) {
    const x = r.step;
    const note = decimationNote(r.decimation);
    const ltype = (k) => `layer ${k} (${r.layer_types[k] || ""})`;
    const axis = { xaxis: { title: { text: "optimizer step" } } };
    Plotly.react("drift", lines(r.excess_per_step, x, ltype),
      layout("drift above its noise floor, per optimizer step" + (note ? " · " + note : ""),
        Object.assign({ yaxis: { title: { text: "max(drift − floor, 0) / Δstep" }, rangemode: "tozero" } }, axis)),
      PLOT_CONFIG);
    Plotly.react("radius", lines(r.radius, x, ltype),
      layout("mean hyperbolic radius per layer" + (note ? " · " + note : ""), axis), PLOT_CONFIG);
    Plotly.react("norms", lines(r.weight_norm, x, (k) => "W " + k),
      layout("weight norm (Frobenius) per layer" + (note ? " · " + note : ""), axis), PLOT_CONFIG);
    if (Object.keys(r.volume).length) {
      Plotly.react("geometry", lines(r.volume, x),
        layout("mean log volume element, per probe set" + (note ? " · " + note : ""),
          Object.assign({ showlegend: true }, axis)), PLOT_CONFIG);
    }
    const fast = r.fastest.map((f) => `step ${f.step} (layer ${f.layer}, ${fmt(f.excess_per_step, 4)} per step)`);
    $("fastest").textContent = r.analysed < 2 ? "" : (fast.length
      ? "Structure changed fastest (drift above the noise floor, per step): " + fast.join("; ")
      : "No drift above the noise floor yet: the embedding moved no more than its own jitter.");
    drawScores(r);
  }

  function drawScores(r) {
    const body = $("scores").tBodies[0];
    const rows = [];
    const traces = [];
    let j = 0;
    for (const key of Object.keys(r.scores)) {
      const s = r.scores[key];
      let last = null;
      for (let i = s.length - 1; i >= 0; i--) if (s[i]) { last = s[i]; break; }
      if (!last) continue;
      const cls = last.margin > 1e-9 ? "better" : (last.margin < -1e-9 ? "worse" : "");
      rows.push(`<tr><td>${esc(key.replace(/_/g, " "))}</td><td class="num">${fmt(last.model, 4)}</td>
        <td>${esc(last.best)}</td><td class="num">${fmt(last.best_value, 4)}</td>
        <td class="num ${cls}">${last.margin > 0 ? "+" : ""}${fmt(last.margin, 4)}</td>
        <td class="num">${fmt(last.base_rate, 4)}</td></tr>`);
      if (key.endsWith("_ap") && !key.startsWith("head")) {
        const color = PALETTE[j++ % PALETTE.length];
        traces.push({ x: r.step, y: s.map((v) => (v ? v.model : null)), mode: "lines", type: "scatter",
          name: key + " model", line: { color: color } });
        traces.push({ x: r.step, y: s.map((v) => (v ? v.best_value : null)), mode: "lines", type: "scatter",
          name: key + " strongest baseline", line: { color: color, dash: "dot" } });
      }
    }
    body.innerHTML = rows.length ? rows.join("") :
      '<tr><td colspan="6" class="empty">No forecast with its baselines yet (from the second analysed snapshot).</td></tr>';
    if (traces.length) {
      Plotly.react("forecast", traces, layout("forecast AP: model (solid) vs strongest baseline (dotted)",
        { xaxis: { title: { text: "optimizer step" } } }), PLOT_CONFIG);
    }
  }

  async function refresh() {
    if (state.busy) return;
    state.busy = true;
    try {
      const runs = await listRuns();
      const run = runs.find((r) => r.name === name);
      if (!run) { $("detail").textContent = "This run is not in the folder (any more)."; return; }
      $("status").textContent = run.status; $("status").className = "status status-" + run.status;
      $("snapshots").textContent = run.snapshots; $("last-step").textContent = fmt(run.last_step, 0);
      $("analysed").textContent = run.analysed;
      const a = run.analysis || {};
      $("analysis").textContent = "analysis: " + a.state + (a.error ? " (" + a.error + ")" : "");
      $("detail").textContent = run.detail || "";
      /* the series are re-read whole (decimated): at most every SERIES_MS while a run grows */
      const now = Date.now();
      if (run.snapshots !== state.snapshots && run.snapshots > 0 && now - state.metricsAt >= SERIES_MS) {
        state.snapshots = run.snapshots; state.metricsAt = now;
        try { drawMetrics(await api(name, "metrics")); } catch (e) { /* damaged: status says */ }
        if (state.volume === null && run.widths && run.widths[0] === 2) await setupVolume(run.snapshots);
      }
      if (run.analysed !== state.analysed) {
        state.analysed = run.analysed;
        slider.max = Math.max(run.analysed - 1, 0);
        if (run.analysed > 0 && ($("follow").checked || state.frame < 0)) {
          slider.value = run.analysed - 1;
          await drawFrame(run.analysed - 1);
        }
      }
      if (run.analysed > 0 && run.analysed !== state.reported && now - state.reportsAt >= SERIES_MS) {
        state.reported = run.analysed; state.reportsAt = now;
        drawReports(await api(name, "reports"));
      }
    } catch (e) { /* the server restarted or is gone: keep the page, try again */ }
    finally { state.busy = false; }
  }

  slider.oninput = () => { $("follow").checked = false; drawFrame(Number(slider.value)); };
  $("play").onclick = () => {
    if (state.playing) { clearInterval(state.playing); state.playing = null; $("play").textContent = "Play"; return; }
    $("follow").checked = false;
    $("play").textContent = "Pause";
    if (Number(slider.value) >= Number(slider.max)) slider.value = 0;
    state.playing = setInterval(async () => {
      const next = Number(slider.value) + 1;
      if (next > Number(slider.max)) { clearInterval(state.playing); state.playing = null; $("play").textContent = "Play"; return; }
      slider.value = next;
      await drawFrame(next);
    }, 400);
  };
  await refresh();
  if (!STATIC) setInterval(refresh, POLL_MS);
}

/* ---------------------------------------------------------------- comparison */
async function comparePage() {
  const params = new URLSearchParams(window.location.search);
  const runs = await listRuns();
  let chosen = STATIC ? runs.map((r) => r.name) : params.getAll("runs");
  if (!chosen.length) chosen = runs.map((r) => r.name).slice(0, 4);
  const color = {};
  runs.forEach((r, i) => { color[r.name] = PALETTE[i % PALETTE.length]; });
  if (STATIC) $("home").hidden = true;
  $("pick").innerHTML = runs.map((r) => `<label style="margin-right:1em"><input type="checkbox" class="cmp"
    value="${esc(r.name)}" ${chosen.includes(r.name) ? "checked" : ""}>
    <span style="color:${color[r.name]}">■</span> ${esc(r.name)}</label>`).join("");

  async function draw() {
    const picked = [...document.querySelectorAll(".cmp")].filter((b) => b.checked).map((b) => b.value);
    const metrics = {}; const reports = {};
    for (const n of picked) {
      try { metrics[n] = await api(n, "metrics"); } catch (e) { metrics[n] = null; }
      try { reports[n] = await api(n, "reports"); } catch (e) { reports[n] = null; }
    }
    const charts = {};
    const notes = {};
    function add(title, trace, note) {
      (charts[title] = charts[title] || []).push(trace);
      if (note) notes[title] = note;
    }
    for (const n of picked) {
      const m = metrics[n];
      if (m) {
        for (const [k, s] of Object.entries(m.metrics)) {
          add(k, { x: s.step, y: s.value, name: n, type: "scatter", mode: "lines", line: { color: color[n] } },
            decimationNote(s));
        }
      }
      const r = reports[n];
      if (r && r.analysed) {
        const hidden = Object.keys(r.excess_per_step).filter((k) => r.layer_types[k] === "hidden");
        if (hidden.length) {
          const mean = r.step.map((_, i) => {
            const vals = hidden.map((k) => r.excess_per_step[k][i]).filter((v) => v !== null);
            return vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null;
          });
          add("drift above the noise floor per step (hidden layers, mean)", { x: r.step, y: mean, name: n,
            type: "scatter", mode: "lines", line: { color: color[n] } }, decimationNote(r.decimation));
          const last = hidden[hidden.length - 1];
          add(`mean radius, layer ${last} (last hidden)`, { x: r.step, y: r.radius[last], name: n,
            type: "scatter", mode: "lines", line: { color: color[n] } }, decimationNote(r.decimation));
        }
      }
    }
    const box = $("charts");
    box.innerHTML = "";
    Object.keys(charts).forEach((title, i) => {
      const div = document.createElement("div");
      div.innerHTML = `<div id="cmp-${i}" class="chart"></div><p class="note">${esc(notes[title] || "")}</p>`;
      box.appendChild(div);
      Plotly.newPlot("cmp-" + i, charts[title], layout(title, { xaxis: { title: { text: "optimizer step" } },
        showlegend: true }), PLOT_CONFIG);
    });
    if (!Object.keys(charts).length) box.innerHTML = '<p class="empty">Nothing to compare yet.</p>';
  }
  for (const box of document.querySelectorAll(".cmp")) box.onchange = draw;
  await draw();
}

const PAGES = { index: indexPage, run: runPage, compare: comparePage };
window.addEventListener("DOMContentLoaded", () => { PAGES[document.body.dataset.page](); });
