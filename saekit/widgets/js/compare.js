// One chart overlaying a metric (or progress over time) of several jobs.
function render({ model, el }) {
  const root = h("div", { class: "saekit-panel saekit-compare" });
  el.appendChild(root);
  function draw() {
    const metric = model.get("metric");
    root.replaceChildren(lineChart(`${metric} by ${model.get("x_label")}`, model.get("series") || {},
      { width: 560, height: 220, logY: metric === "loss" || metric === "fvu" }));
  }
  draw();
  model.on("change", draw);
  return () => model.off("change", draw);
}

export default { render };
