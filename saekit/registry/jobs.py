"""Job rows and their metrics: each function is one registry transaction.

State changes are compare-and-set (``UPDATE ... WHERE id = ? AND status IN (...) RETURNING *``), and
``active_key`` (UNIQUE, set exactly while a job is queued or running) keeps one active job per key.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from saekit.errors import JobNotFoundError, JobStateError
from saekit.registry._db import Tx, transaction
from saekit.registry.records import JobRecord
from saekit.registry.schema import ACTIVE_STATES, FINAL_STATES, JOB_STATES
from saekit.workspace import Workspace

# what listings need: no spec, no result (they can be large)
LIST_COLUMNS = (
    "id, kind, name, status, attempt, error_type, error_message, suggestion, launcher, worker_pid, worker_host, "
    "cancel_requested, created_at, queued_at, started_at, finished_at"
)


def utcnow() -> dt.datetime:
    """Timestamps are stored as naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _in(states: Sequence[str]) -> str:
    assert all(s in JOB_STATES for s in states), states
    return "(" + ", ".join(f"'{s}'" for s in states) + ")"


def _requeue(tx: Tx, job_id: str, launcher: str, worker_pid: int, spec: str | None = None,
             entry: str | None = None) -> JobRecord:
    """Start a new attempt of a failed or cancelled job (same id, attempt + 1; the caller saw it so)."""
    return _returned(tx.one(
        f"""UPDATE jobs SET status = 'queued', active_key = key, attempt = attempt + 1,
               spec = coalesce(?, spec), entry = coalesce(?, entry),
               result = NULL, error_type = NULL, error_message = NULL, suggestion = NULL, traceback = NULL,
               cancel_requested = FALSE, launcher = ?, worker_pid = ?, worker_host = NULL,
               started_at = NULL, finished_at = NULL, queued_at = ?
           WHERE id = ? AND status IN {_in(('failed', 'cancelled'))} RETURNING *""",
        [spec, entry, launcher, worker_pid, utcnow(), job_id],
    ))


def _returned(row: dict | None) -> JobRecord:
    """The row an UPDATE/INSERT ... RETURNING made (it always makes one where the caller checked the state)."""
    if row is None:
        raise JobStateError("the job changed state inside its own transaction")
    return JobRecord.from_row(row)


def submit_job(ws: Workspace, *, new_id: str, kind: str, key: str, name: str | None, spec: str,
               entry: str, force: bool, launcher: str, worker_pid: int) -> tuple[JobRecord, str]:
    """Find or create the job for ``key`` in one transaction.

    Returns ``(row, outcome)``; outcome is ``"active"`` (a queued/running job has the key),
    ``"completed"`` (a finished job has it and ``force`` is false), ``"resumed"`` (the latest job with
    the key failed or was cancelled: it was re-queued as a new attempt) or ``"created"``.
    ``worker_pid`` is the process that will launch the work (a background launcher replaces it with
    its worker's pid).
    """
    now = utcnow()
    with transaction(ws, write=True) as tx:
        active = tx.one("SELECT * FROM jobs WHERE active_key = ?", [key])
        if active is not None:
            return JobRecord.from_row(active), "active"
        if not force:
            latest = tx.one("SELECT * FROM jobs WHERE key = ? ORDER BY created_at DESC LIMIT 1", [key])
            if latest is not None and latest["status"] == "completed":
                return JobRecord.from_row(latest), "completed"
            if latest is not None:
                return _requeue(tx, latest["id"], launcher, worker_pid, spec, entry), "resumed"
        row = tx.one(
            """INSERT INTO jobs (id, kind, key, active_key, name, status, spec, entry,
                                  launcher, worker_pid, created_at, queued_at)
               VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING *""",
            [new_id, kind, key, key, name, spec, entry, launcher, worker_pid, now, now],
        )
        return _returned(row), "created"


def resume_job(ws: Workspace, job_id: str, *, launcher: str, worker_pid: int) -> tuple[JobRecord | None, bool]:
    """Re-queue a failed or cancelled job as a new attempt. Returns ``(record, requeued)``;
    an active job is returned unchanged, a completed one refused."""
    with transaction(ws, write=True) as tx:
        row = JobRecord.from_row(tx.one("SELECT * FROM jobs WHERE id = ?", [job_id]))
        if row is None:
            return None, False
        if row.active:
            return row, False
        if row.status == "completed":
            raise JobStateError(
                f"job {job_id!r} is completed, and completed is final; "
                "start it again with force=True to run the same spec anew"
            )
        return _requeue(tx, job_id, launcher, worker_pid), True


