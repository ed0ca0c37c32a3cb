"""Job semantics in one process: idempotency, force, attempts, resume points, errors, deletion."""

import os

import pytest
from kinds_for_tests import dead_pid, queued_job

import saekit as sk
from saekit import registry
from saekit.errors import ConfigError, JobFailedError, JobNotFoundError, JobStateError
from saekit.jobs import submit
from saekit.jobs.events import EventTail, EventWriter, LogState, read_all, read_last
from saekit.jobs.lifecycle import events_path, refresh
from saekit.jobs.spec import normalize, spec_key


def _work(ws, job):
    return [int(x) for x in (ws.job_dir(job.id) / "work.txt").read_text().split()]


def test_in_process_job_runs_and_records_everything(ws):
    job = submit("count", {"n": 25}, background=False, progress=False)
    assert job.status == "completed"
    assert job.progress == 100.0
    assert job.result() == {"n": 25, "started_from": 0, "pid": os.getpid()}
    assert _work(ws, job) == list(range(25))
    metrics = job.metrics()
    assert list(metrics.index) == list(range(25)) and metrics.loc[24, "square"] == 576.0
    # metrics were compacted into the registry when the job ended
    assert len(registry.get_metrics(ws, job.id)) == 50
    assert [e["message"] for e in job.events()] == ["counted to 25"]
    kinds = [r["t"] for r in job.events(all_records=True)]
    assert kinds[:2] == ["submit", "start"] and kinds[-1] == "end" and "commit" in kinds


def test_same_spec_returns_the_completed_job_without_work(ws):
    first = submit("count", {"n": 5}, background=False, progress=False)
    n_records = len(first.events(all_records=True))
    again = submit("count", {"n": 5, "delay": 0.5}, background=False, progress=False)  # delay is volatile
    assert again.id == first.id and again.status == "completed"
    assert len(first.events(all_records=True)) == n_records
    forced = submit("count", {"n": 5}, background=False, force=True, progress=False)
    assert forced.id != first.id and forced.status == "completed"
    assert len(sk.jobs(kind="count")) == 2


def test_failed_job_resumes_from_its_last_commit(ws):
    job = submit("count", {"n": 40, "fail_at": 27, "commit_every": 10}, background=False, progress=False)
    assert job.status == "failed"
    info = job.info()
    assert info["error_type"] == "data" and "planned failure at 27" in info["error_message"]
    assert info["suggestion"] == "resume it"
    with pytest.raises(JobFailedError, match=r"\[data\] planned failure") as err:
        job.result()
    assert err.value.error_type == "data"
    # starting the same spec again is the same job's next attempt, resuming from the commit at 20
    again = submit("count", {"n": 40, "fail_at": 27, "commit_every": 10}, background=False, progress=False)
    assert again.id == job.id and again.attempt == 2 and again.status == "completed"
    assert again.result()["started_from"] == 20
    assert _work(ws, job) == list(range(40))


def test_resume_refuses_completed_and_errors_are_classified(ws):
    done = submit("count", {"n": 1}, background=False, progress=False)
    with pytest.raises(JobStateError, match="completed is final"):
        done.resume(background=False)
    oom = submit("oom", {}, background=False, progress=False)
    info = oom.info()
    assert info["error_type"] == "oom" and "batch_size" in info["suggestion"]
    boom = submit("boom", {"message": "kaput"}, background=False, progress=False)
    assert boom.info()["error_type"] == "unknown" and "RuntimeError: kaput" in boom.info()["error_message"]
    traceback = [e for e in boom.events() if e["level"] == "error"][0]["data"]["traceback"]
    assert "kaput" in traceback


def test_a_failure_carries_the_workers_traceback(ws):
    """The record and ``JobFailedError`` say where it failed (issue 25): the worker's traceback is on the row, on
    the error, and shown as the error's cause; a registry rebuilt from the logs keeps it."""
    boom = submit("boom", {"message": "kaput"}, progress=False)  # a background worker
    with pytest.raises(JobFailedError) as failure:
        boom.result(timeout=120)
    error = failure.value
    assert "kinds_for_tests.py" in error.traceback and "RuntimeError: kaput" in error.traceback
    assert "raised at " in str(error) and "kinds_for_tests.py:" in str(error) and "in boom" in str(error)
    assert type(error.__cause__).__name__ == "WorkerTraceback" and "kaput" in str(error.__cause__)
    assert boom.info()["traceback"] == error.traceback
    registry.rebuild_registry(ws)
    assert sk.job(boom.id).info()["traceback"] == error.traceback
    boom.resume(background=False, progress=False)  # a new attempt starts without the old one's traceback
    assert boom.info()["attempt"] == 2 and "kaput" in boom.info()["traceback"]


