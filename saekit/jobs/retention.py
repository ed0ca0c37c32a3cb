"""Retention: what ``saekit gc`` frees from finished jobs under the workspace's ``RetentionPolicy``.

``collect(ws)`` plans without touching anything (``saekit gc`` prints the plan); ``plan.apply()`` frees it
(``saekit gc --delete``). Per finished job, by the age of its end:

- the event log is *compacted* (heartbeats, resource samples, all commits but the last and all progress
  lines but the last are dropped) or *reduced* (only submit, start and end records, and a failed job's
  last commit, stay; its metrics move to ``metrics.parquet`` beside it, so a rebuilt registry has them,
  unless they are fewer bytes than that file would cost);
- the background worker's log file is deleted;
- a completed run's leftover checkpoints are deleted (the kind's ``disposable`` hook names them);
- files no job owns are deleted (``saekit.jobs.gc.orphan_files``).

Nothing a result or ``metrics()`` needs is removed: the registry keeps every metric, and stores, SAEs and
analyses are never planned. A log is rewritten under the job's lease (a worker that started in between
keeps its log), aside and then renamed, and only if it did not grow since it was read.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from saekit import registry
from saekit._fs import format_bytes, remove, staging_path
from saekit.eventlog import LogState, _encode, events_path, read_all
from saekit.errors import ConfigError
from saekit.jobs.gc import orphan_files, remove_orphans
from saekit.jobs.kinds import get_kind
from saekit.jobs.lease import Lease
from saekit.registry.rebuild import METRICS_FILE
from saekit.workspace import RetentionPolicy, Workspace

log = logging.getLogger("saekit.jobs")

COMPACT, REDUCE, WORKER_LOG, CHECKPOINT, ORPHAN = ("compact log", "reduce log", "delete worker log",
                                                   "delete checkpoint", "delete orphan")
MARK = "compacted"  # the record a rewritten log ends with: {"t": "compacted", "level": "compact" | "reduce"}
SMALL_METRICS = 4096  # bytes of metric lines that a reduced log keeps rather than writing a Parquet file


@dataclass(frozen=True)
class Item:
    action: str
    path: Path
    bytes: int  # what applying it frees (for a log: its size minus the rewritten size)
    job_id: str | None = None


def _moves_metrics(records: list[dict], level: str) -> bool:
    """Whether reducing this log moves its metrics to ``metrics.parquet``: only when there are more of them than
    a Parquet file's own overhead (a few KiB); fewer stay in the log."""
    return level == "reduce" and sum(len(_encode(r)) for r in records if r.get("t") == "metric") > SMALL_METRICS


def _kept(records: list[dict], level: str, status: str) -> list[dict]:
    """The records a compacted (or reduced) log keeps, in order, ending with the mark."""
    last = {t: max((i for i, r in enumerate(records) if r.get("t") == t), default=-1) for t in ("progress", "commit")}
    wanted = {"submit", "start", "end"} | (set() if level == "reduce" else {"event"})
    if not _moves_metrics(records, level):
        wanted.add("metric")
    kept = []
    for i, record in enumerate(records):
        kind = record.get("t")
        if kind == "commit" and status != "completed" and i == last["commit"]:
            kept.append(record)  # a failed or cancelled job resumes from it
        elif kind == "progress" and i == last["progress"] and level == "compact":
            kept.append(record)
        elif kind in wanted:
            kept.append(record)
    return kept + [{"t": MARK, "level": level, "time": records[-1].get("time") if records else None}]


def _level(records: list[dict]) -> str | None:
    marks = [r.get("level") for r in records if r.get("t") == MARK]
    return marks[-1] if marks else None


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _policy(ws: Workspace, policy) -> RetentionPolicy:
    if policy is None:
        return ws.retention()
    if isinstance(policy, RetentionPolicy):
        return policy
    if isinstance(policy, dict):
        return RetentionPolicy.from_dict(policy)
    raise ConfigError(f"policy={policy!r} must be a RetentionPolicy, a dict of its fields, or None (the workspace's)")


def _due(days: float | None, age_days: float) -> bool:
    return days is not None and age_days >= days


