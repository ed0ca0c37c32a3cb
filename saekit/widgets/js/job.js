// The job widget: everything it shows comes from the model's traits (filled by the kernel's poller).
const FINAL = new Set(["completed", "failed", "cancelled"]);
const TITLES = { loss: "loss", fvu: "FVU (fraction of variance unexplained)", l0: "L0 (active latents per token)",
  dead_fraction: "dead latents", lr: "learning rate", tokens_per_s: "tokens / s" };

function sameCurve(a, b, except = new Set()) {
  if (!a || !b || a.length !== b.length) return false;
  return a.every((p, i) => p[0] === b[i][0] && (except.has(p[0]) || Math.abs(p[1] - b[i][1]) <= 1e-9 * Math.max(1, Math.abs(p[1]))));
}

function constant(points) {
  return points.length > 1 && points.every((p) => Math.abs(p[1] - points[0][1]) <= 1e-6 * Math.max(1, Math.abs(points[0][1])));
}

// tokens/s between two log points swings with what else the machine does: a trailing mean of up to 9 points
function smoothed(points, window = 9) {
  let sum = 0;
  return points.map(([x, y], i) => {
    sum += y;
    if (i >= window) sum -= points[i - window][1];
    return [x, sum / Math.min(i + 1, window)];
  });
}

// metric name -> {base: {series name: points}} (sweeps give sae0/fvu, sae1/fvu ...)
function grouped(metrics) {
  const groups = {};
  for (const name of Object.keys(metrics)) {
    const base = name.split("/").pop(), prefix = name.includes("/") ? name.split("/")[0] : "";
    (groups[base] = groups[base] || {})[prefix || base] = metrics[name];
  }
  return groups;
}

function chartSpecs(model, xMode) {
  const groups = grouped(model.get("metrics") || {});
  const tokensPerStep = model.get("tokens_per_step") || 0;
  const times = new Map((model.get("step_times") || []).map(([s, t]) => [s, t]));
  const toX = (points) => points.map(([s, y]) => [xMode === "tokens" ? s * tokensPerStep : xMode === "time" ? times.get(s) : s, y])
    .filter(([x]) => x !== undefined && x !== null);
  const xLabel = { steps: "step", tokens: "tokens", time: "time" }[xMode];
  const specs = [];
  // a TopK-family SAE's loss is its FVU (plus the AuxK loss on the steps that log one): one chart says both
  const auxSteps = (k) => new Set(((groups.auxk || {})[k] || []).filter((p) => p[1] !== 0).map((p) => p[0]));
  const lossSameAsFvu = groups.loss && groups.fvu && Object.keys(groups.loss).every((k) =>
    sameCurve(groups.loss[k], groups.fvu[k === "loss" ? "fvu" : k], auxSteps(k === "loss" ? "auxk" : k)));
  for (const base of ["loss", "fvu", "l0", "dead_fraction", "lr", "tokens_per_s"]) {
    let series = groups[base];
    if (!series) continue;
    if (base === "loss" && lossSameAsFvu) continue;  // TopK: the loss is the FVU; one chart says it
    if (base === "l0" && Object.values(series).every(constant)) continue;  // fixed by TopK: a flat line at k says nothing
    // the auxiliary loss beside the loss it is added to (the FVU's chart when that is the loss)
    if (groups.auxk && base === (lossSameAsFvu ? "fvu" : "loss")) {
      series = { ...series, ...Object.fromEntries(Object.entries(groups.auxk).map(([k, v]) => [`${k === "auxk" ? "" : k + " "}auxk`, v])) };
    }
    if (base === "tokens_per_s") series = Object.fromEntries(Object.entries(series).map(([k, v]) => [k, smoothed(v)]));
    const title = base === "fvu" && lossSameAsFvu ? "FVU (the loss)" : base === "tokens_per_s" ? "tokens / s (mean of 9 points)" : TITLES[base];
    const transformed = Object.fromEntries(Object.entries(series).map(([k, v]) => [k, toX(v)]));
    specs.push({ key: `${base}:${xMode}`, series: transformed, options: {
      title, xLabel, xTime: xMode === "time", log: base === "loss" || base === "fvu",
      yFormat: base === "dead_fraction" ? (v) => (v === 0 ? "0%" : `${(100 * v).toFixed(v < 0.01 ? 2 : 1)}%`) : fmtNumber,
      // a fraction: from 0, and no wider than 0-1% while no latent is dead (not uPlot's 0-100 for a flat 0); the
      // learning rate and the speed from 0 too, so a warm-up and a decay read as what they are
      yRange: base === "dead_fraction" ? (u, min, max) => [0, max > 0 ? Math.min(1, max * 1.1) : 0.01]
        : base === "lr" || base === "tokens_per_s" ? (u, min, max) => [0, max > 0 ? max * 1.1 : 1] : undefined,
      logToggle: base === "lr" || base === "tokens_per_s" || base === "dead_fraction" ? false : undefined } });
  }
  return specs;
}

