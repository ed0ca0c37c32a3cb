"""The event logs are the truth, the registry their index: a deleted registry is rebuilt from the logs
(finished work is not redone, a running job is not lost), a damaged one is refused by what is true of it
and rebuilt on request, and reading works in a workspace this process cannot write."""

import json
import os
import subprocess
import sys
import warnings

import pytest

import saekit as sk
from saekit import registry
from saekit.errors import RegistryBusyError, RegistryCorruptError
from saekit.jobs import submit
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path


def _saekit(ws, *args):
    return subprocess.run([sys.executable, "-m", "saekit.cli", "--workspace", str(ws.path), *args],
                          capture_output=True, text=True, timeout=120)


def test_a_deleted_registry_is_rebuilt_and_nothing_is_redone(ws):
    done = submit("count", {"n": 5}, background=False, progress=False)
    failed = submit("count", {"n": 30, "fail_at": 12}, background=False, progress=False)
    assert failed.status == "failed"
    before = {j.id: (str(j.status), j.attempt) for j in sk.jobs()}
    metrics = done.metrics()
    os.remove(ws.registry_path)
    with pytest.warns(registry.RegistryRebuiltWarning, match="2 job"):
        after = {j.id: (str(j.status), j.attempt) for j in sk.jobs()}
    assert after == before
    assert done.result() == {"n": 5, "started_from": 0, "pid": os.getpid()}
    assert done.metrics().equals(metrics)
    again = submit("count", {"n": 5}, background=False, progress=False)
    assert again.id == done.id and again.status == "completed"  # not redone
    resumed = submit("count", {"n": 30, "fail_at": 12}, background=False, progress=False)
    assert resumed.id == failed.id and resumed.attempt == 2 and resumed.result()["started_from"] == 10


def test_a_job_running_when_the_registry_is_deleted_is_not_lost(ws, tmp_path):
    gate = tmp_path / "gate"
    job = submit("count", {"n": 20, "gate": str(gate)})
    while job.status != "running":
        pass
    os.remove(ws.registry_path)
    gate.touch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.RegistryRebuiltWarning)
        job.wait(timeout=120)
        assert job.status == "completed" and job.result()["n"] == 20
        assert [j.id for j in sk.jobs()] == [job.id]


def test_garbage_after_the_header_is_damage_not_a_lock(ws):
    submit("count", {"n": 2}, background=False, progress=False)
    data = bytearray(ws.registry_path.read_bytes())
    data[4096 * 3:4096 * 4] = os.urandom(4096)  # past the header: DuckDB's block checksum fails
    ws.registry_path.write_bytes(bytes(data))
    with pytest.raises(RegistryCorruptError, match="gc --rebuild"):  # was RegistryBusyError: "lock" in "block"
        sk.jobs()
    out = _saekit(ws, "gc", "--rebuild")
    assert out.returncode == 0 and "1 job(s) rebuilt" in out.stdout, out.stderr
    assert [str(j.status) for j in sk.jobs()] == ["completed"]
    assert any(p.name.startswith("registry.duckdb.damaged-") for p in ws.path.iterdir())


def test_a_registry_held_by_another_program_is_busy(ws):
    submit("count", {"n": 2}, background=False, progress=False)
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, sys, time; c = duckdb.connect({str(ws.registry_path)!r});"
                               " print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RegistryBusyError, match="held open by another program"):
            sk.jobs()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert len(sk.jobs()) == 1


def test_reading_works_in_a_workspace_that_cannot_be_written(ws, tmp_path):
    """Listed from a read-only mount of the workspace (a copy on a read-only filesystem, a shared archive)."""
    submit("count", {"n": 3}, background=False, progress=False)
    view = tmp_path / "read-only-view"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(ws.path), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here ({mounted.stderr.strip()}); needs root")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        with pytest.raises(OSError):
            (view / "probe").write_text("x")
        jobs = sk.jobs(workspace=view)  # was a raw OSError on the lock's turnstile file
        assert [str(j.status) for j in jobs] == ["completed"] and jobs[0].result()["n"] == 3
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_every_attempt_leaves_a_submit_record(ws):
    job = submit("count", {"n": 30, "fail_at": 12}, background=False, progress=False)
    job.resume(background=False, progress=False)
    submits = [r for r in read_all(events_path(ws, job.id)) if r["t"] == "submit"]
    assert [r["attempt"] for r in submits] == [1, 2] and submits[0]["kind"] == "count"
    assert submits[0]["spec"]["n"] == 30 and json.loads(registry.get_job(ws, job.id).spec) == submits[1]["spec"]