def transition(ws: Workspace, job_id: str, attempt: int, from_states: Sequence[str], to: str,
               **fields) -> JobRecord | None:
    """Compare-and-set the state of one attempt; returns the new record, or None if it was not in ``from_states``."""
    sets = {"status": to, **fields}
    assignments = ", ".join(f"{name} = ?" for name in sets)
    active_key = "key" if to in ACTIVE_STATES else "NULL"
    with transaction(ws, write=True) as tx:
        return JobRecord.from_row(tx.one(
            f"""UPDATE jobs SET {assignments}, active_key = {active_key}
                WHERE id = ? AND attempt = ? AND status IN {_in(from_states)} RETURNING *""",
            [*sets.values(), job_id, attempt],
        ))


def finish_job(ws: Workspace, job_id: str, attempt: int, status: str, *, result: str | None,
               error_type: str | None, error_message: str | None, suggestion: str | None,
               finished_at: dt.datetime, metrics: Iterable[tuple[int, str, float]] | None = None,
               traceback: str | None = None) -> JobRecord | None:
    """End an attempt and compact its metrics into the registry, in one transaction.

    ``metrics`` replaces the job's compacted metrics (all attempts'); None leaves them as they are.
    """
    assert status in FINAL_STATES, status
    with transaction(ws, write=True) as tx:
        row = tx.one(
            f"""UPDATE jobs SET status = ?, active_key = NULL, result = ?, error_type = ?, error_message = ?,
                   suggestion = ?, finished_at = ?, traceback = ?
                WHERE id = ? AND attempt = ? AND status IN {_in(ACTIVE_STATES)} RETURNING *""",
            [status, result, error_type, error_message, suggestion, finished_at, traceback, job_id, attempt],
        )
        if row is not None and metrics is not None:
            _replace_metrics(tx, job_id, list(metrics))
        return JobRecord.from_row(row)


def _replace_metrics(tx: Tx, job_id: str, metrics: list[tuple[int, str, float]]) -> None:
    tx.execute("DELETE FROM metrics WHERE job_id = ?", [job_id])
    if not metrics:
        return
    steps, names, values = (list(column) for column in zip(*metrics))
    tx.execute(
        "INSERT INTO metrics SELECT ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[]), unnest(?::DOUBLE[])",
        [job_id, steps, names, values],
    )


def request_cancel(ws: Workspace, job_id: str) -> JobRecord | None:
    """Cancel a queued job at once; flag a running one for its worker. Returns the row (None if unknown)."""
    with transaction(ws, write=True) as tx:
        row = tx.one(
            """UPDATE jobs SET status = 'cancelled', active_key = NULL, cancel_requested = TRUE,
                   error_type = 'cancelled', error_message = 'cancelled before it started', finished_at = ?
               WHERE id = ? AND status = 'queued' RETURNING *""",
            [utcnow(), job_id],
        )
        if row is None:
            row = tx.one(
                "UPDATE jobs SET cancel_requested = TRUE WHERE id = ? AND status = 'running' RETURNING *",
                [job_id],
            )
        return JobRecord.from_row(row or tx.one("SELECT * FROM jobs WHERE id = ?", [job_id]))


def delete_job(ws: Workspace, job_id: str) -> JobRecord | None:
    """Remove a finished job's rows; refuses an active job. Returns the deleted record."""
    with transaction(ws, write=True) as tx:
        row = JobRecord.from_row(tx.one(f"SELECT {LIST_COLUMNS} FROM jobs WHERE id = ?", [job_id]))
        if row is None:
            return None
        if row.active:
            raise JobStateError(
                f"job {job_id!r} is {row.status}; cancel it first (job.cancel() or `saekit cancel {job_id}`), "
                "then delete it"
            )
        tx.execute("DELETE FROM metrics WHERE job_id = ?", [job_id])
        tx.execute("DELETE FROM feature_labels WHERE analysis = ?", [job_id])
        tx.execute("DELETE FROM jobs WHERE id = ?", [job_id])
        return row


def current_job(ws: Workspace, job_id: str) -> JobRecord:
    """The job's row, which must exist (a job is never deleted while active)."""
    row = get_job(ws, job_id)
    if row is None:
        raise JobNotFoundError(f"job {job_id} is gone from the registry of {ws.path}")
    return row


def get_job(ws: Workspace, job_id: str) -> JobRecord | None:
    with transaction(ws) as tx:
        return JobRecord.from_row(tx.one("SELECT * FROM jobs WHERE id = ?", [job_id]))


def list_jobs(ws: Workspace, *, kind: str | None = None, status: str | Sequence[str] | None = None,
              limit: int | None = None, with_spec: bool = False) -> list[JobRecord]:
    """Jobs newest first, without their spec and result (``with_spec=True`` adds the spec)."""
    where, params = _filters(kind, status)
    sql = f"SELECT {LIST_COLUMNS}{', spec' if with_spec else ''} FROM jobs{where} ORDER BY created_at DESC, id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with transaction(ws) as tx:
        return [JobRecord.from_row(r) for r in tx.rows(sql, params)]


