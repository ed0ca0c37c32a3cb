"""Whole-history operations on the catalog: final metrics across runs, moving job rows between workspaces
(export and import), metrics beside a compacted log, and a consistent copy of the file (backup).

Each function is one registry transaction (the backup holds the exclusive lock for its copy).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from saekit._fs import staging_path
from saekit.config import settings
from saekit.errors import ConfigError, JobStateError
from saekit.registry._db import _connect, _ensure_current, transaction
from saekit.registry._lock import RegistryLock
from saekit.registry.labels import insert_labels
from saekit.registry.rebuild import COLUMNS, _quoted
from saekit.workspace import Workspace


def final_metrics(ws: Workspace, job_ids: Sequence[str]):
    """Each job's metrics at their last step, as a DataFrame ``job_id, name, step, value``."""
    with transaction(ws) as tx:
        return tx.execute(
            "SELECT job_id, name, max(step) AS step, arg_max(value, step) AS value FROM metrics "
            "WHERE job_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY job_id, name ORDER BY job_id, name",
            [list(job_ids)]).df()


def job_specs(ws: Workspace, *, kind: str | None = None, status: Sequence[str] | None = None) -> list[dict]:
    """Rows (id, kind, name, status, spec, result, created_at, finished_at) of the matching jobs, oldest first."""
    where: list[str] = []
    params: list = []
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    if status is not None:
        where.append("status IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(status))
    sql = ("SELECT id, kind, name, status, spec, result, created_at, finished_at FROM jobs"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at, id")
    with transaction(ws) as tx:
        return tx.rows(sql, params)


def full_rows(ws: Workspace, job_ids: Sequence[str]) -> list[dict]:
    """Every column of these jobs' rows (what an export carries), in the order asked."""
    with transaction(ws) as tx:
        found = {r["id"]: r for r in tx.rows(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id IN "
                                             "(SELECT unnest(?::VARCHAR[]))", [list(job_ids)])}
    return [found[i] for i in job_ids if i in found]


def write_metrics(ws: Workspace, job_ids: Sequence[str], path: Path) -> int:
    """Write these jobs' compacted metrics to a Parquet file; returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with transaction(ws) as tx:
        tx.execute(f"COPY (SELECT job_id, step, name, value FROM metrics WHERE job_id IN "
                   f"(SELECT unnest(?::VARCHAR[])) ORDER BY job_id, step, name) TO '{_quoted(path)}' "
                   "(FORMAT parquet)", [list(job_ids)])
        counted = tx.one(f"SELECT count(*) AS n FROM read_parquet('{_quoted(path)}')")
        return counted["n"] if counted is not None else 0


def insert_finished_jobs(ws: Workspace, rows: list[dict], metrics_file: Path | None, *, labels: Sequence[dict] = (),
                         publish=None) -> None:
    """Insert finished jobs' rows (every column), their metrics from a Parquet file and their ``labels``, in one
    transaction; refuses (and inserts nothing) when an id is taken or a row is not finished. ``publish()``, when
    given, runs last inside the transaction (an import moves its files into place there): if it fails, nothing
    is inserted."""
    active = [r["id"] for r in rows if r["status"] in ("queued", "running")]
    if active:
        raise JobStateError(f"job(s) {active} are not finished; only finished jobs can be imported")
    ids = [r["id"] for r in rows]
    with transaction(ws, write=True) as tx:
        taken = [r["id"] for r in tx.rows("SELECT id FROM jobs WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids])]
        if taken:
            raise JobStateError(f"job id(s) {sorted(taken)} exist in {ws.path} already; nothing was imported",
                                suggestion="import into another workspace, or delete those jobs there first")
        for row in rows:
            tx.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                       [None if c == "active_key" else row.get(c) for c in COLUMNS])
        if metrics_file is not None:
            tx.execute(f"INSERT INTO metrics SELECT job_id, step, name, value FROM read_parquet('{_quoted(metrics_file)}') "
                       "WHERE job_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        insert_labels(tx, list(labels))
        if publish is not None:
            publish()


def backup_registry(ws: Workspace, target: str | os.PathLike) -> Path:
    """Copy registry.duckdb to ``target`` consistently while jobs run: under the exclusive registry lock the
    write-ahead log is checkpointed into the file, which is then copied (aside, then renamed into place)."""
    target = Path(target).expanduser().absolute()
    if target.exists():
        raise ConfigError(f"backup target {str(target)!r} exists; choose a new file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_path(target)
    with RegistryLock(ws.registry_lock_path, write=True, timeout=settings().lock_timeout):
        _ensure_current(ws)
        con = _connect(ws, read_only=False)
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
        shutil.copyfile(ws.registry_path, staged)
    os.replace(staged, target)
    return target
