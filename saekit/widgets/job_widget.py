"""``JobWidget``: a job's live view (status, progress, rate and ETA, events, error and suggestion, Cancel,
charts of its metrics with axes, the held-out evaluation, a health badge, resource charts), re-creatable
from the job id in any kernel.

All state is in synced traits, filled from the job's event log by the poller (``poller.py``); the
browser only draws them (with uPlot) and counts elapsed time and ETA between updates. Cancel is a custom
message that writes the job's cancel flag; it never calls into a busy kernel's job. Its mimebundle also
holds a static snapshot (``text/html``) and a summary (``text/plain``) for places without a kernel.
"""

from __future__ import annotations

import math
import time

import traitlets

from saekit.jobs.kinds import kind_hook
from saekit.jobs.lifecycle import epoch as epoch_seconds
from saekit.jobs.textbar import latest_metrics
from saekit.widgets import snapshot
from saekit.widgets._base import SnapshotWidget, esm, thin
from saekit.widgets.poller import POLLER, JobFeed, Poller

CHART_METRICS = ("loss", "auxk", "fvu", "l0", "dead_fraction", "lr", "tokens_per_s")


def chart_series(state, names: tuple[str, ...] = CHART_METRICS) -> dict[str, list[list[float]]]:
    """Metric series for charts (thinned): ``name`` and, for sweeps, ``saeN/name``."""
    series: dict[str, list[list[float]]] = {}
    for (step, name), value in sorted(state.metrics.items()):
        base = name.rsplit("/", 1)[-1]
        if base in names and isinstance(value, (int, float)) and math.isfinite(value):
            series.setdefault(name, []).append([step, value])
    return {k: thin(v) for k, v in series.items()}