def test_a_new_process_finds_a_job_without_being_told_its_workspace(ws, tmp_path):
    """After a kernel restart, ``sk.job(id)`` finds a job of a workspace used lately (issue 28), and a job that
    is nowhere says in one line where it looked and how to choose another workspace."""
    import subprocess
    import sys

    job = submit("count", {"n": 2}, background=False, progress=False)
    script = ("import saekit as sk, sys\n"
              "job = sk.job(sys.argv[1])\n"
              "print(job.workspace.path, job.status)\n"
              "try:\n    sk.job('count-0badc0de')\n"
              "except sk.JobNotFoundError as e:\n    print('MISSING', e)\n")
    env = {**os.environ, "SAEKIT_HOME": str(tmp_path / "default")}  # a new kernel: the default workspace elsewhere
    done = subprocess.run([sys.executable, "-c", script, job.id], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found, missing = done.stdout.splitlines()
    assert found == f"{ws.path} completed"
    assert "no job 'count-0badc0de' in workspace" in missing and "sk.job(id, workspace=path)" in missing


def test_invalid_spec_is_refused_before_anything_is_written(ws):
    with pytest.raises(ConfigError, match="n=-3 is not a count"):
        submit("count", {"n": -3}, background=False)
    with pytest.raises(ConfigError, match=r"spec\['n'\] is a builtins.object"):
        submit("count", {"n": object()}, background=False)
    with pytest.raises(ConfigError, match="unknown job kind 'nope'.*count"):
        submit("nope", {}, background=False)
    assert not ws.path.exists()


def test_unknown_job_id_suggests_close_matches(ws):
    job = submit("count", {"n": 1}, background=False, progress=False)
    with pytest.raises(JobNotFoundError, match=f"did you mean '{job.id}'"):
        sk.job(job.id[:-1] + "x")
    assert sk.job(job.id[:9]).id == job.id  # a unique prefix re-attaches
    with pytest.raises(JobNotFoundError, match="sk.jobs"):
        sk.job("zzzzzz")


def test_delete_removes_rows_and_files_and_refuses_active(ws):
    job = submit("count", {"n": 3}, background=False, progress=False)
    folder = ws.job_dir(job.id)
    assert folder.is_dir()
    job.delete()
    assert not folder.exists() and registry.get_job(ws, job.id) is None
    queued_job(ws, "active-1", worker_pid=os.getpid(), launcher="inprocess")
    with pytest.raises(JobStateError, match="cancel"):
        sk.job("active-1").delete()


def test_queued_job_whose_launcher_died_is_reaped(ws):
    pid = dead_pid()
    queued_job(ws, "orphan-1", worker_pid=pid)
    job = sk.job("orphan-1")
    assert job.status == "failed"
    assert job.info()["error_type"] == "worker_lost" and f"pid {pid}" in job.info()["error_message"]


def test_cancel_of_queued_job_is_immediate(ws):
    queued_job(ws, "q-1", worker_pid=os.getpid(), launcher="inprocess")
    job = sk.job("q-1").cancel()
    assert job.status == "cancelled"
    with pytest.raises(JobFailedError, match="cancelled") as err:
        job.result()
    assert err.value.error_type == "cancelled"


def test_end_recorded_only_in_the_log_is_reconciled_by_a_reader(ws):
    queued_job(ws, "late-1", worker_pid=os.getpid(), launcher="inprocess")
    writer = EventWriter(events_path(ws, "late-1"))
    writer.write({"t": "start", "attempt": 1})
    writer.write({"t": "metric", "step": 3, "values": {"loss": 0.25}})
    writer.write({"t": "end", "attempt": 1, "status": "completed", "result": {"ok": True}})
    writer.close()
    fresh = refresh(ws, registry.get_job(ws, "late-1"))
    assert fresh.status == "completed" and fresh.result_value == {"ok": True}
    assert registry.get_metrics(ws, "late-1") == [(3, "loss", 0.25)]


def test_event_tail_reads_only_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []
    with open(path, "wb") as f:
        f.write(b'{"t":"progress","done":1}\n{"t":"progr')
    assert [r["done"] for r in tail.read()] == [1]
    assert tail.read() == []
    with open(path, "ab") as f:
        f.write(b'ess","done":2}\n')
    assert [r["done"] for r in tail.read()] == [2]
    assert [r["done"] for r in read_all(path)] == [1, 2]
    assert [r["done"] for r in read_last(path, max_bytes=30)] == [2]


def test_log_state_folds_attempts():
    state = LogState().update([
        {"t": "start", "attempt": 1}, {"t": "progress", "done": 5, "total": 10},
        {"t": "commit", "state": {"done": 5}}, {"t": "end", "attempt": 1, "status": "failed"},
        {"t": "start", "attempt": 2}, {"t": "metric", "step": 1, "values": {"a": 1.0}},
    ])
    assert state.attempt == 2 and state.end is None and state.progress is None
    assert state.commit == {"done": 5} and state.metric_rows() == [(1, "a", 1.0)]
    assert state.percent() is None


def test_spec_normalisation_and_key():
    assert normalize({"a": (1, 2.0), "b": None}) == {"a": [1, 2.0], "b": None}
    with pytest.raises(ConfigError, match="finite"):
        normalize({"lr": float("nan")})
    assert spec_key("k", {"a": 1, "b": 2}) == spec_key("k", {"b": 2, "a": 1})
    assert spec_key("k", {"a": 1, "d": 1}, volatile=("d",)) == spec_key("k", {"a": 1, "d": 9}, volatile=("d",))
    assert spec_key("k", {"a": 1}) != spec_key("j", {"a": 1})


def test_jobs_table_filters_and_renders(ws):
    submit("count", {"n": 2}, background=False, progress=False)
    submit("boom", {}, background=False, progress=False)
    table = sk.jobs()
    assert len(table) == 2 and {j.kind for j in table} == {"count", "boom"}
    assert sk.jobs(status="failed").ids == [j.id for j in table if j.kind == "boom"]
    assert len(sk.jobs(kind="count", status="completed")) == 1
    frame = table.to_pandas()
    assert list(frame["status"]).count("completed") == 1
    assert "failed" in table._repr_html_() and "count" in repr(table)
    with pytest.raises(ConfigError, match="not a job state"):
        sk.jobs(status="done")