def _filters(kind: str | None, status: str | Sequence[str] | None) -> tuple[str, list]:
    where, params = [], []
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    if status is not None:
        states = [status] if isinstance(status, str) else list(status)
        where.append(f"status IN {_in(states)}")
    return (" WHERE " + " AND ".join(where)) if where else "", params


TABLE_COLUMNS = ("id", "kind", "name", "status", "attempt", "error_type", "created_at", "finished_at")


def job_table(ws: Workspace, *, kind: str | None = None, status: str | Sequence[str] | None = None,
              limit: int | None = None) -> tuple[list[tuple], list[JobRecord]]:
    """For listings, in one transaction: every matching job as a tuple of ``TABLE_COLUMNS`` (newest first),
    and the full rows (``LIST_COLUMNS``) of the active ones among them."""
    where, params = _filters(kind, status)
    order = " ORDER BY created_at DESC, id" + (f" LIMIT {int(limit)}" if limit is not None else "")
    with transaction(ws) as tx:
        records = tx.execute(f"SELECT {', '.join(TABLE_COLUMNS)} FROM jobs{where}{order}", params).fetchall()
        active_where = (where + " AND " if where else " WHERE ") + "active_key IS NOT NULL"
        active = [JobRecord.from_row(r) for r in tx.rows(f"SELECT {LIST_COLUMNS} FROM jobs{active_where}", params)]
    return records, active


@contextmanager
def jobs_locked(ws: Workspace) -> Iterator[list[JobRecord]]:
    """Every job (with its spec) while the registry's write lock is held for the ``with`` block: no job is
    created, changed or deleted until it ends. For what must decide and act at once (``saekit gc`` removing
    what no job owns); keep the block short, and never open the registry inside it."""
    with transaction(ws, write=True) as tx:
        yield [JobRecord.from_row(r) for r in tx.rows(f"SELECT {LIST_COLUMNS}, spec FROM jobs")]


def job_ids(ws: Workspace) -> list[str]:
    with transaction(ws) as tx:
        return [r["id"] for r in tx.rows("SELECT id FROM jobs")]


def get_jobs(ws: Workspace, job_ids: Sequence[str]) -> list[JobRecord]:
    """The full rows of several jobs in one transaction, in the order asked (unknown ids are left out)."""
    if not job_ids:
        return []
    with transaction(ws) as tx:
        found = {r["id"]: r for r in tx.rows("SELECT * FROM jobs WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                                             [list(job_ids)])}
    return [JobRecord.from_row(found[i]) for i in job_ids if i in found]


def get_metrics(ws: Workspace, job_id: str) -> list[tuple[int, str, float]]:
    """One job's compacted metrics as ``(step, name, value)`` rows, ordered by step and name."""
    frame = metric_frame(ws, job_id)
    return list(zip(frame["step"].tolist(), frame["name"].tolist(), frame["value"].tolist()))


def metric_table(ws: Workspace, job_id: str):
    """``(status, metrics)`` of one job in one transaction; ``metrics`` is a wide pandas DataFrame (index ``step``,
    a column per metric, sorted by name) for a finished job, None for an active one. None when no such job.
    The pivot runs in DuckDB: a million metric rows cost one pass, not a long DataFrame."""
    with transaction(ws) as tx:
        row = tx.one("SELECT status FROM jobs WHERE id = ?", [job_id])
        if row is None:
            return None
        if row["status"] in ACTIVE_STATES:
            return row["status"], None
        names = [r["name"] for r in tx.rows("SELECT DISTINCT name FROM metrics WHERE job_id = ? ORDER BY name", [job_id])]
        columns = "".join(f", first(value) FILTER (WHERE name = ?) AS \"{n.replace(chr(34), chr(34) * 2)}\"" for n in names)
        frame = tx.execute(f"SELECT step{columns} FROM metrics WHERE job_id = ? GROUP BY step ORDER BY step",
                           [*names, job_id]).df()
    return row["status"], frame.set_index("step").rename_axis(columns=None)


def metric_frame(ws: Workspace, job_ids: str | Sequence[str], names: Sequence[str] | None = None):
    """The compacted metrics of one job or several as a long pandas DataFrame (``job_id, step, name, value``),
    ordered by job, step and name; ``names`` keeps only those metrics (``sae0/fvu`` matches ``fvu``)."""
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    sql = "SELECT job_id, step, name, value FROM metrics WHERE job_id IN (SELECT unnest(?::VARCHAR[]))"
    params: list = [ids]
    if names is not None:
        sql += " AND regexp_extract(name, '[^/]*$') IN (SELECT unnest(?::VARCHAR[]))"  # the name after any saeN/
        params.append(list(names))
    with transaction(ws) as tx:
        return tx.execute(sql + " ORDER BY job_id, step, name", params).df()