class JobWidget(SnapshotWidget):
    """The live view of one job (``job.widget()``, or a ``Job`` as a cell's last expression)."""

    _esm = esm("job.js")

    job_id = traitlets.Unicode("").tag(sync=True)
    name = traitlets.Unicode("").tag(sync=True)
    kind = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("queued").tag(sync=True)
    attempt = traitlets.Int(1).tag(sync=True)
    phase = traitlets.Unicode("").tag(sync=True)
    done = traitlets.Float(0.0).tag(sync=True)
    total = traitlets.Float(None, allow_none=True).tag(sync=True)
    unit = traitlets.Unicode("").tag(sync=True)
    rate = traitlets.Float(None, allow_none=True).tag(sync=True)  # units per second over the current phase
    started_at = traitlets.Float(None, allow_none=True).tag(sync=True)  # epoch seconds
    phase_started_at = traitlets.Float(None, allow_none=True).tag(sync=True)
    updated_at = traitlets.Float(None, allow_none=True).tag(sync=True)  # epoch seconds of the last record
    ended_at = traitlets.Float(None, allow_none=True).tag(sync=True)
    last_event = traitlets.Unicode("").tag(sync=True)
    last_event_level = traitlets.Unicode("info").tag(sync=True)
    error_type = traitlets.Unicode("").tag(sync=True)
    error_message = traitlets.Unicode("").tag(sync=True)
    suggestion = traitlets.Unicode("").tag(sync=True)
    cancel_requested = traitlets.Bool(False).tag(sync=True)
    metrics = traitlets.Dict({}).tag(sync=True)  # name -> [[step, value], ...]
    latest = traitlets.Unicode("").tag(sync=True)  # "loss=0.12, fvu=0.05": the newest logged values
    # [[step, epoch seconds], ...] (charts against time)
    step_times: traitlets.List[list] = traitlets.List([]).tag(sync=True)
    tokens_per_step = traitlets.Float(0.0).tag(sync=True)  # (charts against tokens)
    health = traitlets.Dict({}).tag(sync=True)  # {"level": "ok"|"suspicious"|"diverged", "reasons": [...]}
    # [{"label", "metrics": {...}}] held out, once trained
    evaluation: traitlets.List[dict] = traitlets.List([]).tag(sync=True)
    # recent samples of the worker: time, cpu_percent, rss, gpu_memory
    resources: traitlets.List[dict] = traitlets.List([]).tag(sync=True)

    def __init__(self, job, *, poller: Poller = POLLER, **kwargs):
        super().__init__(**kwargs)
        self.workspace, self.job_id = job.workspace, job.id
        row = job.record()
        self.name, self.kind, self.attempt = row.name or "", row.kind, int(row.attempt)
        per_step = kind_hook(row.kind, "tokens_per_step")
        if per_step is not None:
            self.tokens_per_step = float(per_step(row.spec_dict))
        self._judge = kind_hook(row.kind, "health")
        self._poller = poller
        self._feed: JobFeed = poller.feed(job.workspace, job.id)
        self._seen = -1
        self._ended_shown = False  # the snapshot of the end sent (refresh_snapshot)
        self._apply_row(row)
        self._feed.read()
        self._apply_feed()
        self.on_msg(self._on_message)
        self.observe(self._on_close, names="comm")  # closed widgets stop being polled
        if not self.final:
            poller.add(self)

    @property
    def final(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    # -- state from the registry row and the event log ----------------------------------------------
    def _apply_row(self, row) -> None:
        self.status = str(row.status)
        self.cancel_requested = row.cancel_requested
        self.error_type = row.error_type or ""
        self.error_message = row.error_message or ""
        self.suggestion = row.suggestion or ""
        for field, trait in (("started_at", "started_at"), ("finished_at", "ended_at")):
            if getattr(row, field) is not None:
                setattr(self, trait, epoch_seconds(getattr(row, field)))
        if row.status == "completed" and row.result:
            self._apply_result(row.result_value)

    def _apply_result(self, result) -> None:
        """The held-out evaluation of a training job, and its health."""
        saes = (result or {}).get("saes") if isinstance(result, dict) else None
        if not saes:
            return
        rows = [{"label": f"SAE {i}" if len(saes) > 1 else "SAE",
                 "metrics": {k: v for k, v in s.get("eval", {}).items() if isinstance(v, (int, float))}}
                for i, s in enumerate(saes)]
        self.evaluation = rows
        self._result = result
        self._assess()

    def _assess(self) -> None:
        if self._judge is None:
            return
        health = self._judge(self._feed.state.metrics, getattr(self, "_result", None))
        if health != self.health:
            self.health = health

    def _apply_feed(self) -> None:
        feed, state = self._feed, self._feed.state
        if feed.version == self._seen:
            return
        self._seen = feed.version
        with self.hold_sync():
            if state.start is not None:
                self.attempt = int(state.attempt or self.attempt)
                self.started_at = float(state.start.get("time") or time.time())
                if state.end is None:
                    self.status, self.ended_at = "running", None
                    self.error_type = self.error_message = self.suggestion = ""
            progress = state.progress or {}
            if progress:
                self.done = float(progress.get("done") or 0)
                self.total = float(progress["total"]) if progress.get("total") is not None else None
                self.unit = progress.get("unit") or ""
                self.phase = progress.get("phase") or ""
                first = feed.first_progress
                self.phase_started_at = float(first["time"]) if first and first.get("time") else None
                if first and progress.get("time") and first.get("time") and progress["time"] > first["time"]:
                    self.rate = (self.done - float(first.get("done") or 0)) / (progress["time"] - first["time"])
            if state.last_event:
                self.last_event = str(state.last_event.get("message", ""))
                self.last_event_level = str(state.last_event.get("level", "info"))
            if state.last_time:
                self.updated_at = float(state.last_time)
            if state.metrics:
                self.metrics = feed.charts(chart_series)
                steps = sorted({p[0] for points in self.metrics.values() for p in points})
                self.step_times = [[step, feed.step_times[step]] for step in steps if step in feed.step_times]
                self.latest = ", ".join(f"{k}={v:.4g}" for k, v in latest_metrics(state).items())
                self._assess()
            if feed.resources:
                self.resources = [{k: r.get(k) for k in ("time", "cpu_percent", "rss", "gpu_memory", "gpu_utilization")}
                                  for r in feed.resources]
            end = state.end
            if end is not None:
                self.status = end.get("status") or self.status
                self.ended_at = float(end.get("time") or time.time())
                self.error_type = end.get("error_type") or ""
                self.error_message = end.get("error_message") or ""
                self.suggestion = end.get("suggestion") or ""
                if self.status == "completed" and self.total:
                    self.done = self.total
                if self.status == "completed":
                    self._apply_result(end.get("result"))

    def followed(self) -> set[tuple[str, str]]:
        return {(str(self.workspace.path), self.job_id)}

    def poll(self, now: float | None = None) -> bool:
        """Bring the traits up to date; False once the job has ended (nothing more to follow)."""
        if self.comm is None:
            return False
        following = self._poll(now)
        if not following and not self._ended_shown:  # the output saved with the notebook shows the end
            self._ended_shown = True
            self.refresh_snapshot()
        return following

    def _poll(self, now: float | None) -> bool:
        self._feed.read(now)
        self._apply_feed()
        if self._feed.state.end is not None and self.final:
            return False
        if self._feed.needs_registry(now):
            from saekit.jobs.job import Job

            row = Job(self.job_id, self.workspace).record()  # reading it records a lost worker as failed
            if row.status != "running" or self._feed.state.start is None:
                self._apply_row(row)
            return not self.final
        return True

    # -- requests from the browser -------------------------------------------------------------------
    def _on_message(self, widget, content, buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "cancel" and not self.final:
            self.cancel()

    def cancel(self) -> None:
        """What the Cancel button does: write the job's cancel flag (the worker stops within a batch or two)."""
        from saekit.jobs.job import Job

        Job(self.job_id, self.workspace).cancel()
        self.cancel_requested = True

    def _on_close(self, change) -> None:
        if change["new"] is None:
            self._poller.discard(self)

    # -- without a kernel ---------------------------------------------------------------------------------
    def summary(self) -> str:
        percent = f"{100 * self.done / self.total:.1f}%" if self.total else ""
        parts = [f"{self.name or self.kind} {self.job_id}: {self.status}", percent,
                 f"{self.done:,.0f}/{self.total:,.0f} {self.unit}" if self.total else "", self.latest]
        if self.health.get("level", "ok") != "ok":
            parts.append(f"[{self.health['level']}: {'; '.join(self.health['reasons'])}]")
        if self.error_message:
            parts.append(f"{self.error_type}: {self.error_message.splitlines()[0]}")
        return "  ".join(p for p in parts if p)

    def snapshot_html(self) -> str:
        level = self.health.get("level", "ok")
        head = (f"<div><b>{snapshot.esc(self.name or self.kind)} · {snapshot.esc(self.job_id)}</b> "
                f"{snapshot.badge(self.status)} {snapshot.badge(level) if level != 'ok' else ''} "
                f"<span style='color:#666'>{snapshot.esc(self.phase)}</span></div>")
        percent = 100 * self.done / self.total if self.total else (100.0 if self.status == "completed" else 0.0)
        took = (self.ended_at - self.started_at) if self.ended_at and self.started_at else None
        stats = " · ".join(p for p in (f"{percent:.1f}%", f"{self.done:,.0f} / {self.total:,.0f} {self.unit}" if self.total
                                       else "", f"took {took:.0f} s" if took is not None else "", self.latest) if p)
        bar = (f"<div style='margin:4px 0'><progress max='100' value='{percent:.1f}' style='width:260px'></progress> "
               f"{snapshot.esc(stats)}</div>")
        error = (f"<div style='background:#fef2f2;color:#7f1d1d;padding:4px'><b>{snapshot.esc(self.error_type)}:</b> "
                 f"{snapshot.esc(self.error_message)}<br>→ {snapshot.esc(self.suggestion)}</div>" if self.error_message else "")
        if self.status == "cancelled":  # asked for, not an error: say how to go on
            error = (f"<div style='background:#fffbeb;color:#78350f;padding:4px'><b>cancelled</b> · "
                     f"sk.job({self.job_id!r}).resume() continues from its last commit</div>")
        reasons = "".join(f"<div style='color:#b45309'>⚠ {snapshot.esc(r)}</div>" for r in self.health.get("reasons", []))
        evaluation = ""
        if self.evaluation:
            names = sorted({k for e in self.evaluation for k in e["metrics"]})
            evaluation = "<div style='overflow-x:auto'>{}</div>".format(snapshot.table(
                ["held out", *names], [[e["label"], *(snapshot.number(e["metrics"].get(n)) for n in names)]
                                       for e in self.evaluation]))
        groups: dict[str, dict] = {}
        for name, points in self.metrics.items():
            groups.setdefault(name.rsplit("/", 1)[-1], {})[name] = points
        fvu = groups.get("fvu", {})
        auxk = groups.get("auxk", {})
        loss_is_fvu = bool(fvu) and all(
            _same_curve(points, fvu.get(name[:-len("loss")] + "fvu"),
                        {p[0] for p in auxk.get(name[:-len("loss")] + "auxk", []) if p[1] != 0})  # this SAE's AuxK
            for name, points in groups.get("loss", {"": None}).items())
        charts = "".join(snapshot.line_chart("FVU (the loss)" if base == "fvu" and loss_is_fvu else base, groups[base],
                                             log=base in ("loss", "fvu"))
                         for base in ("loss", "fvu", "l0", "dead_fraction")
                         if base in groups and not (base == "loss" and loss_is_fvu)
                         and not (base == "l0" and all(map(_constant, groups[base].values()))))
        note = "<div style='color:#666;font-size:11px'>a snapshot: sk.job(\"{}\") in a kernel shows it live</div>".format(
            snapshot.esc(self.job_id))
        return snapshot.box(head, bar, error, reasons, evaluation, charts, note)


def _constant(points) -> bool:
    """Whether a logged curve is flat (TopK's L0 at k says nothing); the live view's ``constant``."""
    return len(points) > 1 and all(abs(p[1] - points[0][1]) <= 1e-6 * max(1.0, abs(points[0][1])) for p in points)


def _same_curve(a, b, except_steps: set | frozenset = frozenset()) -> bool:
    """Whether two logged curves are one, but at ``except_steps`` (a TopK SAE's loss is its FVU plus the AuxK loss
    on the steps that log one: one chart says both)."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(p[0] == q[0] and (p[0] in except_steps or abs(p[1] - q[1]) <= 1e-9 * max(1.0, abs(p[1])))
                    for p, q in zip(a, b)))
