"""Launchers: run an attempt here (``run_here``), in a detached worker process (``start_worker``), or
under torchrun with N data-parallel ranks (``start_worker(..., launcher="torchrun", nproc=N)``), on one node
or on several (``nnodes=M, rdzv_endpoint="host:port"``: this machine starts its torchrun, and each other
node joins the same attempt with ``saekit join JOB_ID``, which reads ``jobs/<id>/rendezvous.json``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

from saekit import registry
from saekit._fs import write_atomic
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


def check_nodes(launcher: str, nnodes, rdzv_endpoint) -> None:
    """``nnodes`` > 1 needs torchrun and a rendezvous endpoint ``host:port`` that every node reaches."""
    if not isinstance(nnodes, int) or isinstance(nnodes, bool) or nnodes < 1:
        raise ConfigError(f"nnodes={nnodes!r} must be a positive number of machines")
    if nnodes > 1:
        if launcher != "torchrun":
            raise ConfigError(f"nnodes={nnodes} needs launcher='torchrun' (not {launcher!r})")
        host, _, port = str(rdzv_endpoint or "").rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"rdzv_endpoint={rdzv_endpoint!r} must be 'host:port' on the first node, reachable "
                              "from every node (e.g. 'node0.cluster:29500')")


def rendezvous_path(ws: Workspace, job_id: str):
    return ws.job_dir(job_id) / "rendezvous.json"


def worker_command(ws: Workspace, job_id: str, launcher: str = "background", nproc: int = 1, *,
                   nnodes: int = 1, rdzv_endpoint: str | None = None, attempt: int = 1) -> list[str]:
    worker = ["-m", "saekit.jobs.worker", job_id, "--workspace", str(ws.path)]
    if launcher == "torchrun":
        if nproc < 1:
            raise ConfigError(f"nproc={nproc} is not a number of processes; give nproc >= 1")
        if nnodes > 1:  # torchrun's c10d rendezvous, one id per attempt so that a late node cannot join the next
            nodes = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                     f"--rdzv-id={job_id}-attempt-{attempt}"]
        else:
            nodes = ["--standalone"]
        return [sys.executable, "-m", "torch.distributed.run", *nodes, f"--nproc-per-node={nproc}", *worker]
    return [sys.executable, *worker]


def join_command(ws: Workspace, job_id: str) -> list[str]:
    """The torchrun command another node runs to join the current multi-node attempt of ``job_id``."""
    path = rendezvous_path(ws, job_id)
    row = registry.get_job(ws, job_id)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        plan = None
    if row is None or plan is None or plan["attempt"] != row.attempt or row.status not in ("queued", "running"):
        raise ConfigError(f"job {job_id} has no multi-node attempt to join"
                          + (f" (it is {row.status}, attempt {row.attempt})" if row is not None else ""),
                          suggestion="submit or resume it with launcher='torchrun', nnodes=N, rdzv_endpoint=... first")
    return worker_command(ws, job_id, "torchrun", plan["nproc"], nnodes=plan["nnodes"],
                          rdzv_endpoint=plan["rdzv_endpoint"], attempt=plan["attempt"])


def _reap(proc: subprocess.Popen) -> None:
    threading.Thread(target=proc.wait, name=f"saekit-reap-{proc.pid}", daemon=True).start()


def start_worker(ws: Workspace, row: registry.JobRecord, *, launcher: str = "background",
                 nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None) -> registry.JobRecord:
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
    command = worker_command(ws, job_id, launcher, nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, attempt=attempt)
    if nnodes > 1:  # what `saekit join` on the other nodes reads
        write_atomic(rendezvous_path(ws, job_id), json.dumps({"attempt": attempt, "nnodes": nnodes, "nproc": nproc,
                                                               "rdzv_endpoint": rdzv_endpoint}))
    try:
        with open(log_path, "ab") as log_file:
            log_file.write(f"--- attempt {attempt}: {' '.join(command)}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env,
            )
    except OSError as exc:
        return _fail_start(ws, row, f"the worker process could not be spawned: {exc}")
    _reap(proc)
    registry.transition(ws, job_id, attempt, ("queued",), "queued", worker_pid=proc.pid, launcher=launcher)
    if nnodes > 1:  # it starts once the other nodes have joined: nothing to wait for here
        log.warning("job %s waits for %d more node(s): run `saekit --workspace %s join %s` on each", job_id,
                    nnodes - 1, ws.path, job_id)
        return registry.current_job(ws, job_id)
    deadline = time.monotonic() + settings().worker_start_timeout
    while time.monotonic() < deadline:
        if any(r.get("t") == "start" and r.get("attempt") == attempt for r in tail.read()):
            return registry.current_job(ws, job_id)
        code = proc.poll()
        if code is not None:
            if any(r.get("t") == "start" and r.get("attempt") == attempt for r in tail.read()):
                return registry.current_job(ws, job_id)
            current = registry.current_job(ws, job_id)
            if current.status != "queued" or current.attempt != attempt:
                return current  # it ended (cancelled before it started, or another worker took it)
            return _fail_start(ws, row, f"the worker exited with code {code} before it took the job")
        time.sleep(0.02)
    log.warning("job %s: its worker has not started within %.0f s; it stays queued", job_id,
                settings().worker_start_timeout)
    return registry.current_job(ws, job_id)


def _fail_start(ws: Workspace, row: registry.JobRecord, why: str) -> registry.JobRecord:
    tail = log_tail(ws, row.id)
    message = why + (f"; last lines of its log:\n{tail}" if tail else "")
    failed = registry.finish_job(
        ws, row.id, row.attempt, "failed", result=None, error_type="worker_lost", error_message=message,
        suggestion=f"read {ws.log_path(row.id)}, fix the cause, then job.resume()", finished_at=registry.utcnow(),
    )
    return failed if failed is not None else registry.current_job(ws, row.id)
