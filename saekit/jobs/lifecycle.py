"""Running one attempt of a job (``execute``) and reading a job's true state (``refresh``).

``execute`` is what a worker (or ``run()`` in the calling process) does: take the lease, move the job
``queued -> running``, call the kind's function with a ``JobContext``, write the ``end`` record to the
event log, then record the end and compact the metrics into the registry in one write.

``refresh`` is what every reader does: a queued or running job whose log holds its ``end`` record is
recorded as ended; one whose worker is gone (its lease is free) is marked ``failed``/``worker_lost``.
Nothing waits for a timeout where the lease can be trusted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import traceback
from typing import overload

import psutil

from saekit import registry
from saekit._faults import fault_point
from saekit._secrets import mask
from saekit.config import settings
from saekit.errors import (JobCancelled, JobStateError, RegistryCorruptError, RegistryError, RegistryVersionError,
                           StorageError)
from saekit.jobs.context import JobContext
from saekit.eventlog import EventWriter, LogState, events_path, read_all, read_last
from saekit.jobs.failures import SUGGESTIONS, classify
from saekit.jobs.kinds import get_kind
from saekit.jobs.lease import Lease, lease_is_held
from saekit.jobs.spec import normalize
from saekit.registry import JobRecord
from saekit.workspace import Workspace

log = logging.getLogger("saekit.jobs")

HOST = socket.gethostname()


def epoch(value: dt.datetime | None) -> float | None:
    """A registry timestamp (naive UTC) as epoch seconds."""
    return None if value is None else value.replace(tzinfo=dt.timezone.utc).timestamp()


def cancel_path(ws: Workspace, job_id: str):
    return ws.job_dir(job_id) / "cancel"


def log_tail(ws: Workspace, job_id: str, n_lines: int = 15) -> str:
    """The last lines of a background worker's log file ('' when there is none)."""
    try:
        with open(ws.log_path(job_id), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n_lines:])


class _Heartbeat(threading.Thread):
    def __init__(self, writer: EventWriter, interval: float):
        super().__init__(name="saekit-heartbeat", daemon=True)
        self._writer, self._interval, self._halt = writer, interval, threading.Event()

    def run(self) -> None:
        sampler = None
        while not self._halt.wait(self._interval):
            try:
                self._writer.write({"t": "heartbeat"})
            except (OSError, ValueError):  # the log was closed or its disk is gone: the lease still speaks
                return
            try:  # the worker's own CPU, RSS and GPU use, so a job's resource history outlives it
                if sampler is None:
                    from saekit.monitor.system import ProcessSampler

                    sampler = ProcessSampler()
                self._writer.write(sampler.sample())
            except (OSError, ValueError):
                return
            except Exception:  # noqa: BLE001 - sampling must never stop the heartbeat
                log.debug("resource sampling failed", exc_info=True)

    def stop(self) -> None:
        """Stop and wait, so that no heartbeat is written after the attempt's end (or to a closed log)."""
        self._halt.set()
        self.join()


# -- execute -------------------------------------------------------------------------------------

def execute(ws: Workspace, job_id: str, *, launcher: str = "inprocess", listeners=(), rank: int = 0,
            world_size: int = 1) -> JobRecord | None:
    """Run the queued attempt of ``job_id`` here, to its end. Returns the job's row afterwards.

    Returns without running anything when the job is not queued (it was cancelled, or another
    worker took it). On torchrun ranks other than 0 only the kind's function runs.
    """
    if rank != 0:
        return _execute_follower(ws, job_id, rank, world_size)
    job_dir = ws.dir("jobs", job_id)
    lease = Lease(job_dir)
    # a previous attempt's worker may still be exiting: wait for it rather than run beside it
    if not lease.acquire(timeout=settings().worker_start_timeout):
        raise JobStateError(f"job {job_id!r} is held by another live worker; see `saekit show {job_id}`")
    writer = None
    try:
        row = registry.get_job(ws, job_id)
        if row is None or row.status != "queued":
            return row
        attempt = row.attempt
        state = LogState().update(read_all(events_path(ws, job_id)))
        writer = EventWriter(events_path(ws, job_id))
        writer.write({"t": "start", "attempt": attempt, "pid": os.getpid(), "host": HOST, "launcher": launcher,
                      "resume": state.commit is not None})
        try:
            started = registry.transition(
                ws, job_id, attempt, ("queued",), "running", started_at=registry.utcnow(),
                worker_pid=os.getpid(), worker_host=HOST, launcher=launcher,
            )
            if started is None:  # cancelled (or taken) between our read and now
                current = registry.current_job(ws, job_id)
                writer.write({"t": "end", "attempt": attempt, "status": str(current.status), "result": None,
                              "error_type": current.error_type, "error_message": current.error_message,
                              "suggestion": None})
                return current
        except (RegistryError, StorageError) as exc:
            _try_write(writer, {"t": "event", "level": "warning",
                                "message": f"registry unreachable ({exc}); working on, recording the state later"})
        return _run_attempt(ws, row, attempt, state.commit, writer, listeners, launcher, world_size)
    finally:
        if writer is not None:
            writer.close()
        lease.release()


