// Steering views: generations side by side (changed tokens marked, activation read back, log-probability),
// and a coefficient sweep (one chart per measure, x = coefficient, and its table).
const TITLES = { concept: "concept score (feature activation)", target_probability: "P(target tokens)",
                 perplexity: "perplexity (unsteered model)", kl: "KL on neutral text" };

function heading(data) {
  const weights = data.weights || {};
  const feats = data.features.map((i) => `#${i}` + (weights[String(i)] !== undefined && weights[String(i)] !== 1 ? ` ×${fmtNumber(weights[String(i)])}` : "")).join(", ");
  return `steering ${feats}, mode ${data.mode}${data.relative ? " × max activation" : ""}` +
    (data.positions ? `, positions ${data.positions}` : "");
}

function coeffText(row) { return row.coeff === null ? "unsteered" : fmtNumber(row.coeff); }

function comparison(root, data) {
  root.appendChild(h("div", { class: "saekit-title", text: heading(data) }));
  root.appendChild(h("div", { class: "saekit-muted" }, [h("span", { text: "prompt: " }), h("code", { text: data.prompt })]));
  const table = h("table", { class: "saekit-table saekit-steering" });
  table.appendChild(h("tr", {}, ["coefficient", "generation (changed tokens marked)", "activation read back", "log-prob"]
    .map((t) => h("th", { text: t }))));
  for (const row of data.rows) {
    const text = h("td", { class: "saekit-generation" });
    row.tokens.forEach((token, i) => text.appendChild(h("span", {
      class: row.differs[i] ? "saekit-changed" : "", text: token, title: row.differs[i] ? "differs from the unsteered output" : "" })));
    const act = Object.entries(row.activation).map(([k, v]) => `#${k} ${fmtNumber(v)}`).join(", ") || "-";
    table.appendChild(h("tr", { "data-coeff": String(row.coeff) }, [h("td", { text: coeffText(row) }), text,
      h("td", { text: act }), h("td", { text: fmtNumber(row.logprob) })]));
  }
  root.appendChild(table);
  return null;
}

function sweep(root, data, series) {
  root.appendChild(h("div", { class: "saekit-title", text: heading(data) }));
  const box = h("div", { class: "saekit-charts" });
  root.appendChild(box);
  const charts = new ChartSet(box);
  // coefficients that grow geometrically (0, 1, 2, 4, 8, 16...) get a log-like x axis that still shows 0
  const positive = data.rows.map((r) => r.coeff).filter((c) => c > 0).sort((a, b) => a - b);
  const geometric = positive.length >= 3 && data.rows.every((r) => r.coeff >= 0) && positive[positive.length - 1] / positive[0] >= 8;
  charts.show(Object.keys(series).map((m) => ({ key: m, series: { [m]: series[m] }, options: {
    title: `${TITLES[m] || m} by coefficient`, xLabel: geometric ? "coefficient (log scale)" : "coefficient", yLabel: m,
    height: 180, log: m === "perplexity", xAsinh: geometric ? positive[0] : 0 } })));
  const columns = ["coeff", ...Object.keys(series)];
  root.appendChild(h("table", { class: "saekit-table" }, [h("tr", {}, columns.map((c) => h("th", { text: c }))),
    ...data.rows.map((r) => h("tr", {}, columns.map((c) => h("td", { text: r[c] === null || r[c] === undefined ? "" : fmtNumber(r[c]) }))))]));
  return charts;
}

function render({ model, el }) {
  const root = h("div", { class: "saekit-panel saekit-steer" });
  el.appendChild(root);
  let charts = null;
  const draw = () => {
    if (charts) charts.destroy();
    root.replaceChildren();
    const data = model.get("data");
    charts = model.get("view") === "sweep" ? sweep(root, data, model.get("series") || {}) : comparison(root, data);
  };
  draw();
  model.on("change:data", draw);
  const unwatch = watchKernel(model, () => markGone(root, null));
  return () => { unwatch(); if (charts) charts.destroy(); model.off("change:data", draw); };
}

export default { render };
