/// The status page: one HTML document with its style and script inline (no font, image or script from
/// anywhere), drawing its charts as inline SVG. It reads `?format=json` at its own path every second.
///
/// The numbers it shows are formatted by the small functions in `fmt`; the system test formats the JSON the same
/// way and compares (every value element has an `id` or a `data-col`).
enum StatusPage {
    static let html = #"""
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kernel status</title>
<link rel="icon" href="data:,">
<style>
:root {
  --bg: #f6f6f3; --card: #ffffff; --text: #23262b; --muted: #737880; --line: #e3e3de;
  --rate: #3d6fa3; --p50: #4f8a5b; --p90: #c18a2a; --p99: #b4533c;
  --up: #4f8a5b; --down: #b4533c; --partial: #c18a2a;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #17191c; --card: #202327; --text: #e4e6e8; --muted: #979ca3; --line: #33373c;
          --rate: #79a6d6; --p50: #7fba8a; --p90: #dcae58; --p99: #dd8a73; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 40px; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; margin-bottom: 18px; }
h1 { font-size: 20px; font-weight: 600; margin: 0; letter-spacing: .01em; }
h2 { font-size: 13px; font-weight: 600; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
     margin: 0 0 10px; }
#live { color: var(--muted); font-size: 13px; }
h2 .scale { text-transform: none; letter-spacing: 0; font-weight: 400; }
#live::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%;
                background: var(--muted); margin-right: 6px; vertical-align: 1px; }
#live.ok::before { background: var(--up); }
#live.stale::before { background: var(--down); }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; margin-bottom: 14px; }
.tile, .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
.tile { padding: 12px 14px; }
.tile .label { color: var(--muted); font-size: 12px; }
.tile .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; margin-top: 2px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px; margin-bottom: 14px; }
.card { padding: 14px 16px; }
.chart { position: relative; height: 150px; margin: 4px 0 2px 56px; }
.chart svg { position: absolute; inset: 0; width: 100%; height: 100%; overflow: visible; }
.chart .grid { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; }
.chart .series { fill: none; stroke-width: 1.6; vector-effect: non-scaling-stroke; stroke-linejoin: round; }
.chart .area { stroke: none; opacity: .12; }
.ylabel { position: absolute; left: -56px; width: 50px; text-align: right; font-size: 11px; color: var(--muted); white-space: nowrap;
          transform: translateY(-50%); font-variant-numeric: tabular-nums; }
