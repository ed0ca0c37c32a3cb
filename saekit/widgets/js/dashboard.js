// The operations dashboard: active jobs with progress, ETA, the latest metric and resources, then the latest
// finished ones with their final metrics.
function render({ model, el }) {
  const root = h("div", { class: "saekit-panel saekit-dashboard" });
  el.appendChild(root);
  let gone = false;

  function draw() {
    const active = model.get("active") || [], recent = model.get("recent") || [];
    const now = Date.now() / 1000;
    root.replaceChildren(h("div", { class: "saekit-head" }, [
      h("span", { class: "saekit-title", text: "saekit jobs" }),
      h("span", { class: "saekit-muted", text: model.get("workspace_path") }),
    ]));
    if (!active.length && !recent.length) {
      root.appendChild(h("div", { class: "saekit-empty", text:
        "No jobs in this workspace yet. Start one with sk.tokenize(corpus, lm), sk.extract(lm, tokens, hook_points) or sk.train(acts, hook_point, sk.SAEConfig(...)); it appears here live." }));
      return;
    }
    root.appendChild(h("div", { class: "saekit-section", text: active.length ? `active (${active.length})` : "no active jobs" }));
    if (active.length) {
      const rows = active.map((j) => {
        const bar = h("progress", { class: "saekit-progress saekit-small", max: 100 });
        if (j.percent !== null && j.percent !== undefined) bar.value = j.percent;
        const progress = j.total ? `${fmtCount(j.done)} / ${fmtCount(j.total)} ${j.unit || ""}` : "";
        const resources = [j.cpu_percent !== null && j.cpu_percent !== undefined ? `CPU ${fmtCount(j.cpu_percent)}%` : "",
          j.rss ? `RSS ${fmtBytes(j.rss)}` : "", j.gpu_memory ? `GPU ${fmtBytes(j.gpu_memory)}` : ""].filter(Boolean).join(" · ");
        return h("tr", { "data-job": j.id }, [
          h("td", { text: j.name || j.kind }), h("td", { class: "saekit-muted", text: j.id }), h("td", {}, [badge(j.status)]),
          h("td", {}, [bar, h("div", { class: "saekit-muted", text: progress })]), h("td", { text: j.phase || "" }),
          h("td", { text: j.rate ? `${fmtNumber(Number(j.rate.toPrecision(3)))} ${j.unit || ""}/s` : "" }),
          h("td", { text: j.eta !== null && j.eta !== undefined && !gone ? fmtDuration(j.eta) : "" }),
          h("td", { text: j.started_at ? fmtDuration(now - j.started_at) : "" }),
          h("td", { class: "saekit-wrap", text: j.latest || "" }), h("td", { class: "saekit-muted saekit-wrap", text: resources }),
        ]);
      });
      root.appendChild(h("table", { class: "saekit-table" }, [
        h("tr", {}, ["job", "id", "status", "progress", "phase", "rate", "ETA", "elapsed", "latest", "resources"]
          .map((t) => h("th", { text: t }))), ...rows]));
    }
    if (recent.length) {
      root.appendChild(h("div", { class: "saekit-section", text: "recently finished" }));
      const rows = recent.map((j) => h("tr", {}, [
        h("td", { text: j.name || j.kind }), h("td", { class: "saekit-muted", text: j.id }), h("td", {}, [badge(j.status)]),
        h("td", { class: "saekit-wrap", text: Object.entries(j.final || {}).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(" · ") }),
        h("td", { text: j.error_type || "" }), h("td", { text: j.seconds !== null ? fmtDuration(j.seconds) : "" }),
        h("td", { class: "saekit-muted", text: j.finished_at ? `${fmtDuration(now - j.finished_at)} ago` : "" }),
      ]));
      root.appendChild(h("table", { class: "saekit-table" }, [
        h("tr", {}, ["job", "id", "status", "final", "error", "took", "ended"].map((t) => h("th", { text: t }))), ...rows]));
    }
    if (gone) markGone(root, null);
  }

  draw();
  model.on("change", draw);
  const clock = setInterval(() => { if (!gone) draw(); }, 1000);
  const unwatch = watchKernel(model, () => { gone = true; clearInterval(clock); draw(); });
  return () => { clearInterval(clock); unwatch(); model.off("change", draw); };
}

export default { render };
