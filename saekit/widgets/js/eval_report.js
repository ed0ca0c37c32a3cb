// One SAE's evaluation: a table per metric family (value, 95% interval), and sparse probing's accuracies as bars
// by k, the SAE's latents beside the model's own dimensions.
function render({ model, el }) {
  const root = h("div", { class: "saekit-job saekit-eval-report" });
  el.appendChild(root);

  function bars(rows) {
    const box = h("div", { class: "saekit-eval-bars" });
    box.appendChild(h("div", { class: "saekit-muted", text: "accuracy with the top-k dimensions: SAE latents (blue) vs the model's (grey)" }));
    for (const [label, sae, llm] of rows) {
      const line = h("div", { class: "saekit-eval-bar-row" });
      line.appendChild(h("span", { class: "saekit-eval-bar-label", text: label }));
      for (const [value, cls] of [[sae, "saekit-eval-bar-sae"], [llm, "saekit-eval-bar-llm"]]) {
        const bar = h("span", { class: `saekit-eval-bar ${cls}`, title: value == null ? "?" : fmtNumber(value) });
        bar.style.width = `${Math.max(0, Math.min(1, value || 0)) * 220}px`;
        line.append(bar, h("span", { class: "saekit-eval-bar-value", text: value == null ? "?" : value.toFixed(3) }));
      }
      box.appendChild(line);
    }
    return box;
  }

  let charts = null;
  function curves(data) {
    const box = h("div", { class: "saekit-charts" });
    root.appendChild(box);
    charts = new ChartSet(box);
    charts.show([{ key: "steering", series: data.series, options: { title: "concept by loss increase",
      xLabel: "loss increase (nats)", yLabel: "concept (probe probability)", height: 200, logToggle: false } }]);
    const [x, y] = data.prompting;
    root.appendChild(h("div", { class: "saekit-muted", text: `prompting: concept ${fmtNumber(y)} at a loss increase of ${fmtNumber(x)}; the better steering: ${data.winner}` }));
  }

  function draw() {
    if (charts) { charts.destroy(); charts = null; }
    root.replaceChildren(h("div", { class: "saekit-section", text: model.get("title") }));
    for (const family of model.get("families")) {
      const seconds = family.seconds == null ? "" : ` (${fmtNumber(family.seconds)} s)`;
      root.appendChild(h("div", { class: "saekit-section", text: family.title + seconds }));
      const table = h("table", { class: "saekit-table", "data-family": family.family });
      table.appendChild(h("tr", {}, ["metric", "value", "95% interval"].map((t) => h("th", { text: t }))));
      for (const [name, value, ci] of family.rows) {
        table.appendChild(h("tr", {}, [h("td", { text: name }), h("td", { text: value == null ? "-" : fmtNumber(value) }),
          h("td", { text: ci == null ? "" : `± ${fmtNumber(ci)}` })]));
      }
      root.appendChild(table);
      if (family.family === "sparse_probing" && model.get("probing").length) root.appendChild(bars(model.get("probing")));
      if (family.family === "steering" && model.get("steering").series) curves(model.get("steering"));
      for (const warning of family.warnings) root.appendChild(h("div", { class: "saekit-warning", text: warning }));
    }
  }

  draw();
  model.on("change:families", draw);
  const unwatch = watchKernel(model, () => markGone(root, ""));
  return () => { unwatch(); if (charts) charts.destroy(); };
}

export default { render };
