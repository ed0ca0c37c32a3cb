"""``sk.dashboard()``: every active job of the workspace (whoever started it) with its progress, ETA, latest
metric and the resources its worker uses, recently finished jobs below with their final metrics; and
``sk.compare(jobs, metric)``: one chart overlaying a metric (or progress over time) of several runs,
labelled by their names and the settings that differ between them, with a table of final values."""

from __future__ import annotations

import time
from typing import cast

import traitlets

from saekit.config import config
from saekit.jobs.kinds import kind_hook
from saekit.jobs.lifecycle import epoch as epoch_seconds
from saekit.jobs.textbar import latest_metrics
from saekit.widgets import snapshot
from saekit.widgets._base import SnapshotWidget, esm, thin
from saekit.widgets.job_widget import chart_series
from saekit.widgets.poller import POLLER, Poller
from saekit.workspace import Workspace, as_workspace

RECENT = 10
FINAL_METRICS = ("fvu", "l0", "dead_fraction")  # shown for finished training runs (held out when evaluated)


def _final_metrics(row, state) -> dict[str, float]:
    """The held-out evaluation of a finished training run (its first SAE), else its last logged values."""
    result = row.result_value if row.result else None
    if isinstance(result, dict) and result.get("saes"):
        evaluation = result["saes"][0].get("eval", {})
        return {k: evaluation[k] for k in FINAL_METRICS if isinstance(evaluation.get(k), (int, float))}
    return {k.rsplit("/", 1)[-1]: v for k, v in latest_metrics(state).items()}


class Dashboard(SnapshotWidget):
    """Active jobs with progress and resources, and the latest finished ones; live until closed."""

    _esm = esm("dashboard.js")

    workspace_path = traitlets.Unicode("").tag(sync=True)
    active: traitlets.List[dict] = traitlets.List([]).tag(sync=True)
    recent: traitlets.List[dict] = traitlets.List([]).tag(sync=True)

    def __init__(self, *, workspace: Workspace | str | None = None, poller: Poller = POLLER, **kwargs):
        super().__init__(**kwargs)
        self.workspace = as_workspace(workspace)
        self.workspace_path = str(self.workspace.path)
        self._poller = poller
        self._rows: list = []
        self._results: dict[str, object] = {}
        self._read_at = -float("inf")
        self.poll()
        poller.add(self)

    def _active_row(self, row, now: float) -> dict:
        feed = self._poller.feed(self.workspace, row.id)
        feed.read(now)
        state = feed.state
        progress = state.progress or {}
        resources = state.resources or {}
        rate, eta = None, None
        first = feed.first_progress
        if first and progress.get("time") and first.get("time") and progress["time"] > first["time"]:
            rate = (float(progress.get("done") or 0) - float(first.get("done") or 0)) / (progress["time"] - first["time"])
            if rate > 0 and progress.get("total"):
                eta = (float(progress["total"]) - float(progress.get("done") or 0)) / rate
        return {"id": row.id, "kind": row.kind, "name": row.name, "status": str(row.status),
                "attempt": row.attempt, "phase": progress.get("phase"), "done": progress.get("done"),
                "total": progress.get("total"), "unit": progress.get("unit"), "percent": state.percent(),
                "rate": rate, "eta": eta, "started_at": epoch_seconds(row.started_at), "updated_at": state.last_time,
                "latest": ", ".join(f"{k}={v:.3g}" for k, v in latest_metrics(state, 2).items()),
                "cpu_percent": resources.get("cpu_percent"), "rss": resources.get("rss"),
                "gpu_memory": resources.get("gpu_memory"), "worker_pid": row.worker_pid}

    def _read_results(self, rows) -> None:
        """Final metrics of finished rows not seen yet (they never change): train results in one registry read."""
        from saekit import registry
        from saekit.eventlog import LogState, events_path, read_last

        new = [r for r in rows if r.id not in self._results]
        full = {r.id: r for r in registry.get_jobs(self.workspace, [r.id for r in new if not r.active])}
        for row in new:
            self._results[row.id] = _final_metrics(full.get(row.id, row),
                                                   LogState().update(read_last(events_path(self.workspace, row.id))))

    def _recent_row(self, row) -> dict:
        return {"id": row.id, "kind": row.kind, "name": row.name, "status": str(row.status),
                "error_type": row.error_type if row.status == "failed" else None,
                "finished_at": epoch_seconds(row.finished_at),
                "seconds": (row.finished_at - row.started_at).total_seconds() if row.finished_at and row.started_at else None,
                "final": self._results[row.id]}

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
        finished = [r for r in self._rows if not r.active][:RECENT]
        self._read_results(finished)
        recent = [self._recent_row(r) for r in finished]
        with self.hold_sync():
            if active != self.active:
                self.active = active
            if recent != self.recent:
                self.recent = recent
        return True

    def summary(self) -> str:
        lines = [f"saekit jobs in {self.workspace_path}: {len(self.active)} active"]
        lines += [f"  {j['id']} {j['status']} {j['percent'] or 0:.0f}% {j['phase'] or ''}" for j in self.active]
        lines += [f"  {j['id']} {j['status']}" for j in self.recent]
        return "\n".join(lines)

    def snapshot_html(self) -> str:
        rows = [[j["name"] or j["kind"], j["id"], snapshot.badge(j["status"]), f"{j['percent'] or 0:.1f}%",
                 j["phase"] or "", j["latest"]] for j in self.active]
        done = [[j["name"] or j["kind"], j["id"], snapshot.badge(j["status"]), j["error_type"] or "",
                 ", ".join(f"{k} {snapshot.number(v)}" for k, v in (j["final"] or {}).items())] for j in self.recent]
        return snapshot.box(f"<b>saekit jobs</b> <span style='color:#666'>{snapshot.esc(self.workspace_path)}</span>",
                            snapshot.table(["job", "id", "status", "progress", "phase", "latest"], rows) if rows else "",
                            snapshot.table(["job", "id", "status", "error", "final"], done) if done else "")


