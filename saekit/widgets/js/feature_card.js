// The feature card widget: one Feature's data in the `feature` trait; "open" requests go to the kernel.
function render({ model, el }) {
  const root = h("div", { class: "saekit-job saekit-feature" });
  el.appendChild(root);
  const box = h("div");
  root.appendChild(box);
  let hist = null;
  const draw = () => {
    if (hist) hist.destroy();
    hist = drawCard(box, model.get("feature"), model.get("can_open") ? (id) => model.send({ type: "open", id }) : null);
  };
  draw();
  model.on("change:feature", draw);
  const unwatch = watchKernel(model, () => markGone(root, ""));
  return () => { unwatch(); if (hist) hist.destroy(); };
}

export default { render };
