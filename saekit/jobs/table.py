"""``sk.jobs()``: every job of a workspace as a table (rich repr in Jupyter, text in a terminal)."""

from __future__ import annotations

from typing import Iterator, Sequence

from saekit import registry
from saekit._table import Table
from saekit.errors import ConfigError
from saekit.jobs.events import LogState, read_last
from saekit.jobs.job import Job
from saekit.jobs.lifecycle import events_path, refresh
from saekit.workspace import Workspace, as_workspace

COLUMNS = ("id", "kind", "name", "status", "progress", "attempt", "created_at", "finished_at", "error_type")


def _progress(ws: Workspace, row: dict) -> float | None:
    if row["status"] == "completed":
        return 100.0
    if row["status"] not in registry.ACTIVE_STATES:
        return None
    return LogState().update(read_last(events_path(ws, row["id"]), 16384)).percent()


class JobTable(Table):
    """Jobs, newest first. Iterating gives ``Job`` handles; ``to_pandas()`` gives a DataFrame."""

    def __init__(self, rows: list[dict], workspace: Workspace):
        super().__init__(rows, COLUMNS, empty=f"no jobs in {str(workspace.path)!r} yet")
        self.workspace = workspace

    def __iter__(self) -> Iterator[Job]:
        return (Job(r["id"], self.workspace, _row=r) for r in self.rows)

    def __getitem__(self, index: int | str) -> Job:
        if isinstance(index, str):
            matches = [r for r in self.rows if r["id"] == index]
            if not matches:
                raise KeyError(index)
            return Job(index, self.workspace, _row=matches[0])
        row = self.rows[index]
        return Job(row["id"], self.workspace, _row=row)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

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
    rows = registry.list_jobs(ws, kind=kind, status=status, limit=limit)
    out = []
    for row in rows:
        if row["status"] in registry.ACTIVE_STATES:  # record what a vanished worker cannot
            fresh = refresh(ws, row)
            if states and fresh["status"] not in states:
                continue
            row = {k: fresh[k] for k in row}
        row["progress"] = _progress(ws, row)
        out.append(row)
    return JobTable(out, ws)
