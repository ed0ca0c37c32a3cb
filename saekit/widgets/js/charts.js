// Shared helpers of saekit's widgets (prepended to each widget's module; no build step).
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function h(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.appendChild(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function fmtCount(x) {
  if (x === null || x === undefined || !isFinite(x)) return "?";
  if (Math.abs(x) >= 100 || Number.isInteger(x)) return Math.round(x).toLocaleString("en-US");
  return x.toLocaleString("en-US", { maximumFractionDigits: 3 });
}

function fmtNumber(x) {
  if (x === null || x === undefined || !isFinite(x)) return "?";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  return x.toLocaleString("en-US", { maximumSignificantDigits: 4 });
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) return "?";
  seconds = Math.round(seconds);
  const hours = Math.floor(seconds / 3600), minutes = Math.floor((seconds % 3600) / 60), rest = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return hours ? `${hours}:${pad(minutes)}:${pad(rest)}` : `${minutes}:${pad(rest)}`;
}

function fmtBytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return "?";
  for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= size) return `${(n / size).toFixed(1)} ${unit}`;
  }
  return `${Math.round(n)} B`;
}

// A line chart of several series {name: [[x, y], ...]} with its title, y range and last value.
function lineChart(title, series, { width = 220, height = 90, logY = false } = {}) {
  const names = Object.keys(series).filter((n) => series[n].length);
  const box = h("div", { class: "saekit-chart" }, [h("div", { class: "saekit-chart-title", text: title })]);
  const plot = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "saekit-chart-svg" });
  box.appendChild(plot);
  if (!names.length) {
    box.appendChild(h("div", { class: "saekit-muted", text: "no values yet" }));
    return box;
  }
  const tf = (y) => (logY ? Math.log10(Math.max(y, 1e-12)) : y);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const n of names) for (const [x, y] of series[n]) {
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, tf(y)); y1 = Math.max(y1, tf(y));
  }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
  const pad = 4;
  const sx = (x) => pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((tf(y) - y0) / (y1 - y0)) * (height - 2 * pad);
  names.forEach((n, i) => {
    const points = series[n].map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    plot.appendChild(svg("polyline", { points, fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 1.5 }));
  });
  const legend = names.map((n, i) => {
    const last = series[n][series[n].length - 1];
    return h("span", { class: "saekit-legend" }, [
      h("span", { class: "saekit-swatch", style: `background:${PALETTE[i % PALETTE.length]}` }),
      h("span", { text: `${names.length > 1 ? n + " " : ""}${fmtNumber(last[1])}` }),
    ]);
  });
  box.appendChild(h("div", { class: "saekit-chart-legend" }, legend));
  return box;
}

// A small sparkline of values (nulls skipped) with a label and the last value formatted by fmt.
function sparkline(label, values, fmt = fmtNumber, { width = 120, height = 28, max = null } = {}) {
  const kept = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined && isFinite(v));
  const box = h("div", { class: "saekit-spark" });
  box.appendChild(h("span", { class: "saekit-spark-label", text: label }));
  const plot = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  if (kept.length > 1) {
    const top = max ?? Math.max(...kept.map(([, v]) => v), 1e-12);
    const n = Math.max(values.length - 1, 1);
    const points = kept.map(([i, v]) => `${((i / n) * width).toFixed(1)},${(height - 1 - (Math.min(v, top) / top) * (height - 2)).toFixed(1)}`).join(" ");
    plot.appendChild(svg("polyline", { points, fill: "none", stroke: PALETTE[0], "stroke-width": 1.2 }));
  }
  box.appendChild(plot);
  box.appendChild(h("span", { class: "saekit-spark-value", text: kept.length ? fmt(kept[kept.length - 1][1]) : "-" }));
  return box;
}

function badge(status) {
  return h("span", { class: `saekit-badge saekit-${status}`, text: status });
}
