// The job widget: everything it shows comes from the model's traits (filled by the kernel's poller).
const FINAL = new Set(["completed", "failed", "cancelled"]);

function render({ model, el }) {
  const root = h("div", { class: "saekit-job" });
  el.appendChild(root);

  function draw() {
    const get = (k) => model.get(k);
    const status = get("status");
    const done = get("done"), total = get("total"), unit = get("unit");
    const now = Date.now() / 1000;
    root.replaceChildren();

    const title = [get("name") || get("kind"), get("job_id")].filter(Boolean).join(" · ");
    const cancel = h("button", { class: "saekit-cancel", text: get("cancel_requested") && !FINAL.has(status) ? "cancelling…" : "Cancel" });
    cancel.disabled = FINAL.has(status) || get("cancel_requested");
    cancel.addEventListener("click", () => { model.send({ type: "cancel" }); cancel.disabled = true; cancel.textContent = "cancelling…"; });
    root.appendChild(h("div", { class: "saekit-head" }, [
      h("span", { class: "saekit-title", text: title }), badge(status),
      get("attempt") > 1 ? h("span", { class: "saekit-muted", text: `attempt ${get("attempt")}` }) : null,
      h("span", { class: "saekit-phase", text: get("phase") }), cancel,
    ]));

    const percent = total ? Math.max(0, Math.min(100, (100 * done) / total)) : (status === "completed" ? 100 : null);
    const bar = h("progress", { class: "saekit-progress", max: 100 });
    if (percent !== null) bar.value = percent;
    const started = get("started_at"), ended = get("ended_at");
    const elapsed = started ? (ended ?? now) - started : null;
    const rate = get("rate");
    const eta = !FINAL.has(status) && rate > 0 && total ? (total - done) / rate : null;
    const parts = [
      percent !== null ? `${percent.toFixed(1)}%` : "",
      total !== null ? `${fmtCount(done)} / ${fmtCount(total)} ${unit}` : (done ? `${fmtCount(done)} ${unit}` : ""),
      rate ? `${fmtCount(rate)} ${unit}/s` : "",
      elapsed !== null ? `elapsed ${fmtDuration(elapsed)}` : "",
      eta !== null ? `ETA ${fmtDuration(eta)}` : "",
    ].filter(Boolean);
    root.appendChild(h("div", { class: "saekit-row" }, [bar, h("span", { class: "saekit-stats", text: parts.join("  ·  ") })]));

    const updated = get("updated_at");
    if (!FINAL.has(status) && updated && now - updated > 20) {  // workers write at least a heartbeat every 5 s
      root.appendChild(h("div", { class: "saekit-event saekit-warning", text:
        `no news from the job for ${fmtDuration(now - updated)}: this view may have lost its kernel (run sk.job("${get("job_id")}") again), or the worker is busy` }));
    }
    if (get("last_event")) {
      root.appendChild(h("div", { class: `saekit-event saekit-${get("last_event_level")}`, text: get("last_event") }));
    }
    if (status === "failed" || get("error_message")) {
      root.appendChild(h("div", { class: "saekit-error" }, [
        h("b", { text: `${get("error_type") || "error"}: ` }), h("span", { text: get("error_message") }),
        get("suggestion") ? h("div", { class: "saekit-suggestion", text: `→ ${get("suggestion")}` }) : null,
      ]));
    }

    const metrics = get("metrics") || {};
    const groups = {};
    for (const name of Object.keys(metrics)) {
      const base = name.split("/").pop();
      (groups[base] = groups[base] || {})[name] = metrics[name];
    }
    const order = ["loss", "fvu", "l0", "dead_fraction"].filter((n) => groups[n]);
    if (order.length) {
      root.appendChild(h("div", { class: "saekit-charts" },
        order.map((n) => lineChart(n, groups[n], { logY: n === "loss" || n === "fvu" }))));
    }

    const resources = get("resources") || [];
    if (resources.length) {
      const gpu = resources.some((r) => r.gpu_memory);
      root.appendChild(h("div", { class: "saekit-sparks" }, [
        sparkline("CPU %", resources.map((r) => r.cpu_percent), fmtCount),
        sparkline("RSS", resources.map((r) => r.rss), fmtBytes),
        gpu ? sparkline("GPU mem", resources.map((r) => r.gpu_memory), fmtBytes) : null,
        gpu ? sparkline("GPU %", resources.map((r) => r.gpu_utilization), fmtCount, { max: 100 }) : null,
      ]));
    }
  }

  draw();
  model.on("change", draw);
  const clock = setInterval(() => { if (!FINAL.has(model.get("status"))) draw(); }, 1000);  // elapsed and ETA tick here
  return () => { clearInterval(clock); model.off("change", draw); };
}

export default { render };