def dashboard(workspace: Workspace | str | None = None) -> Dashboard:
    """The workspace's operations dashboard (a live widget)."""
    return Dashboard(workspace=workspace)


def _flat(value, prefix: str = "", out: dict | None = None) -> dict:
    """``{"model": {"dtype": "f32"}}`` -> ``{"model.dtype": "f32"}``."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(inner, f"{prefix}{key}.", out)
    else:
        out[prefix.rstrip(".")] = value
    return out


def _last_values(state) -> dict[str, float]:
    """Every metric's value at the last step it was logged."""
    last: dict[str, tuple[int, float]] = {}
    for (step, name), value in state.metrics.items():
        if name not in last or step >= last[name][0]:
            last[name] = (step, value)
    return {name: value for name, (_, value) in last.items()}


def run_settings(job) -> list[dict]:
    """The settings of a run (one dict per SAE of a training sweep), flat: ``k``, ``d_sae``, ``lr``, ...
    (what labels and the comparison table tell runs apart by)."""
    spec = job.spec
    split = kind_hook(job.kind, "runs")
    if split is None:
        return [_flat(spec)]
    return [_leaves(run) for run in split(spec)]


def _leaves(value, out: dict | None = None) -> dict:
    """``{"train": {"lr": 1e-3}, "sae": {"k": 32}}`` -> ``{"lr": 1e-3, "k": 32}``: settings by their own names."""
    out = {} if out is None else out
    for key, inner in value.items():
        if isinstance(inner, dict):
            _leaves(inner, out)
        else:
            out[key] = inner
    return out


