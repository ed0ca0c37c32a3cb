// One chart overlaying a metric (or progress over time) of several runs, and a table of their final values
// and the settings that tell them apart.
function render({ model, el }) {
  const root = h("div", { class: "saekit-panel saekit-compare" });
  const chartBox = h("div", { class: "saekit-charts saekit-wide" });
  const tableBox = h("div");
  root.append(chartBox, tableBox);
  el.appendChild(root);
  const charts = new ChartSet(chartBox);

  function draw() {
    const metric = model.get("metric");
    charts.show([{ key: metric, series: model.get("series") || {}, options: {
      title: `${metric} by ${model.get("x_label")}`, xLabel: model.get("x_label"), height: 260,
      log: metric === "loss" || metric === "fvu" } }]);
    const columns = model.get("columns") || [], rows = model.get("rows") || [];
    tableBox.replaceChildren(rows.length ? h("table", { class: "saekit-table" }, [
      h("tr", {}, columns.map((c) => h("th", { text: c }))),
      ...rows.map((row) => h("tr", {}, row.map((cell, i) => h("td", {},
        [i === 1 ? badge(cell) : h("span", { text: typeof cell === "number" ? fmtNumber(cell) : (cell ?? "") })])))),
    ]) : h("span"));
  }

  draw();
  model.on("change", draw);
  const unwatch = watchKernel(model, () => markGone(root, null));
  return () => { unwatch(); charts.destroy(); model.off("change", draw); };
}

export default { render };