def _run_attempt(ws: Workspace, row: JobRecord, attempt: int, resume_point, writer: EventWriter, listeners,
                 launcher: str, world_size: int) -> JobRecord | None:
    job_id = row.id
    heartbeat = _Heartbeat(writer, settings().heartbeat_interval)
    heartbeat.start()
    result, ctx, trace = None, None, None
    error: tuple[str | None, str | None, str | None] = (None, None, None)
    interrupted: BaseException | None = None
    try:
        kind = get_kind(row.kind)
        spec = kind.parse(row.spec_dict)
        ctx = JobContext(ws, job_id, attempt, spec, writer=writer, resume_point=resume_point, listeners=listeners,
                         world_size=world_size)
        result = normalize(kind.fn(ctx, spec), "the job's result")
        status = "completed"
        fault_point("before_end", attempt)
    except JobCancelled as exc:
        status, error = "cancelled", ("cancelled", str(exc), None)
    except KeyboardInterrupt as exc:  # an interrupted kernel cancels its in-process job
        status, error, interrupted = "cancelled", ("cancelled", "interrupted (KeyboardInterrupt)", None), exc
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then classified
        status, error = "failed", classify(exc)
        trace = mask(traceback.format_exc(limit=20))
        # the failure itself may be a full disk: the end below is what must not be lost
        _try_write(writer, {"t": "event", "level": "error", "message": f"failed: {error[1]}",
                            "data": {"traceback": trace}})
        (log.debug if launcher == "inprocess" else log.error)("job %s failed:\n%s", job_id, traceback.format_exc())
        if isinstance(exc, SystemExit):
            interrupted = exc
    finally:
        heartbeat.stop()
    end = {"t": "end", "attempt": attempt, "status": status, "result": result, "error_type": error[0],
           "error_message": error[1], "suggestion": error[2], "traceback": trace}
    _write_end(writer, end)
    for listener in listeners:
        listener(end)
    recorded = _record_end(ws, job_id, end, writer)
    if status == "completed" and ctx is not None:
        _clean_up(job_id, ctx.cleanups)
    if interrupted is not None:
        raise interrupted
    return recorded


def _try_write(writer: EventWriter, record: dict) -> bool:
    """Append a record that may be lost (a warning) without failing; whether it was written."""
    try:
        writer.write(record)
        return True
    except (OSError, StorageError):
        return False


def _write_end(writer: EventWriter, end: dict) -> None:
    """Append the end record, waiting (up to ``registry_retry_for``) while the disk is full: the worker holds
    its lease meanwhile, so readers see it still running rather than lost."""
    deadline = time.monotonic() + settings().registry_retry_for
    delay = 0.2
    while True:
        try:
            writer.write({**end, "time": end.get("time", time.time())}, durable=True)
            return
        except StorageError:
            if time.monotonic() >= deadline:
                raise
            fault_point("end_waits_for_space")
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def _clean_up(job_id: str, cleanups) -> None:
    """What the job deferred until its end was on record (a failure here loses nothing a result needs)."""
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception:  # noqa: BLE001
            log.warning("job %s: a cleanup after its end failed", job_id, exc_info=True)