def differing(settings: list[dict], skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The setting names whose values are not the same in every run (leaving out ``skip``)."""
    keys = sorted({k for s in settings for k in s} - set(skip))
    return [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]


class _Recorded:
    """A finished job's metrics as the registry holds them, in the shape of a log feed (it never changes)."""

    records: list = []

    def __init__(self, state):
        self.state = state

    def read(self, now: float | None = None) -> bool:
        return False


def _recorded_states(ws: Workspace, jobs, metric: str) -> dict:
    """For each finished job whose metrics are in the registry: a feed of them (``metric`` and the table's)."""
    from saekit import registry
    from saekit.eventlog import LogState

    rows = {j.id: j._row or j._load() for j in jobs}  # the rows Compare has just read
    finished = {job_id: row for job_id, row in rows.items() if not row.active}
    if not finished:
        return {}
    frame = registry.metric_frame(ws, list(finished), names=sorted({metric, "loss", "fvu", "l0"}))
    out = {}
    for job_id, metrics in frame.groupby("job_id", sort=False):
        records = [{"t": "metric", "step": int(step), "values": dict(zip(group["name"], group["value"]))}
                   for step, group in metrics.groupby("step", sort=True)]
        records.append({"t": "end", "status": str(finished[job_id].status)})
        out[job_id] = _Recorded(LogState().update(records))
    return out


class Compare(SnapshotWidget):
    """One chart overlaying ``metric`` of several jobs (``metric="progress"``: percent over elapsed seconds),
    and a table of each run's final values and the settings that differ."""

    _esm = esm("compare.js")

    metric = traitlets.Unicode("fvu").tag(sync=True)
    x_label = traitlets.Unicode("step").tag(sync=True)
    series = traitlets.Dict({}).tag(sync=True)  # label -> [[x, y], ...]
    columns: traitlets.List[str] = traitlets.List([]).tag(sync=True)  # the summary table's header
    rows: traitlets.List[list] = traitlets.List([]).tag(sync=True)  # and its rows
    _static = False  # by=: the final values of finished runs, drawn once (nothing to poll)

    def __init__(self, jobs, metric: str = "fvu", *, names: list[str] | None = None, by: str | None = None,
                 workspace: Workspace | str | None = None, poller: Poller = POLLER, **kwargs):
        from saekit.errors import ConfigError
        from saekit.jobs.job import Job, get_job

        from saekit import registry
        from saekit.eventlog import events_path, read_all

        super().__init__(**kwargs)
        self.workspace = as_workspace(workspace)
        ids = [j for j in jobs if not isinstance(j, Job)]
        rows = {r.id: r for r in registry.get_jobs(self.workspace, ids)}  # one registry read for all of them
        self.jobs = [j if isinstance(j, Job) else Job(j, self.workspace, _row=rows[j]) if j in rows
                     else get_job(j, self.workspace) for j in jobs]
        if not self.jobs:
            raise ConfigError("compare needs at least one job (handles or ids)")
        if names is not None and len(names) != len(self.jobs):
            raise ConfigError(f"names= has {len(names)} name(s) for {len(self.jobs)} job(s); give one per job")
        self.metric, self.x_label = metric, "seconds" if metric == "progress" else "step"
        self._poller = poller
        self._progress: dict[str, list[list[float]]] = {j.id: [] for j in self.jobs}
        self._starts: dict[str, float] = {}
        self._labels = self._make_labels(names)
        self._static = by is not None
        if by is not None:
            self._by_setting(by)
            return
        # finished runs never change: their metrics come from the registry in one query, not from their logs
        self._recorded = {} if metric == "progress" else _recorded_states(self.workspace, self.jobs, metric)
        for job in self.jobs:  # the history so far
            if metric == "progress":
                self._add_progress(job.id, read_all(events_path(job.workspace, job.id)))
            self._feed(job).read()
        self.poll()
        if any(self._feed(j).state.end is None for j in self.jobs):
            poller.add(self)

    def _feed(self, job):
        return self._recorded.get(job.id) or self._poller.feed(job.workspace, job.id)

    def _make_labels(self, names: list[str] | None) -> dict[tuple[str, int], str]:
        """(job id, SAE index) -> label: the given name or the job's, and the settings that differ."""
        settings = {(job.id, i): s for job in self.jobs for i, s in enumerate(run_settings(job))}
        skip = {name for job in self.jobs for name in (*(kind_hook(job.kind, "bookkeeping") or ()),
                                                       *(kind_hook(job.kind, "volatile") or ()))}
        varying = differing(list(settings.values()), skip)
        self._settings, self._varying = settings, varying
        labels = {}
        for n, job in enumerate(self.jobs):
            base = (names[n] if names else None) or job.name or f"{job.kind} {job.id.split('-')[-1]}"
            for (job_id, i), values in settings.items():
                if job_id == job.id:
                    diff = ", ".join(text for text in (f"{k}={values.get(k)}" for k in varying[:4]) if text not in base)
                    labels[(job_id, i)] = f"{base}: {diff}" if diff else base
        return labels

    def _add_progress(self, job_id: str, records: list[dict]) -> None:
        points = self._progress[job_id]
        for record in records:
            if record.get("t") == "start":
                points.clear()
                self._starts[job_id] = cast(float, record.get("time"))
            elif record.get("t") == "progress" and record.get("total"):
                start = self._starts.setdefault(job_id, record["time"])
                points.append([record["time"] - start, 100.0 * float(record.get("done") or 0) / float(record["total"])])

    def followed(self) -> set[tuple[str, str]]:
        return {(str(j.workspace.path), j.id) for j in self.jobs}

    def _by_setting(self, by: str) -> None:
        """The final values of ``metric`` (a column of ``sk.runs()``: an evaluation's ``core/fvu`` too) against the
        setting ``by``, one point per run, a line per architecture when they differ."""
        import pandas as pd

        from saekit.errors import ConfigError
        from saekit.jobs.runs import runs

        table = runs(status=None, workspace=self.workspace)
        table = table[table["id"].isin([j.id for j in self.jobs])] if len(table) else table
        missing = [c for c in (self.metric, by) if c not in table.columns]
        if missing:
            raise ConfigError(f"sk.runs() has no column {missing[0]!r} for these runs; choose among "
                              f"{sorted(c for c in table.columns if c not in ('id', 'kind', 'name', 'status'))}",
                              suggestion="evaluate the runs first (sk.evaluate) to compare evaluation metrics")
        group = "arch" if "arch" in table.columns and table["arch"].nunique() > 1 else None
        series: dict[str, list[list[float]]] = {}
        rows = []
        for _, r in table.iterrows():
            index = int(r["sae"]) if "sae" in table.columns and not pd.isna(r["sae"]) else 0
            x, y = _finite_number(r[by]), _finite_number(r[self.metric])
            rows.append([self._labels.get((r["id"], index), r["id"]), r["status"], y, r[by]])
            if x is not None and y is not None:
                series.setdefault(str(r[group]) if group else self.metric, []).append([x, y])
        self.x_label = by
        self.series = {name: sorted(points) for name, points in series.items()}
        self.columns, self.rows = ["run", "status", self.metric, by], rows

    def poll(self, now: float | None = None) -> bool:
        if self.comm is None or self._static:
            return False
        series: dict[str, list[list[float]]] = {}
        rows = []
        ended = True
        for job in self.jobs:
            feed = self._feed(job)
            if feed.read(now):
                self._add_progress(job.id, feed.records)
            ended &= feed.state.end is not None
            if self.metric == "progress":  # a new list each poll: the trait must see a change to send it
                series[self._labels[(job.id, 0)]] = thin(list(self._progress[job.id]))
            else:
                for name, points in chart_series(feed.state, (self.metric,)).items():
                    index = int(name.split("/")[0].removeprefix("sae")) if "/" in name else 0
                    series[self._labels.get((job.id, index), f"{job.id} {name}")] = points
            last = _last_values(feed.state)
            sweep = any(name.startswith("sae") and "/" in name for name in last)
            for (job_id, i), label in self._labels.items():
                if job_id != job.id:
                    continue
                final = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith(f"sae{i}/")} if sweep else last
                rows.append([label, str(feed.state.end.get("status")) if feed.state.end else "running",
                             *(final.get(m) for m in ("loss", "fvu", "l0")),
                             *(self._settings[(job_id, i)].get(k) for k in self._varying)])
        columns = ["run", "status", "loss", "fvu", "l0", *self._varying]
        with self.hold_sync():
            if series != self.series:
                self.series = series
            if columns != self.columns:
                self.columns = columns
            if rows != self.rows:
                self.rows = rows
        return not ended

    def summary(self) -> str:
        if self._static:
            return "\n".join([f"{self.metric} by {self.x_label}:"] + [
                f"  {row[0]}  {self.x_label}={row[3]}  {self.metric}={snapshot.number(row[2])}" for row in self.rows])
        return "\n".join([f"{self.metric} of {len(self.jobs)} run(s):"] +
                         [f"  {row[0]}  {row[1]}  fvu={snapshot.number(row[3])}" for row in self.rows])

    def snapshot_html(self) -> str:
        return snapshot.box(snapshot.line_chart(f"{self.metric} by {self.x_label}", self.series, width=560, height=220,
                                                log=self.metric in ("loss", "fvu")),
                            snapshot.table(self.columns, [[snapshot.number(c) if isinstance(c, float) else c
                                                           for c in row] for row in self.rows]))


def _finite_number(value) -> float | None:
    """``value`` as a float when it is a finite real number (numpy's too), else None."""
    import math
    import numbers

    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return float(value) if real and math.isfinite(float(value)) else None


def compare(jobs, metric: str = "fvu", *, names: list[str] | None = None, by: str | None = None,
            workspace: Workspace | str | None = None) -> Compare:
    """One chart of ``metric`` (``fvu``, ``loss``, ``l0``, ... or ``progress``) for several jobs, labelled by
    ``names`` (else the jobs' names) and the settings that differ, with a table of final values.
    ``by="k"`` (any column of ``sk.runs()``) charts instead each run's final ``metric`` against that setting, one
    point per SAE of the jobs' sweeps: an evaluation's metrics too (``sk.compare(runs, "core/fvu", by="l0")``)."""
    return Compare(jobs, metric, names=names, by=by, workspace=workspace)
