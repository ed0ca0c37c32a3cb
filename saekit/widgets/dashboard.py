"""``sk.dashboard()``: every active job of the workspace (whoever started it) with its progress and the
resources its worker uses, recently finished jobs below; and ``sk.compare(jobs, metric)``: one chart
overlaying a metric (or progress over time) of several runs."""

from __future__ import annotations

import time

import anywidget
import traitlets

from saekit.config import config
from saekit.widgets.job_widget import HERE, chart_series, epoch_seconds, esm
from saekit.widgets.poller import POLLER, Poller
from saekit.workspace import Workspace, as_workspace

RECENT = 10


class Dashboard(anywidget.AnyWidget):
    """Active jobs with progress and resources, and the latest finished ones; live until closed."""

    _esm = esm("dashboard.js")
    _css = (HERE / "js" / "widgets.css").read_text()

    workspace_path = traitlets.Unicode("").tag(sync=True)
    active = traitlets.List([]).tag(sync=True)
    recent = traitlets.List([]).tag(sync=True)

    def __init__(self, *, workspace: Workspace | str | None = None, poller: Poller = POLLER, **kwargs):
        super().__init__(**kwargs)
        self.workspace = as_workspace(workspace)
        self.workspace_path = str(self.workspace.path)
        self._poller = poller
        self._rows: list[dict] = []
        self._read_at = -float("inf")
        self.poll()
        poller.add(self)

    def _active_row(self, row: dict, now: float) -> dict:
        feed = self._poller.feed(self.workspace, row.id)
        feed.read(now)
        state = feed.state
        progress = state.progress or {}
        resources = state.resources or {}
        return {"id": row.id, "kind": row.kind, "name": row.name, "status": str(row.status),
                "attempt": row.attempt, "phase": progress.get("phase"), "done": progress.get("done"),
                "total": progress.get("total"), "unit": progress.get("unit"), "percent": state.percent(),
                "started_at": epoch_seconds(row.started_at), "updated_at": state.last_time,
                "cpu_percent": resources.get("cpu_percent"), "rss": resources.get("rss"),
                "gpu_memory": resources.get("gpu_memory"), "worker_pid": row.worker_pid}

    def followed(self) -> set[tuple[str, str]]:

        return {(str(self.workspace.path), r.id) for r in self._rows if r.active}

    def poll(self, now: float | None = None) -> bool:
        if self.comm is None:
            return False
        from saekit import registry
        from saekit.jobs.lifecycle import refresh

        now = time.monotonic() if now is None else now
        if now - self._read_at >= config.get("dashboard_refresh"):
            self._read_at = now
            self._rows = [refresh(self.workspace, r) for r in registry.list_jobs(self.workspace, limit=200)]
        active = [self._active_row(r, now) for r in self._rows if r.active]
        recent = [{"id": r.id, "kind": r.kind, "name": r.name, "status": str(r.status),
                   "error_type": r.error_type, "finished_at": epoch_seconds(r.finished_at),
                   "seconds": (r.finished_at - r.started_at).total_seconds()
                   if r.finished_at and r.started_at else None}
                  for r in self._rows if not r.active][:RECENT]
        with self.hold_sync():
            if active != self.active:
                self.active = active
            if recent != self.recent:
                self.recent = recent
        return True


def dashboard(workspace: Workspace | str | None = None) -> Dashboard:
    """The workspace's operations dashboard (a live widget)."""
    return Dashboard(workspace=workspace)


class Compare(anywidget.AnyWidget):
    """One chart overlaying ``metric`` of several jobs (``metric="progress"``: percent over elapsed seconds)."""

    _esm = esm("compare.js")
    _css = (HERE / "js" / "widgets.css").read_text()

    metric = traitlets.Unicode("fvu").tag(sync=True)
    x_label = traitlets.Unicode("step").tag(sync=True)
    series = traitlets.Dict({}).tag(sync=True)  # label -> [[x, y], ...]

    def __init__(self, jobs, metric: str = "fvu", *, workspace: Workspace | str | None = None,
                 poller: Poller = POLLER, **kwargs):
        from saekit.errors import ConfigError
        from saekit.jobs.job import Job, get_job

        super().__init__(**kwargs)
        self.workspace = as_workspace(workspace)
        self.jobs = [j if isinstance(j, Job) else get_job(j, self.workspace) for j in jobs]
        if not self.jobs:
            raise ConfigError("compare needs at least one job (handles or ids)")
        self.metric, self.x_label = metric, "seconds" if metric == "progress" else "step"
        self._poller = poller
        self._progress: dict[str, list[list[float]]] = {j.id: [] for j in self.jobs}
        self._starts: dict[str, float] = {}
        from saekit.jobs.events import read_all
        from saekit.jobs.lifecycle import events_path

        for job in self.jobs:  # the history so far
            self._add_progress(job.id, read_all(events_path(job.workspace, job.id)))
            self._poller.feed(job.workspace, job.id).read()
        self.poll()
        if any(self._poller.feed(j.workspace, j.id).state.end is None for j in self.jobs):
            poller.add(self)

    def _add_progress(self, job_id: str, records: list[dict]) -> None:
        points = self._progress[job_id]
        for record in records:
            if record.get("t") == "start":
                points.clear()
                self._starts[job_id] = record.get("time")
            elif record.get("t") == "progress" and record.get("total"):
                start = self._starts.setdefault(job_id, record["time"])
                points.append([record["time"] - start, 100.0 * float(record.get("done") or 0) / float(record["total"])])

    def followed(self) -> set[tuple[str, str]]:
        return {(str(j.workspace.path), j.id) for j in self.jobs}

    def _label(self, job) -> str:
        return f"{job.name or job.kind} {job.id}"

    def poll(self, now: float | None = None) -> bool:
        if self.comm is None:
            return False
        series: dict[str, list[list[float]]] = {}
        ended = True
        for job in self.jobs:
            feed = self._poller.feed(job.workspace, job.id)
            if feed.read(now):
                self._add_progress(job.id, feed.records)
            ended &= feed.state.end is not None
            if self.metric == "progress":
                series[self._label(job)] = self._progress[job.id]
                continue
            for name, points in chart_series(feed.state, (self.metric,)).items():
                series[self._label(job) + ("" if name == self.metric else " " + name.split("/")[0])] = points
        if series != self.series:
            self.series = series
        return not ended


def compare(jobs, metric: str = "fvu", workspace: Workspace | str | None = None) -> Compare:
    """One chart of ``metric`` (``fvu``, ``loss``, ``l0``, ... or ``progress``) for several jobs."""
    return Compare(jobs, metric, workspace=workspace)
