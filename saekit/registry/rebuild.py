"""Rebuilding the job catalog from the event logs (``jobs/*/events.jsonl``), which are the truth.

Each log's ``submit`` records give a job's identity (kind, key, name, spec) and attempts, its ``start``
and ``end`` records its state, its ``metric`` records its compacted metrics (or, once retention reduced
the log, the ``metrics.parquet`` beside it). A job whose log holds no ``submit`` record (written by
saekit 0.1) cannot be rebuilt and is reported. Feature labels come back from
each analysis' ``labels.jsonl`` journal; templates live only in the registry and are lost with it (the
report says so).
A job found running is left running: the next reader sees whether its worker's lease is still held.
"""

from __future__ import annotations

import datetime as dt
import json

from saekit.eventlog import LogState, events_path, read_all
from saekit.registry.labels import COLUMNS as LABEL_COLUMNS, read_journal
from saekit.workspace import Workspace

METRICS_FILE = "metrics.parquet"  # beside a reduced event log (retention): the job's metrics, no longer in the log


def _quoted(path) -> str:
    return str(path).replace("'", "''")


def read_metrics_file(path) -> list[tuple[int, str, float]]:
    """The ``(step, name, value)`` rows of a job's ``metrics.parquet`` (read without the registry)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        return [tuple(r) for r in con.execute(f"SELECT step, name, value FROM read_parquet('{_quoted(path)}') "
                                              "ORDER BY step, name").fetchall()]
    finally:
        con.close()


def _timestamp(epoch: float | None) -> dt.datetime | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(float(epoch), dt.timezone.utc).replace(tzinfo=None)


def job_row_from_log(job_id: str, records: list[dict]) -> tuple[dict, list[tuple[int, str, float]]] | None:
    """The ``jobs`` row and the metric rows that a job's event log describes (None without a ``submit``)."""
    state = LogState().update(records)
    submits = [r for r in records if r.get("t") == "submit"]
    if not submits:
        return None
    first, latest = submits[0], submits[-1]
    attempt = max(int(latest.get("attempt", 1)), state.attempt or 0)
    row = {"id": job_id, "kind": latest["kind"], "key": latest["key"], "name": latest.get("name"),
           "spec": json.dumps(latest["spec"], sort_keys=True, separators=(",", ":")), "entry": latest.get("entry") or "",
           "attempt": attempt, "launcher": latest.get("launcher"), "cancel_requested": False,
           "created_at": _timestamp(first.get("created_at", first.get("time"))),
           "queued_at": _timestamp(latest.get("time")), "status": "queued", "result": None, "error_type": None,
           "error_message": None, "suggestion": None, "worker_pid": None, "worker_host": None,
           "started_at": None, "finished_at": None, "traceback": None}
    start = state.start if state.start is not None and int(state.start.get("attempt", 0)) == attempt else None
    if start is not None:
        row.update(status="running", worker_pid=start.get("pid"), worker_host=start.get("host"),
                   started_at=_timestamp(start.get("time")), launcher=start.get("launcher") or row["launcher"])
    end = state.end
    if end is not None and int(end.get("attempt", 0)) == attempt:
        row.update(status=end.get("status") or "failed", error_type=end.get("error_type"),
                   error_message=end.get("error_message"), suggestion=end.get("suggestion"),
                   finished_at=_timestamp(end.get("time")), traceback=end.get("traceback"),
                   result=None if end.get("result") is None else json.dumps(end["result"]))
    return row, (state.metric_rows() if end is not None else [])


COLUMNS = ("id", "kind", "key", "active_key", "name", "status", "spec", "entry", "result", "error_type",
           "error_message", "suggestion", "attempt", "launcher", "worker_pid", "worker_host", "cancel_requested",
           "created_at", "queued_at", "started_at", "finished_at", "traceback")


def rebuild_into(con, ws: Workspace) -> str:
    """Insert every job the event logs describe into the (new, empty) registry ``con``; a report."""
    jobs_dir = ws.path / "jobs"
    rows, metrics, unrecoverable = [], [], []
    for folder in sorted(jobs_dir.iterdir()) if jobs_dir.is_dir() else []:
        records = read_all(events_path(ws, folder.name))
        if not records:
            continue
        found = job_row_from_log(folder.name, records)
        if found is None:
            unrecoverable.append(folder.name)
            continue
        rows.append(found[0])
        kept = folder / METRICS_FILE
        metrics += [(folder.name, *m) for m in (read_metrics_file(kept) if kept.exists() else found[1])]
    active_keys = set()
    for row in sorted(rows, key=lambda r: r["created_at"] or dt.datetime.min, reverse=True):
        active = row["status"] in ("queued", "running")
        if active and row["key"] in active_keys:  # two active jobs for one key: the older one is not resumed
            row.update(status="failed", error_type="worker_lost",
                       error_message="found active when the registry was rebuilt, beside a newer job of the same spec")
            active = False
        row["active_key"] = row["key"] if active else None
        if active:
            active_keys.add(row["key"])
    con.begin()
    try:
        for row in rows:
            con.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        [row[c] for c in COLUMNS])
        if metrics:
            job_ids, steps, names, values = (list(c) for c in zip(*metrics))
            con.execute("INSERT INTO metrics SELECT unnest(?::VARCHAR[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[]), "
                        "unnest(?::DOUBLE[])", [job_ids, steps, names, values])
        labels = _journalled_labels(ws, {row["id"] for row in rows})
        if labels:
            columns = {c: [r[c] for r in labels] for c in LABEL_COLUMNS}
            con.execute(f"INSERT INTO feature_labels ({', '.join(LABEL_COLUMNS)}) SELECT unnest(?::VARCHAR[]), "
                        "unnest(?::INTEGER[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                        "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::TIMESTAMP[])",
                        [columns[c] for c in LABEL_COLUMNS])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    report = f"{len(rows)} job(s) rebuilt"
    if labels:
        report += f", {len(labels)} label change(s) from the analyses' journals"
    if unrecoverable:
        report += f"; {len(unrecoverable)} log(s) without a submit record could not be ({', '.join(unrecoverable[:5])})"
    return report + "; templates, kept only in the registry, are not in the logs"


def _journalled_labels(ws: Workspace, jobs: set[str]) -> list[dict]:
    """Every label row journalled in ``analyses/<id>/labels.jsonl`` of a rebuilt job, each once (an import run
    twice journals its rows twice), in order. Rows imported into another analysis are that analysis' own."""
    folder = ws.path / "analyses"
    seen, rows = set(), []
    for analysis in sorted(jobs):
        for row in read_journal(folder / analysis):
            key = tuple(row[c] for c in ("analysis", "feature", "source", "label", "author", "created_at"))
            if row["analysis"] == analysis and key not in seen:
                seen.add(key)
                rows.append(row)
    return rows
