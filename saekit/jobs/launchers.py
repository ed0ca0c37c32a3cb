"""Launchers: run an attempt here (``run_here``), in a detached worker process (``start_worker``), or
under torchrun with N data-parallel ranks (``start_worker(..., launcher="torchrun", nproc=N)``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from saekit import registry
from saekit._trust import worker_environment
from saekit.config import settings
from saekit.errors import ConfigError
from saekit.jobs.events import EventTail
from saekit.jobs.lifecycle import events_path, execute, log_tail
from saekit.jobs.textbar import TextProgress
from saekit.workspace import Workspace

log = logging.getLogger("saekit.jobs")

LAUNCHERS = ("inprocess", "background", "torchrun")


def run_here(ws: Workspace, job_id: str, *, listeners=None) -> registry.JobRecord | None:
    """Run the queued attempt in this process, blocking; ``listeners`` see each record (default: a text
    progress bar on stderr)."""
    if listeners is None:
        listeners = (TextProgress(job_id).update,)
    return execute(ws, job_id, launcher="inprocess", listeners=listeners)


def worker_command(ws: Workspace, job_id: str, launcher: str = "background", nproc: int = 1) -> list[str]:
    worker = ["-m", "saekit.jobs.worker", job_id, "--workspace", str(ws.path)]
    if launcher == "torchrun":
        if nproc < 1:
            raise ConfigError(f"nproc={nproc} is not a number of processes; give nproc >= 1")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *worker]
    return [sys.executable, *worker]


def _reap(proc: subprocess.Popen) -> None:
    threading.Thread(target=proc.wait, name=f"saekit-reap-{proc.pid}", daemon=True).start()


def start_worker(ws: Workspace, row: registry.JobRecord, *, launcher: str = "background",
                 nproc: int = 1) -> registry.JobRecord:
    """Spawn a detached worker for the queued attempt of ``row`` and wait until it has taken the job.

    The worker runs in its own session (it outlives this process) and logs to ``logs/<job_id>.log``.
    A worker that cannot be spawned, or exits before it takes its lease, fails the job at once with
    the reason and its log's tail.
    """
    job_id, attempt = row.id, row.attempt
    ws.dir("jobs", job_id)
    log_path = ws.dir("logs") / f"{job_id}.log"
    tail = EventTail(events_path(ws, job_id), from_end=True)
    env = worker_environment(dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        with open(log_path, "ab") as log_file:
            log_file.write(f"--- attempt {attempt}: {' '.join(worker_command(ws, job_id, launcher, nproc))}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                worker_command(ws, job_id, launcher, nproc), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env,
            )
    except OSError as exc:
        return _fail_start(ws, row, f"the worker process could not be spawned: {exc}")
    _reap(proc)
    registry.transition(ws, job_id, attempt, ("queued",), "queued", worker_pid=proc.pid, launcher=launcher)
    deadline = time.monotonic() + settings().worker_start_timeout
    while time.monotonic() < deadline:
        if any(r.get("t") == "start" and r.get("attempt") == attempt for r in tail.read()):
            return registry.get_job(ws, job_id)
        code = proc.poll()
        if code is not None:
            if any(r.get("t") == "start" and r.get("attempt") == attempt for r in tail.read()):
                return registry.get_job(ws, job_id)
            current = registry.get_job(ws, job_id)
            if current.status != "queued" or current.attempt != attempt:
                return current  # it ended (cancelled before it started, or another worker took it)
            return _fail_start(ws, row, f"the worker exited with code {code} before it took the job")
        time.sleep(0.02)
    log.warning("job %s: its worker has not started within %.0f s; it stays queued", job_id,
                settings().worker_start_timeout)
    return registry.get_job(ws, job_id)


def _fail_start(ws: Workspace, row: registry.JobRecord, why: str) -> registry.JobRecord:
    tail = log_tail(ws, row.id)
    message = why + (f"; last lines of its log:\n{tail}" if tail else "")
    failed = registry.finish_job(
        ws, row.id, row.attempt, "failed", result=None, error_type="worker_lost", error_message=message,
        suggestion=f"read {ws.log_path(row.id)}, fix the cause, then job.resume()", finished_at=registry.utcnow(),
    )
    return failed if failed is not None else registry.get_job(ws, row.id)