function resourceLine(resources) {
  const peak = (key) => Math.max(0, ...resources.map((r) => r[key] || 0));
  const cpu = resources.map((r) => r.cpu_percent).filter((v) => v !== null && v !== undefined);
  return ["worker:", `peak RSS ${fmtBytes(peak("rss"))},`,
    cpu.length ? `mean CPU ${Math.round(cpu.reduce((a, b) => a + b, 0) / cpu.length)}%` : null,
    peak("gpu_memory") ? `peak GPU memory ${fmtBytes(peak("gpu_memory"))}` : null].filter(Boolean).join(" ");
}

function render({ model, el }) {
  const root = h("div", { class: "saekit-job" });
  const top = h("div");
  const controls = h("div", { class: "saekit-controls" });
  const chartBox = h("div", { class: "saekit-charts" });
  const sparkBox = h("div", { class: "saekit-sparks" });
  const summary = h("div", { class: "saekit-muted saekit-resources" });
  root.append(top, controls, chartBox, sparkBox, summary);
  el.appendChild(root);
  const charts = new ChartSet(chartBox), sparks = new ChartSet(sparkBox);
  let xMode = "steps", gone = false;

  const select = h("select", { class: "saekit-x" });
  for (const mode of ["steps", "tokens", "time"]) select.appendChild(h("option", { value: mode, text: `x: ${mode}` }));
  select.addEventListener("change", () => { xMode = select.value; draw(); });
  controls.appendChild(select);

  function head(now) {
    const get = (k) => model.get(k);
    const status = get("status"), health = get("health") || {};
    const done = get("done"), total = get("total"), unit = get("unit");
    top.replaceChildren();
    const title = [get("name") || get("kind"), get("job_id")].filter(Boolean).join(" · ");
    const cancel = h("button", { class: "saekit-cancel", text: get("cancel_requested") && !FINAL.has(status) ? "cancelling…" : "Cancel" });
    cancel.disabled = gone || FINAL.has(status) || get("cancel_requested");
    cancel.addEventListener("click", () => { model.send({ type: "cancel" }); cancel.disabled = true; cancel.textContent = "cancelling…"; });
    top.appendChild(h("div", { class: "saekit-head" }, [
      h("span", { class: "saekit-title", text: title }), badge(status),
      health.level && health.level !== "ok" ? badge(health.level, "saekit-health") : null,
      get("attempt") > 1 ? h("span", { class: "saekit-muted", text: `attempt ${get("attempt")}` }) : null,
      h("span", { class: "saekit-phase", text: get("phase") || (status === "queued" ? "starting the worker…" : "") }), cancel,
    ]));

    const percent = total ? Math.max(0, Math.min(100, (100 * done) / total)) : (status === "completed" ? 100 : null);
    const bar = h("progress", { class: "saekit-progress", max: 100 });
    if (percent !== null) bar.value = percent;
    const started = get("started_at"), ended = get("ended_at"), phaseStart = get("phase_started_at");
    const clock = gone ? (get("updated_at") || now) : now;
    const elapsed = started ? (ended ?? clock) - started : null;
    const phaseTime = phaseStart && !ended ? clock - phaseStart : null;
    const rate = get("rate");
    const eta = !FINAL.has(status) && !gone && rate > 0 && total ? (total - done) / rate : null;
    const parts = [
      percent !== null ? `${percent.toFixed(1)}%` : "",
      total !== null ? `${fmtCount(done)} / ${fmtCount(total)} ${unit}` : (done ? `${fmtCount(done)} ${unit}` : ""),
      rate ? `${fmtCount(rate)} ${unit}/s` : "",
      elapsed !== null ? `elapsed ${fmtDuration(elapsed)}${phaseTime !== null && elapsed - phaseTime > 2 ? ` (${get("phase") || "this phase"} ${fmtDuration(phaseTime)})` : ""}` : "",
      eta !== null ? `ETA ${fmtDuration(eta)}` : "",
      get("latest") ? get("latest") : "",
    ].filter(Boolean);
    top.appendChild(h("div", { class: "saekit-row" }, [bar, h("span", { class: "saekit-stats", text: parts.join("  ·  ") })]));

    const updated = get("updated_at");
    if (!gone && !FINAL.has(status) && updated && now - updated > 20) {  // workers write at least a heartbeat every 5 s
      top.appendChild(h("div", { class: "saekit-event saekit-warning", text:
        `no news from the job for ${fmtDuration(now - updated)}: this view may have lost its kernel (run sk.job("${get("job_id")}") again), or the worker is busy` }));
    }
    if (get("last_event")) top.appendChild(h("div", { class: `saekit-event saekit-${get("last_event_level")}`, text: get("last_event") }));
    if (status === "cancelled") {  // asked for, not an error: say how to go on
      top.appendChild(h("div", { class: "saekit-cancelled-note" }, [
        h("b", { text: "cancelled" }), h("span", { text: ` · sk.job("${get("job_id")}").resume() continues from its last commit` })]));
    } else if (status === "failed" || get("error_message")) {
      top.appendChild(h("div", { class: "saekit-error" }, [
        h("b", { text: `${get("error_type") || "error"}: ` }), h("span", { text: get("error_message") }),
        get("suggestion") ? h("div", { class: "saekit-suggestion", text: `→ ${get("suggestion")}` }) : null,
      ]));
    }
    if (health.reasons && health.reasons.length) {
      top.appendChild(h("div", { class: "saekit-health-box" }, health.reasons.map((r) => h("div", { text: `⚠ ${r}` }))));
    }
    const evaluation = get("evaluation") || [];
    if (evaluation.length) {
      const names = [...new Set(evaluation.flatMap((e) => Object.keys(e.metrics)))];
      top.appendChild(h("div", { class: "saekit-scroll-x" }, [h("table", { class: "saekit-table saekit-eval" }, [
        h("tr", {}, [h("th", { text: "held out" }), ...names.map((n) => h("th", { text: n }))]),
        ...evaluation.map((e) => h("tr", {}, [h("td", { text: e.label }), ...names.map((n) => h("td", { text: fmtNumber(e.metrics[n]) }))])),
      ])]));
    }
  }

  function draw() {
    const now = Date.now() / 1000;
    head(now);
    const specs = chartSpecs(model, xMode);
    controls.style.display = specs.length ? "" : "none";
    charts.show(specs);
    const resources = model.get("resources") || [];
    const gpu = resources.some((r) => r.gpu_memory);
    const pick = (key) => ({ [key]: resources.filter((r) => r[key] !== null && r[key] !== undefined).map((r) => [r.time, r[key]]) });
    const window = resources.length > 1 ? ` (last ${fmtDuration(resources[resources.length - 1].time - resources[0].time)})` : "";
    const fromZero = (floor) => (u, min, max) => [0, Math.max(floor, max * 1.1)];
    const ended = FINAL.has(model.get("status")) || gone;
    // a job that ended: its worker's resources in one line (the dashboard keeps the curves)
    summary.textContent = ended && resources.length ? resourceLine(resources) : "";
    sparks.show(!ended && resources.length > 1 ? [  // one sample draws no line
      { key: "cpu", series: pick("cpu_percent"), options: { title: `worker CPU %${window}`, xTime: true, height: 130, logToggle: false, yRange: fromZero(100), yFormat: (v) => `${fmtCount(v)}%` } },
      { key: "rss", series: pick("rss"), options: { title: `worker RSS${window}`, xTime: true, height: 130, logToggle: false, yRange: fromZero(1), yFormat: fmtBytes } },
      gpu ? { key: "gpu", series: pick("gpu_memory"), options: { title: `worker GPU memory${window}`, xTime: true, height: 130, logToggle: false, yRange: fromZero(1), yFormat: fmtBytes } } : null,
    ].filter(Boolean) : []);
    if (gone) markGone(root, model.get("job_id"));
  }

  draw();
  model.on("change", draw);
  const clock = setInterval(() => { if (!gone && !FINAL.has(model.get("status"))) head(Date.now() / 1000); }, 1000);
  const unwatch = watchKernel(model, () => { gone = true; clearInterval(clock); draw(); });
  return () => { clearInterval(clock); unwatch(); charts.destroy(); sparks.destroy(); model.off("change", draw); };
}

export default { render };
