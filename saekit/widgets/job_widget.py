"""``JobWidget``: a job's live view (status, progress, rate and ETA, events, error and suggestion, Cancel,
metric charts, resource sparklines), re-creatable from the job id in any kernel.

All state is in synced traits, filled from the job's event log by the poller (``poller.py``); the
browser only draws them (and counts elapsed time and ETA between updates). Cancel is a custom message
that writes the job's cancel flag; it never calls into a busy kernel's job.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import anywidget
import traitlets

from saekit.jobs.lifecycle import epoch as epoch_seconds
from saekit.widgets.poller import POLLER, JobFeed, Poller

HERE = Path(__file__).parent
CHART_METRICS = ("loss", "fvu", "l0", "dead_fraction")
MAX_POINTS = 400  # per chart series sent to the browser (older points thinned)


def esm(*names: str) -> str:
    """Front-end modules are plain ES modules; the shared chart helpers are prepended, no build step."""
    return "\n".join((HERE / "js" / name).read_text() for name in ("charts.js", *names))


def _thin(points: list[list[float]], limit: int = MAX_POINTS) -> list[list[float]]:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def chart_series(state, names: tuple[str, ...] = CHART_METRICS) -> dict[str, list[list[float]]]:
    """Metric series for charts: ``name`` and, for sweeps, ``saeN/name``."""
    series: dict[str, list[list[float]]] = {}
    for (step, name), value in sorted(state.metrics.items()):
        base = name.rsplit("/", 1)[-1]
        if base in names and value is not None and math.isfinite(value):
            series.setdefault(name, []).append([step, value])
    return {k: _thin(v) for k, v in series.items()}


class JobWidget(anywidget.AnyWidget):
    """The live view of one job (``job.widget()``, or a ``Job`` as a cell's last expression)."""

    _esm = esm("job.js")
    _css = (HERE / "js" / "widgets.css").read_text()

    job_id = traitlets.Unicode("").tag(sync=True)
    name = traitlets.Unicode("").tag(sync=True)
    kind = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("queued").tag(sync=True)
    attempt = traitlets.Int(1).tag(sync=True)
    phase = traitlets.Unicode("").tag(sync=True)
    done = traitlets.Float(0.0).tag(sync=True)
    total = traitlets.Float(None, allow_none=True).tag(sync=True)
    unit = traitlets.Unicode("").tag(sync=True)
    rate = traitlets.Float(None, allow_none=True).tag(sync=True)  # units per second over the attempt
    started_at = traitlets.Float(None, allow_none=True).tag(sync=True)  # epoch seconds
    updated_at = traitlets.Float(None, allow_none=True).tag(sync=True)  # epoch seconds of the last record
    ended_at = traitlets.Float(None, allow_none=True).tag(sync=True)
    last_event = traitlets.Unicode("").tag(sync=True)
    last_event_level = traitlets.Unicode("info").tag(sync=True)
    error_type = traitlets.Unicode("").tag(sync=True)
    error_message = traitlets.Unicode("").tag(sync=True)
    suggestion = traitlets.Unicode("").tag(sync=True)
    cancel_requested = traitlets.Bool(False).tag(sync=True)
    metrics = traitlets.Dict({}).tag(sync=True)  # name -> [[step, value], ...]
    resources = traitlets.List([]).tag(sync=True)  # recent samples of the worker: time, cpu_percent, rss, gpu_memory

    def __init__(self, job, *, poller: Poller = POLLER, **kwargs):
        super().__init__(**kwargs)
        self.workspace, self.job_id = job.workspace, job.id
        row = job.record()
        self.name, self.kind, self.attempt = row.name or "", row.kind, int(row.attempt)
        self._poller = poller
        self._feed: JobFeed = poller.feed(job.workspace, job.id)
        self._seen = -1
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
                if first and progress.get("time") and first.get("time") and progress["time"] > first["time"]:
                    self.rate = (self.done - float(first.get("done") or 0)) / (progress["time"] - first["time"])
            if state.last_event:
                self.last_event = str(state.last_event.get("message", ""))
                self.last_event_level = str(state.last_event.get("level", "info"))
            if state.last_time:
                self.updated_at = float(state.last_time)
            if state.metrics:
                self.metrics = feed.charts(chart_series)
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

    def followed(self) -> set[tuple[str, str]]:
        return {(str(self.workspace.path), self.job_id)}

    def poll(self, now: float | None = None) -> bool:
        """Bring the traits up to date; False once the job has ended (nothing more to follow)."""
        if self.comm is None:
            return False
        self._feed.read(now)
        self._apply_feed()
        if self._feed.state.end is not None and self.status in ("completed", "failed", "cancelled"):
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
