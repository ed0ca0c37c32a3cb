// The system panel: GPUs (and which job uses each), CPU, RAM, swap, disk and network, charted over a time window.
function render({ model, el }) {
  const root = h("div", { class: "saekit-panel saekit-system" });
  const headBox = h("div"), stats = h("div", { class: "saekit-stat-grid" }), chartBox = h("div", { class: "saekit-charts" });
  const gpuBox = h("div");
  root.append(headBox, stats, chartBox, gpuBox);
  el.appendChild(root);
  const charts = new ChartSet(chartBox);
  let gone = false;

  const select = h("select", { class: "saekit-interval" });
  select.addEventListener("change", () => { model.set("interval", Number(select.value)); model.save_changes(); });

  function stat(label, value) {
    return h("div", { class: "saekit-stat" }, [h("span", { class: "saekit-stat-label", text: label }), h("span", { class: "saekit-stat-value", text: value })]);
  }

  function draw() {
    const samples = model.get("samples") || [];
    const last = samples[samples.length - 1];
    select.replaceChildren(...model.get("intervals").map((s) => {
      const option = h("option", { value: s, text: `every ${s} s` });
      if (s === model.get("interval")) option.selected = true;
      return option;
    }));
    const window = samples.length > 1 ? `last ${fmtDuration(samples[samples.length - 1].time - samples[0].time)}` : "";
    headBox.replaceChildren(h("div", { class: "saekit-head" }, [h("span", { class: "saekit-title", text: "System" }),
      h("span", { class: "saekit-muted", text: window }), select]));
    if (!last) { stats.replaceChildren(h("div", { class: "saekit-muted", text: "sampling…" })); return; }
    stats.replaceChildren(
      stat(`CPU (${last.cpu_count} cores)`, `${fmtCount(last.cpu_percent)} %`),
      stat("RAM", `${fmtBytes(last.ram_used)} of ${fmtBytes(last.ram_total)}`),
      last.swap_total ? stat("swap", `${fmtBytes(last.swap_used)} of ${fmtBytes(last.swap_total)}`) : null,
      stat("disk read / write", `${fmtBytes(last.disk_read_rate)}/s · ${fmtBytes(last.disk_write_rate)}/s`),
      stat("network in / out", `${fmtBytes(last.net_recv_rate)}/s · ${fmtBytes(last.net_sent_rate)}/s`),
    );
    const over = (key, scale = 1) => samples.filter((s) => s[key] !== null && s[key] !== undefined).map((s) => [s.time, s[key] * scale]);
    const small = { xTime: true, height: 110, logToggle: false };
    const specs = [
      { key: "cpu", series: { "CPU %": over("cpu_percent") }, options: { ...small, title: "CPU %", yFormat: (v) => `${fmtCount(v)}%` } },
      { key: "ram", series: { used: over("ram_used") }, options: { ...small, title: `RAM (of ${fmtBytes(last.ram_total)})`, yFormat: fmtBytes } },
      { key: "disk", series: { read: over("disk_read_rate"), write: over("disk_write_rate") }, options: { ...small, title: "disk / s", yFormat: fmtBytes } },
      { key: "net", series: { in: over("net_recv_rate"), out: over("net_sent_rate") }, options: { ...small, title: "network / s", yFormat: fmtBytes } },
    ];
    for (const gpu of last.gpus || []) {
      const history = samples.map((s) => [s.time, (s.gpus || []).find((g) => g.index === gpu.index) || {}]);
      specs.push({ key: `gpu${gpu.index}`, series: {
        "util %": history.filter(([, g]) => g.utilization !== null && g.utilization !== undefined).map(([t, g]) => [t, g.utilization]),
        "memory %": history.filter(([, g]) => g.memory_used !== undefined).map(([t, g]) => [t, (100 * g.memory_used) / gpu.memory_total]),
      }, options: { ...small, title: `GPU ${gpu.index}: ${gpu.name} (${fmtBytes(gpu.memory_used)} of ${fmtBytes(gpu.memory_total)}, ${gpu.temperature ?? "?"} °C, ${gpu.power_w !== null && gpu.power_w !== undefined ? gpu.power_w.toFixed(0) : "?"} W)`, yFormat: (v) => `${fmtCount(v)}%` } });
    }
    charts.show(specs);
    gpuBox.replaceChildren();
    if (!last.gpus || !last.gpus.length) {
      gpuBox.appendChild(h("div", { class: "saekit-muted saekit-nogpu", text: `GPUs: ${model.get("gpu_reason") || "none"}` }));
    }
    const users = model.get("gpu_jobs") || [];
    if (users.length) {
      gpuBox.appendChild(h("table", { class: "saekit-table" }, [
        h("tr", {}, ["GPU", "pid", "memory", "job"].map((t) => h("th", { text: t }))),
        ...users.map((u) => h("tr", {}, [h("td", { text: `GPU ${u.gpu}` }), h("td", { text: String(u.pid) }),
          h("td", { text: fmtBytes(u.memory) }), h("td", { text: u.job_id ? `${u.job_id} (${u.kind})` : "not a saekit job" })])),
      ]));
    }
    if (gone) markGone(root, null);
  }

  draw();
  model.on("change", draw);
  const unwatch = watchKernel(model, () => { gone = true; draw(); });
  return () => { unwatch(); charts.destroy(); model.off("change", draw); };
}

export default { render };