@dataclass
class Plan:
    """What retention would free; ``apply()`` frees it and returns the bytes freed per action."""

    workspace: Workspace
    policy: RetentionPolicy
    items: list[Item] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.items)

    def summary(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for item in self.items:
            entry = out.setdefault(item.action, {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += item.bytes
        return out

    def lines(self) -> list[str]:
        return [f"{item.action:<18} {format_bytes(item.bytes):>9}  {item.path}" for item in self.items]

    def __repr__(self) -> str:
        parts = ", ".join(f"{a}: {s['count']} ({format_bytes(s['bytes'])})" for a, s in self.summary().items()) or "nothing"
        return f"<retention plan for {self.workspace.path}: {parts}; {format_bytes(self.bytes)} in all>"

    def apply(self) -> dict[str, int]:
        freed: dict[str, int] = {}
        for item in self.items:
            if item.action == ORPHAN:
                continue
            try:
                done = _apply(self.workspace, item)
            except OSError as exc:
                log.warning("retention could not %s %s: %s", item.action, item.path, exc)
                continue
            if done is not None:
                freed[item.action] = freed.get(item.action, 0) + done
        orphans = [item for item in self.items if item.action == ORPHAN]
        if orphans:  # decided again together, under one hold of the registry's lock
            sizes = {item.path: _size(item.path) for item in orphans}
            removed = remove_orphans(self.workspace, list(sizes))
            if removed:
                freed[ORPHAN] = sum(sizes[p] for p in removed)
        return freed


def collect(ws: Workspace, policy: RetentionPolicy | dict | None = None, *, orphans: bool = True,
            now: dt.datetime | None = None) -> Plan:
    """Plan what ``policy`` (default: the workspace's, ``ws.retention()``) frees; nothing is touched."""
    policy = _policy(ws, policy)
    now = now or registry.utcnow()
    plan = Plan(ws, policy)
    for row in registry.list_jobs(ws, status=registry.FINAL_STATES):
        if row.finished_at is None:
            continue
        age = (now - row.finished_at).total_seconds() / 86400
        level = "reduce" if _due(policy.reduce_events_days, age) else "compact" if _due(policy.events_days, age) else None
        path = events_path(ws, row.id)
        if level is not None and path.exists():
            records = read_all(path)
            done = _level(records)
            if records and done != "reduce" and not (done == "compact" and level == "compact"):
                after = sum(len(_encode(r)) for r in _kept(records, level, row.status))
                plan.items.append(Item(REDUCE if level == "reduce" else COMPACT, path,
                                       max(0, _size(path) - after), row.id))
        worker_log = ws.log_path(row.id)
        if _due(policy.worker_logs_days, age) and worker_log.exists():
            plan.items.append(Item(WORKER_LOG, worker_log, _size(worker_log), row.id))
        if policy.checkpoints and row.status == "completed":
            try:
                kind = get_kind(row.kind)
            except ConfigError:
                continue
            for leftover in (kind.disposable(ws, row) if kind.disposable else []):
                plan.items.append(Item(CHECKPOINT, Path(leftover), _size(Path(leftover)), row.id))
    if orphans:
        plan.items += [Item(ORPHAN, p, _size(p)) for p in orphan_files(ws)]
    return plan


def _apply(ws: Workspace, item: Item) -> int | None:
    """Free one item; the bytes freed, or None when it was skipped (its job runs again, the log grew)."""
    if item.action in (COMPACT, REDUCE):
        return _rewrite_log(ws, item)
    before = _size(item.path)
    if item.job_id is not None:
        row = registry.get_job(ws, item.job_id)
        if row is None or row.active:  # resumed (or deleted) since the plan was made
            return None
    remove(item.path)
    return before


def _rewrite_log(ws: Workspace, item: Item) -> int | None:
    if item.job_id is None:  # a log always belongs to a job
        raise ValueError(f"{item.path} is planned as a job's log but names no job")
    lease = Lease(ws.job_dir(item.job_id))
    if not lease.acquire(0):
        return None  # a worker holds it: the job runs again
    try:
        row = registry.get_job(ws, item.job_id)
        if row is None or row.active:
            return None
        path = item.path
        size = _size(path)
        records = read_all(path)
        level = "reduce" if item.action == REDUCE else "compact"
        kept_metrics = ws.job_dir(item.job_id) / METRICS_FILE
        if _moves_metrics(records, level):
            _keep_metrics(item.job_id, records, kept_metrics)
        staged = staging_path(path)
        staged.write_bytes(b"".join(_encode(r) for r in _kept(records, level, row.status)))
        if _size(path) != size:  # a submit was appended since the read: leave the log whole
            staged.unlink()
            return None
        os.replace(staged, path)
        return size - _size(path) - _size(kept_metrics)
    finally:
        lease.release()


def _keep_metrics(job_id: str, records: list[dict], target: Path) -> None:
    """Before a log loses its metric lines, write them to ``metrics.parquet`` beside it (a rebuild reads it). The
    registry holds them already: a job's end compacts its log's metrics into it, and so does a rebuild."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = LogState().update(records).metric_rows()
    table = pa.table({"job_id": pa.array([job_id] * len(rows), pa.string()),
                      "step": pa.array([r[0] for r in rows], pa.int64()),
                      "name": pa.array([r[1] for r in rows], pa.string()),
                      "value": pa.array([r[2] for r in rows], pa.float64())})
    staged = staging_path(target)
    pq.write_table(table, staged)
    os.replace(staged, target)