.xaxis { display: flex; justify-content: space-between; margin-left: 56px; font-size: 11px; color: var(--muted); }
.legend { display: flex; gap: 14px; font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.legend span::before { content: ""; display: inline-block; width: 10px; height: 3px; margin-right: 5px;
                       vertical-align: 3px; background: currentColor; }
.rate { color: var(--rate); stroke: var(--rate); fill: var(--rate); }
.p50 { color: var(--p50); stroke: var(--p50); }
.p90 { color: var(--p90); stroke: var(--p90); }
.p99 { color: var(--p99); stroke: var(--p99); }
.tables { display: grid; gap: 12px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th { text-align: left; font-weight: 500; color: var(--muted); font-size: 12px; padding: 4px 8px;
     border-bottom: 1px solid var(--line); }
td { padding: 5px 8px; border-bottom: 1px solid var(--line); }
tr:last-child td { border-bottom: none; }
th.n, td.n { text-align: right; }
td.empty { color: var(--muted); font-style: italic; }
.state::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%;
                 margin-right: 6px; background: var(--muted); vertical-align: 0; }
.state.up::before, .state.serving::before { background: var(--up); }
.state.down::before { background: var(--down); }
.state.partial::before, .state.starting::before, .state.draining::before { background: var(--partial); }
</style>
</head>
<body>
<main>
<header>
  <h1>kernel status</h1>
  <span id="live">connecting</span>
</header>
<section class="tiles" aria-label="last 10 seconds">
  <div class="tile"><div class="label">requests</div><div class="value" id="requests-total">–</div></div>
  <div class="tile"><div class="label">requests/s <span class="window"></span></div><div class="value" id="requests-per-second">–</div></div>
  <div class="tile"><div class="label">latency p50 <span class="window"></span></div><div class="value" id="latency-p50">–</div></div>
  <div class="tile"><div class="label">latency p90 <span class="window"></span></div><div class="value" id="latency-p90">–</div></div>
  <div class="tile"><div class="label">latency p99 <span class="window"></span></div><div class="value" id="latency-p99">–</div></div>
</section>
<section class="charts">
  <div class="card">
    <h2>requests per second</h2>
    <div class="legend"><span class="rate">requests/s</span></div>
    <div class="chart" id="rate-chart" data-label="requests per second over the history"></div>
    <div class="xaxis"><span class="since"></span><span>now</span></div>
  </div>
  <div class="card">
    <h2>latency <span class="scale">(log scale)</span></h2>
    <div class="legend"><span class="p50">p50</span><span class="p90">p90</span><span class="p99">p99</span></div>
    <div class="chart" id="latency-chart" data-label="latency p50, p90 and p99 over the history"></div>
    <div class="xaxis"><span class="since"></span><span>now</span></div>
  </div>
</section>
<section class="tables">
  <div class="card">
    <h2>workers</h2>
    <table id="workers">
      <thead><tr><th>pool</th><th class="n">#</th><th class="n">pid</th><th>state</th><th class="n">requests</th>
        <th class="n">respawns</th><th class="n">memory</th><th class="n">up for</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <div class="card">
    <h2>upstream peers</h2>
    <table id="upstreams">
      <thead><tr><th>upstream</th><th>peer</th><th>state</th><th class="n">failures</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <div class="card">
    <h2>models <span id="model-window"></span></h2>
    <table id="models">
      <thead><tr><th>model</th><th class="n">queue</th><th class="n">requests/s</th><th class="n">batch mean</th>
        <th class="n">batch p90</th><th class="n">queue p50</th><th class="n">queue p99</th><th class="n">compute p50</th>
        <th class="n">compute p99</th><th class="n">failures</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
</section>
</main>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const DASH = "\u2013";
const fmt = {
  count: v => v == null ? DASH : String(Math.round(v)),
  rate: v => v == null ? DASH : v.toFixed(1),
  decimal: v => v == null ? DASH : v.toFixed(1),
  seconds: v => v == null ? DASH : (v < 1 ? (v * 1000).toFixed(1) + " ms" : v.toFixed(2) + " s"),
  bytes: v => v == null ? DASH : (v / 1048576).toFixed(1) + " MiB",
  duration: v => {
    if (v == null) return DASH;
    const s = Math.max(0, Math.floor(v));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  },
};

function text(id, value) { document.getElementById(id).textContent = value; }

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function el(name, attributes, ns) {
  const node = ns ? document.createElementNS(SVG, name) : document.createElement(name);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  return node;
}

// A linear scale from 0 to a round top, gridlines at 0, half and top.
function linearScale(values) {
  let top = 0;
  for (const v of values) if (v != null && v > top) top = v;
  top = niceCeiling(top);
  return { at: v => v / top, ticks: [0, top / 2, top], shows: v => v != null };
}

// A logarithmic scale over whole decades, gridlines at each: latencies differ by orders of magnitude between p50
// and p99, and one slow second must not flatten the rest.
function logScale(values) {
  let low = Infinity, high = 0;
  for (const v of values) if (v != null && v > 0) { low = Math.min(low, v); high = Math.max(high, v); }
  if (!(high > 0)) { low = 0.0001; high = 0.01; }
  let from = Math.floor(Math.log10(low)), to = Math.ceil(Math.log10(high));
  if (to - from < 2) to = from + 2;
  const ticks = [];
  for (let d = from; d <= to; d++) ticks.push(Math.pow(10, d));
  return { at: v => (Math.log10(v) - from) / (to - from), ticks, shows: v => v != null && v > 0 };
}

// One chart: lines over the history window (x: seconds before now), gaps where a value is missing.
function drawChart(container, data, lines, format, makeScale) {
  const width = 600, height = 150;
  const span = data.history_seconds;
  const times = data.series.time;
  const scale = makeScale([].concat(...lines.map(line => line.values)));
  const x = t => width - Math.min(span, Math.max(0, data.time - t)) / span * width;
  const y = v => height - scale.at(v) * height;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
                          "aria-label": container.dataset.label }, true);
  for (const tick of scale.ticks) svg.appendChild(el("line", { class: "grid", x1: 0, x2: width, y1: y(tick), y2: y(tick) }, true));
  for (const line of lines) {
    let path = "", area = "", run = [];
    const flush = () => {
      if (run.length === 0) return;
      path += run.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join("");
      if (line.area) area += `M${run[0][0].toFixed(1)} ${height}` + run.map(p => `L${p[0].toFixed(1)} ${p[1].toFixed(1)}`).join("") + `L${run[run.length - 1][0].toFixed(1)} ${height}Z`;
      run = [];
    };
    line.values.forEach((v, i) => { if (!scale.shows(v)) flush(); else run.push([x(times[i]), y(v)]); });
    flush();
    if (area) svg.appendChild(el("path", { class: "area " + line.cls, d: area }, true));
    if (path) svg.appendChild(el("path", { class: "series " + line.cls, d: path }, true));
  }
  container.replaceChildren(svg);
  for (const tick of scale.ticks) {
    const label = el("span", { class: "ylabel" });
    label.style.top = (100 - scale.at(tick) * 100) + "%";
    label.textContent = format(tick);
    container.appendChild(label);
  }
}

