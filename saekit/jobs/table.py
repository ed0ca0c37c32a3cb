"""``sk.jobs()``: every job of a workspace as a table (rich repr in Jupyter, text in a terminal)."""

from __future__ import annotations

from typing import Iterator, Sequence

from saekit import registry
from saekit._table import Table
from saekit.errors import ConfigError
from saekit.jobs.events import LogState, read_last
from saekit.jobs.job import Job
from saekit.jobs.lifecycle import events_path, refresh
from saekit.registry import JobRecord
from saekit.workspace import Workspace, as_workspace

COLUMNS = ("id", "kind", "name", "status", "progress", "attempt", "created_at", "finished_at", "error_type")


class JobTable(Table):
    """Jobs, newest first. Iterating gives ``Job`` handles; ``to_pandas()`` gives a DataFrame."""

    def __init__(self, records: list[tuple], workspace: Workspace, active_progress: dict[str, float | None],
                 empty: str | None = None):
        super().__init__(records, COLUMNS, names=registry.jobs.TABLE_COLUMNS,
                         empty=empty or f"no jobs in {str(workspace.path)!r} yet")
        self.workspace = workspace
        self._active_progress = active_progress
        self._ended_progress: dict[str, float | None] = {}

    def _percent(self, job_id: str, status: str) -> float | None:
        """100 once completed; the live figure while active; where a failed or cancelled job stopped."""
        if status == "completed":
            return 100.0
        if job_id in self._active_progress:
            return self._active_progress[job_id]
        if job_id not in self._ended_progress:  # read for the rows shown only (a few dozen), once
            self._ended_progress[job_id] = LogState().update(read_last(events_path(self.workspace, job_id), 16384)).last_percent()
        return self._ended_progress[job_id]

    def row(self, index: int) -> dict:
        row = super().row(index)
        row.setdefault("progress", self._percent(row["id"], row["status"]))
        return row

    @property
    def rows(self) -> list[dict]:
        rows = super().rows
        for row in rows:
            row.setdefault("progress", self._percent(row["id"], row["status"]))
        return rows

    def _job(self, index: int) -> Job:
        return Job(self._records[index][0], self.workspace, _row=JobRecord.from_row(self.row(index)))

    def __iter__(self) -> Iterator[Job]:
        return (self._job(i) for i in range(len(self)))

    def __getitem__(self, index: int | slice | str):
        """``table[0]`` (a ``Job``), ``table[:3]`` (a list of them) or ``table["job-id"]``."""
        if isinstance(index, slice):
            return [self._job(i) for i in range(len(self))[index]]
        if isinstance(index, str):
            if index not in self.ids:
                raise KeyError(index)
            index = self.ids.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"job index {index} out of range for {len(self)} job(s)")
        return self._job(index % len(self))

    @property
    def ids(self) -> list[str]:
        return [r[0] for r in self._records]

    @property
    def active_ids(self) -> list[str]:
        """The queued and running jobs among these."""
        return list(self._active_progress)

    def to_pandas(self):
        frame = super().to_pandas()
        frame["progress"] = [self._percent(i, s) for i, s in zip(frame["id"], frame["status"])]
        return frame

    def cells(self, row: dict) -> list[str]:
        cells = super().cells(row)
        p = row.get("progress")
        cells[COLUMNS.index("progress")] = "" if p is None else f"{p:.0f}%"
        if row.get("finished_at"):
            cells[COLUMNS.index("finished_at")] = f"{row['finished_at']:%H:%M:%S}"
        return cells


def list_jobs(kind: str | None = None, status: str | Sequence[str] | None = None, *,
              workspace: Workspace | str | None = None, limit: int | None = None) -> JobTable:
    """Every job of the workspace (any process started it), newest first; filter by kind and status."""
    ws = as_workspace(workspace)
    states = [status] if isinstance(status, str) else status
    for s in states or ():
        if s not in registry.JOB_STATES:
            raise ConfigError(f"status={s!r} is not a job state; use one of {', '.join(registry.JOB_STATES)}")
    records, active = registry.job_table(ws, kind=kind, status=status, limit=limit)
    progress: dict[str, float | None] = {}
    changed: dict[str, registry.JobRecord] = {}
    for row in active:  # record what a vanished worker cannot
        fresh = refresh(ws, row)
        if fresh.status != row.status:
            changed[row.id] = fresh
        elif fresh.active:
            progress[row.id] = LogState().update(read_last(events_path(ws, row.id), 16384)).percent()
    if changed:
        names = registry.jobs.TABLE_COLUMNS
        records = [tuple(getattr(changed[r[0]], n) for n in names) if r[0] in changed else r for r in records]
        if states:
            records = [r for r in records if r[names.index("status")] in states]
    what = " ".join(filter(None, ["/".join(states) if states else None, f"{kind!r}" if kind else None]))
    empty = f"no {what + ' ' if what else ''}jobs in {str(ws.path)!r}" + ("" if what else " yet")
    return JobTable(records, ws, progress, empty=empty)
