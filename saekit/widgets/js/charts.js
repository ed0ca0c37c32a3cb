// Shared helpers of saekit's widgets, joined after the vendored uPlot (vendor/uPlot.iife.min.js, which defines
// `uPlot`) and before each widget's own module: no build step. Charts are uPlot; this file is only the thin
// adapter: series in, a chart with axes, ticks, hover values, a log toggle and a responsive width out.
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function h(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.appendChild(child);
  return node;
}

function fmtCount(x) {
  if (x === null || x === undefined || !isFinite(x)) return "?";
  if (Math.abs(x) >= 100 || Number.isInteger(x)) return Math.round(x).toLocaleString("en-US");
  return x.toLocaleString("en-US", { maximumFractionDigits: 3 });
}

function fmtNumber(x) {  // 200000 is "200k" and 1.5e9 "1.5B" (not 2.00e+5); tiny values in exponent form
  if (x === null || x === undefined || !isFinite(x)) return "?";
  const a = Math.abs(x);
  for (const [suffix, size] of [["T", 1e12], ["B", 1e9], ["M", 1e6], ["k", 1e3]]) {
    if (a >= 1e5 && a >= size) return `${(x / size).toLocaleString("en-US", { maximumSignificantDigits: 3 })}${suffix}`;
  }
  if (a !== 0 && a < 1e-3) return x.toExponential(2);
  return x.toLocaleString("en-US", { maximumSignificantDigits: 4 });
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) return "?";
  seconds = Math.round(seconds);
  const hours = Math.floor(seconds / 3600), minutes = Math.floor((seconds % 3600) / 60), rest = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return hours ? `${hours}:${pad(minutes)}:${pad(rest)}` : `${minutes}:${pad(rest)}`;
}

// clock-time tick labels (epoch seconds): seconds shown only when the ticks are less than a minute apart
function fmtClock(splits) {
  const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 0;
  const opts = step && step < 60 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
  return splits.map((v) => (v === null || v === undefined ? "" : new Date(v * 1000).toLocaleTimeString("en-GB", opts)));
}

function fmtBytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return "?";
  for (const [unit, size] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= size) return `${(n / size).toFixed(1).replace(/\.0$/, "")} ${unit}`;
  }
  return `${Math.round(n)} B`;
}

// tick steps that are round in binary units (256 MiB, 512 MiB, 1 GiB), not 976.6 KiB
const BYTE_INCRS = Array.from({ length: 51 }, (_, e) => 2 ** e);

// ticks of a log axis at round values (1, 2, 5 times powers of ten; finer over a narrow range; decades over a
// wide one), not 0.5623 / 1.778 / 3.162
function logSplits(u, axisIdx, min, max) {
  if (!(min > 0) || !(max > min)) return [min, max];
  const lo = Math.floor(Math.log10(min)), hi = Math.ceil(Math.log10(max));
  let out = [];
  for (const steps of [[1], [1, 2, 5], [1, 1.5, 2, 3, 5, 7]]) {
    out = [];
    for (let e = lo; e <= hi; e++) {
      for (const m of steps) {
        const v = m * 10 ** e;
        if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) out.push(Number(v.toPrecision(12)));
      }
    }
    if (out.length >= 3) return out;
  }
  return out.length >= 2 ? out : [min, max];
}

function badge(status, extra = "") {
  return h("span", { class: `saekit-badge saekit-${status} ${extra}`, text: status });
}