// Axis labels: as short as the gridlines' round values allow.
function axisCount(v) { return v === 0 ? "0" : String(Number(v.toPrecision(2))); }
function axisSeconds(v) {
  if (v === 0) return "0";
  return v < 1 ? axisCount(v * 1000) + " ms" : axisCount(v) + " s";
}

function cell(row, value, options) {
  const td = el("td", options && options.cls ? { class: options.cls } : {});
  if (options && options.col) td.dataset.col = options.col;
  td.textContent = value;
  row.appendChild(td);
  return td;
}

function fillTable(id, rows, columns, key, empty) {
  const body = document.querySelector(`#${id} tbody`);
  const out = [];
  for (const row of rows) {
    const tr = el("tr");
    tr.dataset.key = key(row);
    for (const [col, value, cls] of columns(row)) cell(tr, value, { col, cls });
    out.push(tr);
  }
  if (out.length === 0) {
    const tr = el("tr");
    const td = cell(tr, empty, { cls: "empty" });
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function render(data) {
  const s = data.summary;
  text("requests-total", fmt.count(s.requests_total));
  text("requests-per-second", fmt.rate(s.requests_per_second));
  text("latency-p50", fmt.seconds(s.latency_seconds.p50));
  text("latency-p90", fmt.seconds(s.latency_seconds.p90));
  text("latency-p99", fmt.seconds(s.latency_seconds.p99));
  for (const w of document.querySelectorAll(".window")) w.textContent = `(${s.window_seconds} s)`;
  const span = data.history_seconds;
  for (const since of document.querySelectorAll(".since")) since.textContent = span < 120 ? `${span} s ago` : `${Math.round(span / 60)} min ago`;
  drawChart(document.getElementById("rate-chart"), data,
            [{ values: data.series.requests_per_second, cls: "rate", area: true }], axisCount, linearScale);
  drawChart(document.getElementById("latency-chart"), data,
            [{ values: data.series.latency_p50_seconds, cls: "p50" },
             { values: data.series.latency_p90_seconds, cls: "p90" },
             { values: data.series.latency_p99_seconds, cls: "p99" }], axisSeconds, logScale);
  fillTable("workers", data.workers, w => [
    ["pool", w.pool], ["number", String(w.number), "n"], ["pid", String(w.pid), "n"],
    ["state", w.state, "state " + w.state], ["requests", fmt.count(w.requests), "n"],
    ["respawns", String(w.respawns), "n"], ["memory", fmt.bytes(w.rss_bytes), "n"],
    ["uptime", fmt.duration(data.time - w.spawned_at), "n"],
  ], w => String(w.pid), "no workers reported");
  fillTable("upstreams", data.upstreams, u => [
    ["upstream", u.upstream], ["peer", u.peer],
    ["state", u.state === "partial" ? `partial (${u.up}/${u.reporting})` : u.state, "state " + u.state],
    ["failures", fmt.count(u.failures), "n"],
  ], u => u.upstream + " " + u.peer, "no upstream peers");
  text("model-window", `(${data.models.length ? data.models[0].window_seconds : 60} s)`);
  fillTable("models", data.models, m => [
    ["model", m.model], ["queue_depth", fmt.count(m.queue_depth), "n"],
    ["requests_per_second", fmt.rate(m.requests_per_second), "n"],
    ["batch_mean", fmt.decimal(m.batch_size.mean), "n"], ["batch_p90", fmt.decimal(m.batch_size.p90), "n"],
    ["queue_p50", fmt.seconds(m.queue_latency_seconds.p50), "n"], ["queue_p99", fmt.seconds(m.queue_latency_seconds.p99), "n"],
    ["compute_p50", fmt.seconds(m.compute_latency_seconds.p50), "n"], ["compute_p99", fmt.seconds(m.compute_latency_seconds.p99), "n"],
    ["failures", fmt.count(m.failures), "n"],
  ], m => m.model, "no models");
  const live = document.getElementById("live");
  live.className = "ok";
  live.textContent = `live \u00b7 ${data.processes} process${data.processes === 1 ? "" : "es"} \u00b7 updated ${new Date(data.time * 1000).toLocaleTimeString()}`;
  document.body.dataset.sequence = String(data.sequence);
}

// One fetch and redraw; the loop below calls it every second.
async function update() {
  const response = await fetch(location.pathname + "?format=json", { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  render(await response.json());
}

let failures = 0;
async function refresh() {
  try {
    await update();
    failures = 0;
  } catch (error) {
    // The kernel restarting or the network gone: say so calmly and keep trying, less often.
    failures += 1;
    const live = document.getElementById("live");
    live.className = "stale";
    live.textContent = `no answer (${error.message}); retrying`;
  } finally {
    setTimeout(refresh, failures ? Math.min(5000, 1000 * failures) : 1000);
  }
}
refresh();
</script>
</body>
</html>
"""#
}
