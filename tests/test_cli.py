"""The `saekit` command, run as a real subprocess against a real workspace."""

import signal
import subprocess
import sys
import time

from kinds_for_tests import dead_pid, queued_job

import saekit as sk
from saekit import registry
from saekit.jobs import submit


def saekit(ws, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(ws.path), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_jobs_show_and_errors(ws):
    done = submit("count", {"n": 12}, background=False, progress=False)
    failed = submit("boom", {"message": "kaput"}, background=False, progress=False)
    out = saekit(ws, "jobs")
    assert out.returncode == 0
    assert done.id in out.stdout and failed.id in out.stdout and "completed" in out.stdout
    only_failed = saekit(ws, "jobs", "--status", "failed").stdout
    assert failed.id in only_failed and done.id not in only_failed
    show = saekit(ws, "show", done.id[:10]).stdout  # a unique prefix is enough
    assert "status     completed" in show and '"n": 12' in show and "value=11" in show and "100%" in show
    show_failed = saekit(ws, "show", failed.id).stdout
    assert "RuntimeError: kaput" in show_failed and "Traceback" in show_failed
    missing = saekit(ws, "show", "nope-123")
    assert missing.returncode == 2 and "JobNotFoundError" in missing.stderr


def test_cancel_resume_delete(ws):
    job = submit("count", {"n": 100000, "delay": 0.002, "commit_every": 20})
    deadline = time.monotonic() + 30
    while (job.progress or 0) <= 0.05 and time.monotonic() < deadline:
        time.sleep(0.05)
    out = saekit(ws, "cancel", job.id, "--wait", "10")
    assert out.returncode == 0 and "cancelled" in out.stdout
    refused = saekit(ws, "delete", "nope")
    assert refused.returncode == 2
    resumed = saekit(ws, "resume", job.id)
    assert resumed.returncode == 0 and "attempt 2" in resumed.stdout
    assert job.status == "running"
    job.cancel().wait(timeout=120)
    deleted = saekit(ws, "delete", job.id)
    assert deleted.returncode == 0 and not ws.job_dir(job.id).exists()
    assert registry.get_job(ws, job.id) is None


def test_gc_reaps_lost_jobs_and_lists_orphans(ws):
    queued_job(ws, "lost-1", worker_pid=dead_pid())
    (ws.dir("jobs", "ghost-1") / "events.jsonl").write_text("")
    (ws.dir("logs") / "ghost-2.log").write_text("old log")
    (ws.dir("activations", "extract-ghost.zarr") / "zarr.json").write_text("{}")
    (ws.dir("saes", "train-ghost", "final") / "cfg.json").write_text("{}")
    out = saekit(ws, "gc").stdout
    assert "reaped lost-1: queued -> failed" in out
    assert "orphan" in out and "ghost-1" in out and "ghost-2.log" in out and "extract-ghost.zarr" in out
    assert "saes/train-ghost" in out
    assert ws.job_dir("ghost-1").exists()
    saekit(ws, "gc", "--delete")
    assert not ws.job_dir("ghost-1").exists() and not (ws.path / "logs" / "ghost-2.log").exists()
    assert not (ws.path / "activations" / "extract-ghost.zarr").exists() and not (ws.path / "saes" / "train-ghost").exists()
    assert sk.job("lost-1").status == "failed"


def test_jobs_watch_refreshes_until_interrupted(ws):
    job = submit("count", {"n": 200, "delay": 0.01})
    proc = subprocess.Popen([sys.executable, "-m", "saekit.cli", "--workspace", str(ws.path), "jobs", "--watch",
                             "--interval", "0.3"], stdout=subprocess.PIPE, text=True)
    seen, refreshes = [], 0
    while refreshes < 3 or not any("steps" in line for line in seen):  # counted, not timed
        line = proc.stdout.readline()
        assert line, "the watch ended by itself"
        seen.append(line)
        refreshes += "saekit jobs in" in line
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 0
    assert out.count("saekit jobs in") >= 3 and job.id in out
    assert "steps" in out  # a live text progress bar of the running job
    job.wait(timeout=120)
