// The feature browser: a search box, a list sortable by frequency / max / mean (the kernel searches and sorts,
// the `rows` trait holds the result), and the card of the selected feature. Click a row or move with the arrow
// keys (j/k too); Enter in the search box searches.
function render({ model, el }) {
  // the browser's own keys (arrows, j/k) are not the notebook's shortcuts while it has the focus
  const root = h("div", { class: "saekit-job saekit-browser", tabindex: "0", "data-lm-suppress-shortcuts": "true" });
  el.appendChild(root);
  const head = h("div", { class: "saekit-head" });
  const search = h("input", { type: "search", class: "saekit-search", placeholder: "search tokens and labels, or a feature id…" });
  search.value = model.get("query");
  const sort = h("select", { class: "saekit-sort" });
  for (const key of ["frequency", "max", "mean", "id", "relevance"]) sort.appendChild(h("option", { value: key, text: `sort: ${key}` }));
  sort.value = model.get("sort");
  const count = h("span", { class: "saekit-muted saekit-count" });
  head.append(h("span", { class: "saekit-title", text: model.get("title") }), search, sort, count);
  const body = h("div", { class: "saekit-browser-body" });
  const list = h("div", { class: "saekit-feature-list" });
  const cardBox = h("div", { class: "saekit-browser-card" });
  body.append(list, cardBox);
  root.append(head, body);
  let hist = null;

  search.addEventListener("keydown", (e) => { if (e.key === "Enter") { model.set("query", search.value); model.save_changes(); } e.stopPropagation(); });
  search.addEventListener("search", () => { model.set("query", search.value); model.save_changes(); });
  sort.addEventListener("change", () => { model.set("sort", sort.value); model.save_changes(); });
  const select = (id) => { model.set("selected", id); model.save_changes(); };

  function drawList() {
    const rows = model.get("rows"), selected = model.get("selected");
    count.textContent = `${fmtCount(model.get("matches"))} of ${fmtCount(model.get("total"))} features${rows.length < model.get("matches") ? ` (first ${rows.length} shown)` : ""}`;
    list.replaceChildren();
    const table = h("table", { class: "saekit-table" });
    table.appendChild(h("tr", {}, ["#", "frequency", "max", "top tokens"].map((t) => h("th", { text: t }))));
    for (const row of rows) {
      const tr = h("tr", { class: `saekit-feature-row${row.id === selected ? " saekit-selected" : ""}`, "data-latent": String(row.id) }, [
        h("td", { text: String(row.id) }), h("td", { text: `${(100 * row.frequency).toPrecision(3)}%` }),
        h("td", { text: fmtNumber(row.max) }),
        h("td", { text: row.label ? row.label : row.top_tokens.map(tokenText).join(" · ") }),
      ]);
      tr.addEventListener("click", () => select(row.id));
      table.appendChild(tr);
    }
    list.appendChild(table);
    if (!rows.length) list.appendChild(h("div", { class: "saekit-muted", text: model.get("query") ? "no feature matches" : "no features" }));
    if (rows.length < model.get("matches")) {
      const more = h("button", { class: "saekit-more", text: `show ${fmtCount(Math.min(200, model.get("matches") - rows.length))} more` });
      more.addEventListener("click", () => { model.set("limit", rows.length + 200); model.save_changes(); });
      list.appendChild(more);
    }
  }

  function drawCardBox() {
    if (hist) hist.destroy();
    hist = drawCard(cardBox, model.get("card"), select);
  }

  root.addEventListener("keydown", (e) => {
    const rows = model.get("rows");
    if (!rows.length) return;
    const at = rows.findIndex((r) => r.id === model.get("selected"));
    let next = null;
    if (e.key === "ArrowDown" || e.key === "j") next = Math.min(rows.length - 1, at + 1);
    if (e.key === "ArrowUp" || e.key === "k") next = Math.max(0, at - 1);
    if (next !== null) { e.preventDefault(); e.stopPropagation(); select(rows[next].id); }
  });

  drawList(); drawCardBox();
  model.on("change:rows", drawList);
  model.on("change:sort", () => { sort.value = model.get("sort"); });
  model.on("change:selected", drawList);
  model.on("change:card", drawCardBox);
  const unwatch = watchKernel(model, () => markGone(root, ""));
  return () => { unwatch(); if (hist) hist.destroy(); };
}

export default { render };
