"""Acceptance with real processes: background workers, kill -9, cancel from another process, races."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import saekit as sk
from saekit.jobs import submit
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path
from saekit.registry._lock import RegistryLock

PROCS = Path(__file__).resolve().parents[1] / "procs.py"


def helper(command, **args):
    return subprocess.Popen([sys.executable, str(PROCS), command, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def outputs(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def wait_for(predicate, timeout=30.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def work(ws, job_id):
    return [int(x) for x in (ws.job_dir(job_id) / "work.txt").read_text().split()]


def starts(ws, job_id):
    return [r for r in read_all(events_path(ws, job_id)) if r["t"] == "start"]


def test_eight_processes_starting_one_spec_run_it_once(ws):
    spec = {"n": 30, "delay": 0.01, "tag": "race"}
    at = time.time() + 2.0
    procs = [helper("start_same", ws=str(ws.path), spec=spec, at=at) for _ in range(8)]
    ids = {outputs(p)[0]["id"] for p in procs}
    assert len(ids) == 1
    (job_id,) = ids
    job = sk.job(job_id).wait(timeout=60)
    assert job.status == "completed"
    assert len(sk.jobs()) == 1
    assert len(starts(ws, job_id)) == 1  # one worker ran the work
    assert work(ws, job_id) == list(range(30))


def test_background_job_survives_its_starter(ws):
    proc = helper("start_and_exit", ws=str(ws.path), spec={"n": 40, "delay": 0.03})
    (out,) = outputs(proc)
    job = sk.job(out["id"])
    assert job.status in ("queued", "running")  # the starter is gone, the job is not
    job.wait(timeout=60)
    assert job.status == "completed"
    assert job.info()["finished_at"].timestamp() > out["exited_at"] - 1
    assert job.result()["pid"] != proc.pid and work(ws, job.id) == list(range(40))
    assert ws.log_path(job.id).exists()


def test_kill_9_is_seen_at_once_and_resume_continues(ws):
    job = submit("count", {"n": 150, "delay": 0.01, "commit_every": 10})
    wait_for(lambda: (job.progress or 0) >= 30)
    pid = job.info()["worker_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z")
    t = time.perf_counter()
    other = sk.job(job.id)  # any handle, any process
    assert other.status == "failed"
    assert time.perf_counter() - t < 30  # no timeout to wait out (a stale heartbeat would take 60 s)
    assert other.info()["error_type"] == "worker_lost"
    committed = [r["state"]["done"] for r in read_all(events_path(ws, job.id)) if r["t"] == "commit"][-1]
    assert committed >= 30
    job.resume()
    result = job.result(timeout=60)
    assert result["started_from"] == committed and job.attempt == 2
    assert work(ws, job.id) == list(range(150))  # nothing missing, nothing twice


def test_cancel_from_another_process_stops_the_job_at_its_next_step(ws):
    job = submit("count", {"n": 100000, "delay": 0.002, "commit_every": 50})
    wait_for(lambda: (job.progress or 0) > 0.2, timeout=120)
    subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(ws.path), "cancel", job.id],
                   check=True, capture_output=True)
    flagged = os.stat(ws.job_dir(job.id) / "cancel").st_mtime
    job.wait(timeout=120)
    assert job.status == "cancelled"
    after = [r for r in read_all(events_path(ws, job.id)) if r["t"] == "metric" and r["time"] > flagged + 0.01]
    assert len(after) <= 2  # the worker checks the flag at every step: at most the step under way finishes
    kept = work(ws, job.id)
    assert len(kept) > 50 and kept == list(range(len(kept)))  # partial results kept
    assert job.info()["cancel_requested"] is True


def test_worker_that_dies_before_its_lease_fails_the_job_at_once(ws, monkeypatch):
    from saekit.jobs import launchers

    monkeypatch.setattr(launchers, "worker_command", lambda *a, **k: [
        sys.executable, "-c", "import sys; print('cannot import the model zoo'); sys.exit(3)"])
    t = time.perf_counter()
    job = submit("count", {"n": 5})
    assert time.perf_counter() - t < 60  # at once, not after the 120 s start timeout
    info = job.info()
    assert info["status"] == "failed" and info["error_type"] == "worker_lost"
    assert "code 3" in info["error_message"] and "cannot import the model zoo" in info["error_message"]


def test_worker_keeps_working_while_the_registry_is_locked(ws, monkeypatch):
    monkeypatch.setenv("SAEKIT_LOCK_TIMEOUT", "0.3")
    job = submit("count", {"n": 40, "delay": 0.05})
    lock = RegistryLock(ws.registry_lock_path, write=True, timeout=5)
    def said(text):
        return any(text in str(r.get("message")) for r in read_all(events_path(ws, job.id)))

    with lock:  # nobody can read or write the registry until the job has ended and failed to record it
        deadline = time.monotonic() + 120  # a bound for a stuck worker, not a timing assumption
        while not said("will record the end when it answers"):
            assert time.monotonic() < deadline, "the worker stopped while the registry was locked"
            time.sleep(0.05)
        assert "end" in [r["t"] for r in read_all(events_path(ws, job.id))]
    job.wait(timeout=120)
    assert job.status == "completed" and work(ws, job.id) == list(range(40))
    warnings = [e["message"] for e in job.events() if e["level"] == "warning"]
    assert any("registry unreachable" in w for w in warnings)


def test_stale_heartbeat_marks_lost_where_leases_are_not_trusted(ws, monkeypatch):
    monkeypatch.setenv("SAEKIT_HEARTBEAT", "0.2")
    job = submit("count", {"n": 100000, "delay": 0.01})
    wait_for(lambda: job.status == "running")
    monkeypatch.setenv("SAEKIT_TRUST_LEASES", "0")
    monkeypatch.setenv("SAEKIT_STALE_AFTER", "5")  # 25 heartbeats: a busy machine does not miss them all
    assert sk.job(job.id).status == "running"
    pid = job.info()["worker_pid"]
    os.kill(pid, signal.SIGSTOP)  # frozen: lease held, no heartbeat
    try:
        wait_for(lambda: sk.job(job.id).status == "failed", timeout=120, every=0.2)
        assert sk.job(job.id).info()["error_type"] == "worker_lost"
    finally:
        os.kill(pid, signal.SIGKILL)  # also ends a stopped process


def test_torchrun_launcher_runs_ranks(ws):
    pytest.importorskip("torch")
    job = submit("allreduce", {"value": 1.5}, launcher="torchrun", nproc=2)
    assert job.result(timeout=120) == {"world_size": 2, "sum": 1.5 * 1 + 1.5 * 2}
    assert job.info()["launcher"] == "torchrun"