def _record_end(ws: Workspace, job_id: str, end: dict, writer: EventWriter | None) -> JobRecord | None:
    """Record an attempt's end in the registry, retrying while it does not answer.

    The end is already in the event log, so giving up loses nothing: the next reader records it.
    """
    deadline = time.monotonic() + (settings().registry_retry_for if writer is not None else 0)
    metrics = LogState().update(read_all(events_path(ws, job_id))).metric_rows()
    delay, warned = 0.1, False
    while True:
        try:
            row = registry.finish_job(
                ws, job_id, end["attempt"], end["status"],
                result=None if end.get("result") is None else json.dumps(end["result"]),
                error_type=end.get("error_type"), error_message=end.get("error_message"),
                suggestion=end.get("suggestion"),
                finished_at=dt.datetime.fromtimestamp(end.get("time", time.time()), dt.timezone.utc).replace(tzinfo=None),
                metrics=metrics, traceback=end.get("traceback"),
            )
            return row if row is not None else registry.get_job(ws, job_id)
        except (RegistryError, StorageError) as exc:
            if isinstance(exc, (RegistryCorruptError, RegistryVersionError)) or time.monotonic() >= deadline:
                # a damaged (or newer) registry does not heal by waiting: `saekit gc --rebuild` records the end
                (log.error if writer is not None else log.debug)(
                    "job %s ended %s but the registry did not answer (%s); its event log holds the end and the "
                    "next reader records it", job_id, end["status"], exc)
                return None
            if not warned and writer is not None:
                warned = _try_write(writer, {"t": "event", "level": "warning",
                                             "message": f"registry unreachable ({exc}); will record the end when it answers"})
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _execute_follower(ws: Workspace, job_id: str, rank: int, world_size: int) -> JobRecord | None:
    """A torchrun rank other than 0: run the function with a silent context."""
    row = registry.get_job(ws, job_id)
    if row is None or not row.active:
        return row
    kind = get_kind(row.kind)
    resume = LogState().update(read_all(events_path(ws, job_id))).commit
    ctx = JobContext(ws, job_id, row.attempt, kind.parse(row.spec_dict), writer=None, resume_point=resume, rank=rank,
                     world_size=world_size)
    try:
        kind.fn(ctx, ctx.spec)
    except JobCancelled:
        pass
    return row


# -- refresh -------------------------------------------------------------------------------------

def _end_of(ws: Workspace, row: JobRecord) -> dict | None:
    for record in reversed(read_last(events_path(ws, row.id))):
        if record.get("t") == "end" and record.get("attempt") == row.attempt:
            return record
        if record.get("t") == "start":
            return None
    return None


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def worker_alive(ws: Workspace, row: JobRecord) -> bool:
    """Whether a live process works on (or is about to take) the job's current attempt."""
    if settings().trust_leases and row.worker_host in (None, HOST):
        return lease_is_held(ws.job_dir(row.id))
    records = read_last(events_path(ws, row.id), 4096)
    last = records[-1].get("time") if records else None
    return last is not None and time.time() - last < settings().stale_after


def _never_started(ws: Workspace, row: JobRecord) -> str | None:
    """Why a queued job with no live worker will never start, or None when its launcher may still start it."""
    pid, host = row.worker_pid, row.worker_host
    if pid is not None and host in (None, HOST) and not _pid_alive(pid):
        return f"its {row.launcher or 'launching'} process (pid {pid}) exited before the job started"
    age = (registry.utcnow() - (row.queued_at or row.created_at or registry.utcnow())).total_seconds()
    if pid is None and age > settings().worker_start_timeout:
        return f"no worker took it within {settings().worker_start_timeout:.0f} s of being queued"
    return None


@overload
def refresh(ws: Workspace, row: JobRecord) -> JobRecord: ...


@overload
def refresh(ws: Workspace, row: JobRecord | None) -> JobRecord | None: ...


def refresh(ws: Workspace, row: JobRecord | None) -> JobRecord | None:
    """Return the job's record after recording what its event log and lease say happened."""
    if row is None or not row.active:
        return row
    end = _end_of(ws, row)
    if end is None:
        if worker_alive(ws, row):
            return row
        why = _never_started(ws, row) if row.status == "queued" else "its worker is gone (its lease is free)"
        if why is None:
            return row
        end = _end_of(ws, row)  # the worker may have ended between our two reads
    if end is None:
        tail = log_tail(ws, row.id)
        cancelled = row.cancel_requested
        end = {
            "t": "end", "attempt": row.attempt, "status": "cancelled" if cancelled else "failed",
            "result": None, "error_type": "cancelled" if cancelled else "worker_lost",
            "error_message": f"{why}" + (f"; last lines of its log:\n{tail}" if tail else ""),
            "suggestion": None if cancelled else SUGGESTIONS["worker_lost"], "time": time.time(),
        }
    recorded = _record_end(ws, row.id, end, None)
    if recorded is not None:
        return recorded
    # the registry cannot be written now (its disk is full, it is locked): the log still says how the job ended
    return row.replace(status=registry.Status(end["status"]), error_type=end.get("error_type"),
                       error_message=end.get("error_message"), suggestion=end.get("suggestion"),
                       result=None if end.get("result") is None else json.dumps(end["result"]),
                       traceback=end.get("traceback"))
