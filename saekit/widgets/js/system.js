// The system panel: GPUs (and which job uses each), CPU, RAM, swap, disk and network, with sparklines.
function render({ model, el }) {
  const root = h("div", { class: "saekit-panel saekit-system" });
  el.appendChild(root);

  function draw() {
    const samples = model.get("samples") || [];
    const last = samples[samples.length - 1];
    root.replaceChildren();
    const select = h("select", { class: "saekit-interval" });
    for (const seconds of model.get("intervals")) {
      const option = h("option", { value: seconds, text: `every ${seconds} s` });
      if (seconds === model.get("interval")) option.selected = true;
      select.appendChild(option);
    }
    select.addEventListener("change", () => { model.set("interval", Number(select.value)); model.save_changes(); });
    root.appendChild(h("div", { class: "saekit-head" }, [h("span", { class: "saekit-title", text: "System" }), select]));
    if (!last) { root.appendChild(h("div", { class: "saekit-muted", text: "sampling…" })); return; }

    const series = (key) => samples.map((s) => s[key]);
    root.appendChild(h("div", { class: "saekit-sparks" }, [
      sparkline(`CPU ×${last.cpu_count}`, series("cpu_percent"), (v) => `${fmtCount(v)} %`, { max: 100 }),
      sparkline("RAM", series("ram_used"), (v) => `${fmtBytes(v)} / ${fmtBytes(last.ram_total)}`, { max: last.ram_total }),
      last.swap_total ? sparkline("swap", series("swap_used"), fmtBytes, { max: last.swap_total }) : null,
      sparkline("disk read", series("disk_read_rate"), (v) => `${fmtBytes(v)}/s`),
      sparkline("disk write", series("disk_write_rate"), (v) => `${fmtBytes(v)}/s`),
      sparkline("net in", series("net_recv_rate"), (v) => `${fmtBytes(v)}/s`),
      sparkline("net out", series("net_sent_rate"), (v) => `${fmtBytes(v)}/s`),
    ]));

    if (!last.gpus || !last.gpus.length) {
      root.appendChild(h("div", { class: "saekit-muted saekit-nogpu", text: `GPUs: ${model.get("gpu_reason") || "none"}` }));
      return;
    }
    const cards = last.gpus.map((gpu) => {
      const history = samples.map((s) => (s.gpus || []).find((g) => g.index === gpu.index) || {});
      return h("div", { class: "saekit-gpu" }, [
        h("div", { class: "saekit-title", text: `GPU ${gpu.index}: ${gpu.name}` }),
        sparkline("util", history.map((g) => g.utilization), (v) => `${fmtCount(v)} %`, { max: 100 }),
        sparkline("memory", history.map((g) => g.memory_used), (v) => `${fmtBytes(v)} / ${fmtBytes(gpu.memory_total)}`, { max: gpu.memory_total }),
        h("div", { class: "saekit-muted", text: `${gpu.temperature ?? "?"} °C · ${gpu.power_w !== null && gpu.power_w !== undefined ? gpu.power_w.toFixed(0) : "?"} W` }),
      ]);
    });
    root.appendChild(h("div", { class: "saekit-gpus" }, cards));
    const users = model.get("gpu_jobs") || [];
    if (users.length) {
      const rows = users.map((u) => h("tr", {}, [
        h("td", { text: `GPU ${u.gpu}` }), h("td", { text: String(u.pid) }), h("td", { text: fmtBytes(u.memory) }),
        h("td", { text: u.job_id ? `${u.job_id} (${u.kind})` : "not a saekit job" }),
      ]));
      root.appendChild(h("table", { class: "saekit-table" }, [
        h("tr", {}, ["GPU", "pid", "memory", "job"].map((t) => h("th", { text: t }))), ...rows,
      ]));
    }
  }

  draw();
  model.on("change", draw);
  return () => model.off("change", draw);
}

export default { render };