// {name: [[x, y], ...]} -> uPlot's [xs, ys1, ys2, ...] over the union of the xs (nulls where a series has none)
function aligned(series, names) {
  const xs = [...new Set(names.flatMap((n) => series[n].map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  return [xs, ...names.map((n) => {
    const ys = new Array(xs.length).fill(null);
    for (const [x, y] of series[n]) ys[index.get(x)] = y !== null && isFinite(y) ? y : null;
    return ys;
  })];
}

// The legend shows the latest values when the cursor is not over the chart (and the hovered ones when it is).
function showLast(u) {
  const n = u.data[0].length;
  if (n) u.setLegend({ idx: n - 1 }, false);
}

// A line chart that follows its data: chart.update(series) keeps the instance (and the hover) alive.
// options: title, xLabel, yLabel, log (initial), logToggle, height, xTime (x is epoch seconds), yFormat, percent,
// yRange (uPlot's (u, min, max) => [lo, hi] for the linear y axis).
class LineChart {
  constructor(options = {}) {
    this.options = options;
    this.log = Boolean(options.log);
    this.node = h("div", { class: "saekit-chart", "data-chart": options.title || "" });
    this.titleNode = h("span", { class: "saekit-chart-title", text: options.title || "" });
    const head = h("div", { class: "saekit-chart-head" }, [this.titleNode]);
    if (options.logToggle !== false) {
      const toggle = h("input", { type: "checkbox", class: "saekit-log-toggle", title: "logarithmic y axis" });
      toggle.checked = this.log;
      toggle.addEventListener("change", () => { this.log = toggle.checked; this._rebuild(); });
      head.appendChild(h("label", { class: "saekit-log" }, [toggle, h("span", { text: "log" })]));
    }
    this.node.appendChild(head);
    this.plotNode = h("div", { class: "saekit-plot" });
    this.node.appendChild(this.plotNode);
    this.series = {};
    this.names = [];
    this.u = null;
    this._observer = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => this._resize()) : null;
    if (this._observer) this._observer.observe(this.node);
  }

  _width() {
    const width = this.node.clientWidth || this.options.width || 360;
    return Math.max(220, Math.floor(width) - 4);
  }

  _resize() {
    if (this.u) {
      const width = this._width();
      if (Math.abs(width - this.u.width) > 2) this.u.setSize({ width, height: this.options.height || 180 });
    }
  }

  _axisValues(which) {
    const format = this.options[which === "x" ? "xFormat" : "yFormat"] || fmtNumber;
    const time = which === "x" && this.options.xTime;
    return (u, splits) => {
      const labels = time ? fmtClock(splits) : splits.map((v) => (v === null || v === undefined ? "" : format(v)));
      this.node.dataset[which === "x" ? "xticks" : "yticks"] = labels.join("|");
      return labels;
    };
  }

  _rebuild() {
    if (this.u) { this.u.destroy(); this.u = null; }
    const names = this.names;
    this.plotNode.replaceChildren();
    if (!names.length) {
      this.plotNode.appendChild(h("div", { class: "saekit-muted saekit-empty-chart", text: "no values yet" }));
      return;
    }
    const data = aligned(this.series, names);
    const positive = data.slice(1).every((ys) => ys.every((y) => y === null || y > 0));
    const log = this.log && positive;
    const opts = {
      width: this._width(), height: this.options.height || 180,
      legend: { show: true, live: true },
      cursor: { drag: { x: true, y: false } },
      hooks: { setCursor: [(u) => { if (u.cursor.idx === null || u.cursor.idx === undefined) showLast(u); }],
               ready: [showLast] },
      // xAsinh: a log-like x axis that still shows 0 (linear within xAsinh of it): coefficients that grow geometrically
      scales: { x: this.options.xAsinh ? { time: false, distr: 4, asinh: this.options.xAsinh } : { time: Boolean(this.options.xTime) }, y: log ? { distr: 3 } : (this.options.yRange ? { auto: true, range: this.options.yRange } : { auto: true }) },
      axes: [
        { label: this.options.xLabel || "", labelSize: this.options.xLabel ? 30 : 0, values: this._axisValues("x"), size: 36 },
        { label: this.options.yLabel || "", values: this._axisValues("y"), size: 56,
          space: (this.options.height || 180) < 150 ? 20 : 30,  // a small chart still gets ticks
          ...(log ? { splits: logSplits, filter: (u, splits) => splits } : {}),  // every round tick labelled
          ...(this.options.yFormat === fmtBytes ? { incrs: BYTE_INCRS } : {}) },
      ],
      series: [
        { label: this.options.xLabel || "x", value: (u, v) => (v === null ? "" : (this.options.xTime ? new Date(v * 1000).toLocaleTimeString() : fmtNumber(v))) },
        ...names.map((name, i) => ({
          label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
          value: (u, v) => (v === null ? "" : (this.options.yFormat || fmtNumber)(v)),
        })),
      ],
    };
    this.u = new uPlot(opts, data, this.plotNode);
  }

  retitle(title) {
    if (title !== undefined && title !== this.options.title) {
      this.options = { ...this.options, title };
      this.titleNode.textContent = title || "";
      this.node.dataset.chart = title || "";
    }
  }

  update(series) {
    const names = Object.keys(series).filter((n) => series[n] && series[n].length);
    const sameNames = names.length === this.names.length && names.every((n, i) => n === this.names[i]);
    this.series = series;
    this.names = names;
    if (!this.u || !sameNames) { this._rebuild(); return; }
    this.u.setData(aligned(series, names));
    if (this.u.cursor.idx === null || this.u.cursor.idx === undefined) showLast(this.u);
  }

  destroy() {
    if (this._observer) this._observer.disconnect();
    if (this.u) this.u.destroy();
  }
}

// Charts kept by key across redraws of a widget (so updates do not reset a chart the user is reading).
class ChartSet {
  constructor(container) { this.container = container; this.charts = new Map(); }

  show(specs) {  // specs: [{key, options, series}], in order
    const keys = new Set(specs.map((s) => s.key));
    for (const [key, chart] of this.charts) if (!keys.has(key)) { chart.destroy(); chart.node.remove(); this.charts.delete(key); }
    for (const spec of specs) {
      let chart = this.charts.get(spec.key);
      if (!chart) { chart = new LineChart(spec.options); this.charts.set(spec.key, chart); }
      else chart.retitle(spec.options.title);  // a title may carry a live part ("last 2:05")
      this.container.appendChild(chart.node);  // (re)appended in order
      chart.update(spec.series);
    }
  }

  destroy() { for (const chart of this.charts.values()) chart.destroy(); this.charts.clear(); }
}

// A live view hides its widget's static snapshot (the output after it, for readers without the widgets' JavaScript)
// by the key the snapshot carries: one rule in the page's head, whichever front end draws the two outputs.
function saekitHideSnapshot(key) {
  if (!key || !/^[0-9a-f]+$/.test(key) || document.getElementById(`saekit-hide-${key}`)) return;
  const style = document.createElement("style");
  style.id = `saekit-hide-${key}`;
  style.textContent = `.saekit-snapshot[data-saekit-key="${key}"] { display: none; }`;
  document.head.appendChild(style);
}

// Calls `onGone` once the view has lost its kernel: there is no kernel behind the notebook; the kernel is not
// the one that made this view (a notebook reopened from its saved widget state: the model records its kernel's
// id); the kernel restarts, stops or dies (its connection says so); or the kernel no longer answers this view's
// pings. A ping is a request the kernel answers with a pong before it turns idle again, so a busy kernel (a cell
// waiting in job.result()) answers late, never wrongly: the view concludes only once the kernel went idle after
// its ping without a pong - a restarted kernel does not know the old widget.
const GONE_STATUSES = new Set(["starting", "restarting", "autorestarting", "dead", "terminating"]);
const PING_SECONDS = 5;

function watchKernel(model, onGone) {
  let done = false, pending = null, count = 0;
  const answered = new Set();
  const gone = (why) => { if (!done) { done = true; onGone(why); } };
  const manager = model.widget_manager;
  const kernel = manager && manager.kernel;
  const mine = model.get("kernel_id");
  if (!kernel) { gone("no kernel"); return () => {}; }
  if (mine && kernel.id && kernel.id !== mine) { gone("another kernel"); return () => {}; }
  const onStatus = (_, status) => { if (GONE_STATUSES.has(status)) gone(status); };
  const onDisposed = () => gone("disposed");
  const onPong = (content) => { if (content && content.type === "pong") answered.add(content.n); };
  kernel.statusChanged.connect(onStatus);
  if (kernel.disposed) kernel.disposed.connect(onDisposed);
  model.on("msg:custom", onPong);
  const ping = () => {
    if (done || pending !== null) return;
    const n = ++count;
    pending = n;
    model.send({ type: "ping", n }, { iopub: { status: (msg) => {
      if (msg.content.execution_state !== "idle" || pending !== n) return;
      pending = null;
      if (!answered.has(n)) gone("no answer");
    } } });
  };
  ping();
  const timer = setInterval(ping, PING_SECONDS * 1000);
  return () => {
    clearInterval(timer);
    kernel.statusChanged.disconnect(onStatus);
    if (kernel.disposed) kernel.disposed.disconnect(onDisposed);
    model.off("msg:custom", onPong);
  };
}

// A gone kernel: the view greys out, stops its clock and turns off its buttons, and says why.
function markGone(root, jobId) {
  root.classList.add("saekit-gone");
  for (const button of root.querySelectorAll("button")) button.disabled = true;
  if (!root.querySelector(".saekit-gone-note")) {
    root.prepend(h("div", { class: "saekit-gone-note", text:
      `This view lost its kernel: it shows the last state it had.${jobId ? ` sk.job("${jobId}") in a running kernel follows the job live.` : ""}` }));
  }
}

// A histogram: bars over bins [edges[i], edges[i+1]) with counts, x on a log axis when the bins are log-spaced.
// Hover shows the bin's range and count. options: title, xLabel, yLabel, height.
class Histogram {
  constructor(options = {}) {
    this.options = options;
    this.node = h("div", { class: "saekit-chart", "data-chart": options.title || "" });
    this.node.appendChild(h("div", { class: "saekit-chart-head" }, [h("span", { class: "saekit-chart-title", text: options.title || "" })]));
    this.plotNode = h("div", { class: "saekit-plot" });
    this.node.appendChild(this.plotNode);
    this.u = null;
  }

  update(edges, counts) {
    if (this.u) { this.u.destroy(); this.u = null; }
    this.plotNode.replaceChildren();
    const used = counts.map((c, i) => i).filter((i) => counts[i] > 0);
    if (!used.length) { this.plotNode.appendChild(h("div", { class: "saekit-muted saekit-empty-chart", text: "never fired" })); return; }
    const lo = Math.max(0, used[0] - 1), hi = Math.min(counts.length - 1, used[used.length - 1] + 1);
    // x is log10 of the bin's geometric centre (the bins are log-spaced), labelled in activation units
    const xs = [], ys = [], ranges = [];
    for (let i = lo; i <= hi; i++) {
      const a = edges[i], b = edges[i + 1];
      const left = a > 0 ? a : b / 10 ** (1 / 8), right = b !== null && isFinite(b) ? b : a * 10 ** (1 / 8);
      xs.push(Math.log10(Math.sqrt(left * right))); ys.push(counts[i]); ranges.push([a, b]);
    }
    const step = xs.length > 1 ? xs[1] - xs[0] : 1 / 8;
    const rangeText = (idx) => { const [a, b] = ranges[idx]; return `${fmtNumber(a)} – ${b === null ? "∞" : fmtNumber(b)}`; };
    const opts = {
      width: Math.max(220, (this.node.clientWidth || this.options.width || 360) - 4), height: this.options.height || 150,
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false, range: () => [xs[0] - step, xs[xs.length - 1] + step] },
                y: { auto: true, range: (u, min, max) => [0, max * 1.05 || 1] } },
      axes: [
        { label: this.options.xLabel || "activation", size: 36, values: (u, splits) => {
          const labels = splits.map((v) => fmtNumber(10 ** v)); this.node.dataset.xticks = labels.join("|"); return labels; } },
        { label: this.options.yLabel || "tokens", size: 50, values: (u, splits) => {
          const labels = splits.map((v) => fmtCount(v)); this.node.dataset.yticks = labels.join("|"); return labels; } },
      ],
      series: [
        { label: "activation", value: (u, v, si, idx) => (idx === null || idx === undefined ? "" : rangeText(idx)) },
        { label: "tokens", fill: "rgba(37,99,235,0.35)", stroke: PALETTE[0], width: 1,
          paths: uPlot.paths.bars({ size: [0.9, 40] }), points: { show: false },
          value: (u, v) => (v === null ? "" : fmtCount(v)) },
      ],
    };
    this.u = new uPlot(opts, [xs, ys], this.plotNode);
  }

  destroy() { if (this.u) this.u.destroy(); }
}
