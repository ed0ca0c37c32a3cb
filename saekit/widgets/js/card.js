// The feature card, drawn from a Feature's data (Feature.to_dict()): statistics, the activation histogram,
// the top contexts and quantile samples with per-token highlighting (the value on hover), the logit lens and
// the neighbours. `onOpen(id)` is called when a neighbour is clicked (null: neighbours are plain text).
function tokenText(t) {  // as saekit/_visible.py: newline ↵, tab ⇥, any other control character \xNN
  return t.replace(/\n/g, "↵").replace(/\t/g, "⇥")
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

function contextNode(example, max) {
  const line = h("div", { class: "saekit-context" });
  line.appendChild(h("span", { class: "saekit-context-value", text: fmtNumber(example.value) }));
  const text = h("span", { class: "saekit-context-text" });
  example.tokens.forEach((token, i) => {
    if (token === "" && i !== example.center) return;  // outside the document
    const value = example.values[i] || 0;
    const alpha = max > 0 ? Math.min(1, Math.max(0, value / max)) : 0;
    const span = h("span", { class: `saekit-tok${i === example.center ? " saekit-tok-center" : ""}`,
      title: `${JSON.stringify(token)}: ${fmtNumber(value)}`, "data-value": String(value), text: tokenText(token) });
    if (alpha > 0) span.style.background = `rgba(249,115,22,${(0.12 + 0.88 * alpha).toFixed(3)})`;
    text.appendChild(span);
  });
  line.appendChild(text);
  return line;
}

function tokenTable(title, rows, format) {
  const table = h("table", { class: "saekit-table saekit-logits" });
  table.appendChild(h("tr", {}, [h("th", { text: title }), h("th", { text: "" })]));
  for (const [token, value] of rows) {
    table.appendChild(h("tr", {}, [h("td", {}, [h("code", { text: tokenText(String(token)) })]), h("td", { text: format(value) })]));
  }
  return table;
}

function latentList(title, rows, format, onOpen) {
  const box = h("div", { class: "saekit-latents" }, [h("div", { class: "saekit-section", text: title })]);
  if (!rows.length) box.appendChild(h("div", { class: "saekit-muted", text: "none" }));
  for (const [id, value] of rows) {
    const link = h(onOpen ? "button" : "span", { class: "saekit-latent-link", "data-latent": String(id), text: `#${id}` });
    if (onOpen) link.addEventListener("click", () => onOpen(id));
    box.appendChild(h("span", { class: "saekit-latent" }, [link, h("span", { class: "saekit-muted", text: ` ${format(value)}` })]));
  }
  return box;
}

function drawCard(container, data, onOpen) {
  const started = performance.now();
  container.replaceChildren();
  if (!data || data.id === undefined) { container.appendChild(h("div", { class: "saekit-muted", text: "no feature" })); return null; }
  const card = h("div", { class: "saekit-card", "data-feature": String(data.id) });
  const pct = (x) => `${(100 * x).toFixed(x < 0.001 ? 4 : x < 0.01 ? 3 : 2)}%`;
  card.appendChild(h("div", { class: "saekit-head" }, [
    h("span", { class: "saekit-title", text: `Feature ${data.id}` }),
    data.label ? h("span", { class: `saekit-label saekit-label-${data.label_source || "auto"}`, text: data.label,
      title: `${data.label_source || "auto"} label` + (data.auto_label && data.label_source !== "auto" ? `; automatic: ${data.auto_label}` : "") }) : null,
    data.label && data.label_source ? h("span", { class: "saekit-muted", text: data.label_source }) : null,
    data.count === 0 ? badge("dead") : null,
    h("span", { class: "saekit-muted", text: data.analysis ? `analysis ${data.analysis}` : "" }),
  ]));
  const stats = [["fires on", `${pct(data.frequency)} of tokens (${fmtCount(data.count)})`],
    ["log10 frequency", data.log10_frequency === null ? "-∞" : data.log10_frequency.toFixed(2)],
    ["mean activation", fmtNumber(data.mean)], ["max activation", fmtNumber(data.max)],
    ["top tokens", data.top_tokens.slice(0, 5).map(([t, c]) => `${tokenText(t)} ×${c}`).join("  ")]];
  card.appendChild(h("div", { class: "saekit-stat-grid" }, stats.map(([label, value]) =>
    h("div", { class: "saekit-stat" }, [h("span", { class: "saekit-stat-label", text: label }), h("span", { class: "saekit-stat-value", text: value })]))));
  const columns = h("div", { class: "saekit-card-columns" });
  const left = h("div", { class: "saekit-card-main" }), right = h("div", { class: "saekit-card-side" });
  columns.append(left, right);
  card.appendChild(columns);
  container.appendChild(card);

  const hist = new Histogram({ title: "activations (nonzero)", xLabel: "activation (log)", yLabel: "tokens" });
  right.appendChild(hist.node);
  hist.update(data.histogram.edges, data.histogram.counts);
  if (data.logits) {
    right.appendChild(h("div", { class: "saekit-section", text: "logit lens" }));
    right.appendChild(h("div", { class: "saekit-logit-tables" }, [
      tokenTable("promotes", data.logits.top, fmtNumber), tokenTable("suppresses", data.logits.bottom, fmtNumber)]));
  }
  right.appendChild(latentList("nearest by decoder cosine", data.neighbours, (v) => v.toFixed(3), onOpen));
  right.appendChild(latentList("fires together with", data.cooccurring, (v) => pct(v), onOpen));
  for (const [analysis, id, cos] of data.matches || []) {  // FeatureSet.match: its closest latent in another SAE
    right.appendChild(h("div", { class: "saekit-latents saekit-match" }, [h("div", { class: "saekit-section", text: `match in ${analysis}` }),
      h("span", { class: "saekit-latent", "data-latent": String(id) }, [h("code", { text: `#${id}` }), h("span", { class: "saekit-muted", text: ` cos ${cos.toFixed(3)}` })])]));
  }

  left.appendChild(h("div", { class: "saekit-section", text: `top ${data.examples.length} contexts` }));
  const top = h("div", { class: "saekit-contexts" });
  for (const example of data.examples) top.appendChild(contextNode(example, data.max));
  left.appendChild(top);
  if (data.quantiles.length) {
    left.appendChild(h("div", { class: "saekit-section", text: "quantile samples (equal-count bins of its activations)" }));
    for (const q of [...data.quantiles].reverse()) {
      const box = h("details", { class: "saekit-quantile" });
      box.appendChild(h("summary", { text: `bin ${q.index + 1}: ${fmtNumber(q.low)} – ${fmtNumber(q.high)} (${q.examples.length} contexts)` }));
      for (const example of q.examples) box.appendChild(contextNode(example, data.max));
      left.appendChild(box);
    }
  }
  card.dataset.renderMs = (performance.now() - started).toFixed(1);
  return hist;
}
