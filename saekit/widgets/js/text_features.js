// Which features fire on a text: the tokens, each shaded by its strongest latent's activation; a click lists a
// token's latents, a click on a latent asks the kernel for its card (the `card` trait), drawn below.
function render({ model, el }) {
  const root = h("div", { class: "saekit-job saekit-text-features" });
  el.appendChild(root);
  const text = h("div", { class: "saekit-context-text saekit-text" });
  const list = h("div", { class: "saekit-token-latents" });
  const cardBox = h("div", { class: "saekit-text-card" });
  root.append(text, list, cardBox);
  let hist = null;
  const open = (id) => model.send({ type: "open", id });

  function drawText() {
    const tokens = model.get("tokens"), selected = model.get("selected");
    const peak = Math.max(0, ...tokens.map((t) => (t.top.length ? t.top[0][1] : 0)));
    text.replaceChildren();
    tokens.forEach((token, i) => {
      const value = token.top.length ? token.top[0][1] : 0;
      const span = h("span", { class: `saekit-tok${i === selected ? " saekit-tok-center" : ""}`, "data-position": String(i),
        title: token.top.map(([id, v]) => `#${id} ${fmtNumber(v)}`).join(", ") || "nothing fired", text: tokenText(token.text) });
      if (peak > 0 && value > 0) span.style.background = `rgba(249,115,22,${(0.12 + 0.88 * Math.min(1, value / peak)).toFixed(3)})`;
      span.addEventListener("click", () => { model.set("selected", i); model.save_changes(); });
      text.appendChild(span);
    });
  }

  function drawList() {
    const tokens = model.get("tokens"), selected = model.get("selected"), features = model.get("features");
    list.replaceChildren();
    if (selected < 0 || selected >= tokens.length) {
      list.appendChild(h("div", { class: "saekit-muted", text: "click a token to see its features" }));
      return;
    }
    const token = tokens[selected];
    list.appendChild(h("div", { class: "saekit-section", text: `token ${selected}: ${JSON.stringify(token.text)}` }));
    if (!token.top.length) list.appendChild(h("div", { class: "saekit-muted", text: "no feature fired" }));
    const table = h("table", { class: "saekit-table" });
    for (const [id, value] of token.top) {
      const row = features[String(id)] || {};
      const link = h("button", { class: "saekit-latent-link", "data-latent": String(id), text: `#${id}` });
      link.addEventListener("click", () => open(id));
      table.appendChild(h("tr", {}, [h("td", {}, [link]), h("td", { text: fmtNumber(value) }),
        h("td", { text: row.label || (row.top_tokens || []).map(tokenText).join(" · ") })]));
    }
    list.appendChild(table);
  }

  function drawCardBox() {
    if (hist) hist.destroy();
    hist = model.get("card").id === undefined ? null : drawCard(cardBox, model.get("card"), open);
  }

  drawText(); drawList(); drawCardBox();
  model.on("change:tokens", () => { drawText(); drawList(); });
  model.on("change:selected", () => { drawText(); drawList(); });
  model.on("change:card", drawCardBox);
  const unwatch = watchKernel(model, () => markGone(root, ""));
  return () => { unwatch(); if (hist) hist.destroy(); };
}

export default { render };
