"""``sk.jobs()``: every job of a workspace as a table (rich repr in Jupyter, text in a terminal)."""

from __future__ import annotations

import html
from typing import Iterator, Sequence

from saekit import registry
from saekit.errors import ConfigError
from saekit.jobs.events import LogState, read_last
from saekit.jobs.job import Job
from saekit.jobs.lifecycle import events_path, refresh
from saekit.workspace import Workspace, as_workspace

COLUMNS = ("id", "kind", "name", "status", "progress", "attempt", "created_at", "finished_at", "error_type")

_BADGE = {"queued": "#6b7280", "running": "#2563eb", "completed": "#16a34a", "failed": "#dc2626",
          "cancelled": "#d97706"}


def _progress(ws: Workspace, row: dict) -> float | None:
    if row["status"] == "completed":
        return 100.0
    if row["status"] not in registry.ACTIVE_STATES:
        return None
    return LogState().update(read_last(events_path(ws, row["id"]), 16384)).percent()


class JobTable:
    """Rows of jobs, newest first. Iterating gives ``Job`` handles; ``to_pandas()`` gives a DataFrame."""

    def __init__(self, rows: list[dict], workspace: Workspace):
        self.rows = rows
        self.workspace = workspace

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Job]:
        return (Job(r["id"], self.workspace, _row=r) for r in self.rows)

    def __getitem__(self, index: int | str) -> Job:
        if isinstance(index, str):
            for r in self.rows:
                if r["id"] == index:
                    return Job(r["id"], self.workspace, _row=r)
            raise KeyError(index)
        r = self.rows[index]
        return Job(r["id"], self.workspace, _row=r)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in self.rows], columns=list(COLUMNS))

    def _cells(self, row: dict) -> list[str]:
        p = row.get("progress")
        return [
            row["id"], row["kind"], row.get("name") or "", row["status"], "" if p is None else f"{p:.0f}%",
            str(row["attempt"]), f"{row['created_at']:%Y-%m-%d %H:%M:%S}",
            f"{row['finished_at']:%H:%M:%S}" if row.get("finished_at") else "", row.get("error_type") or "",
        ]

    def __repr__(self) -> str:
        if not self.rows:
            return f"no jobs in {str(self.workspace.path)!r}"
        cells = [list(COLUMNS)] + [self._cells(r) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
        return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>No jobs in <code>{html.escape(str(self.workspace.path))}</code> yet.</p>"
        head = "".join(f"<th style='text-align:left'>{c}</th>" for c in COLUMNS)
        body = []
        for r in self.rows:
            cells = [html.escape(c) for c in self._cells(r)]
            cells[3] = (f"<span style='color:white;background:{_BADGE.get(r['status'], '#6b7280')};"
                        f"border-radius:4px;padding:1px 6px'>{cells[3]}</span>")
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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
