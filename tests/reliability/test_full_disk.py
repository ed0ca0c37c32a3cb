"""A full disk under the workspace (a small tmpfs, mounted as root; skipped with the reason otherwise): the
job fails with a clean StorageError, its event log holds whole lines only, readers never see a raw DuckDB
error, and the end is recorded once the space returns."""

import os
import subprocess
import time
import uuid

import pytest

import saekit as sk
from saekit.eventlog import EventWriter, read_all
from saekit.errors import StorageError
from saekit.jobs import submit
from saekit.jobs.lifecycle import events_path


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs ({done.stderr.strip() or 'not root'}); the full-disk tests need root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder):
    filler = folder / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass
    return filler


def test_the_event_writer_keeps_whole_lines_on_a_full_disk(small_disk):
    writer = EventWriter(small_disk / "events.jsonl")
    writer.write({"t": "event", "message": "before"})
    filler = _fill(small_disk)
    with pytest.raises(StorageError, match="is full"):
        for i in range(10_000):
            writer.write({"t": "event", "message": "x" * 3000, "i": i})
    os.remove(filler)
    writer.write({"t": "event", "message": "after"})
    writer.close()
    records = read_all(small_disk / "events.jsonl")
    assert records[0]["message"] == "before" and records[-1]["message"] == "after"
    assert all(set(r) >= {"t", "time"} for r in records)
    lines = [line for line in (small_disk / "events.jsonl").read_bytes().split(b"\n") if line.strip()]
    assert len(lines) == len(records)  # the line cut by the full disk was taken back: no torn line is left


def test_a_read_only_workspace_is_a_saekit_error_never_a_raw_os_error(small_disk, tmp_path):
    ws = sk.Workspace(small_disk / "ws")
    job = submit("count", {"n": 2}, workspace=ws, background=False, progress=False)
    view = tmp_path / "read-only"  # the same workspace, mounted read-only
    view.mkdir()
    for args in (["--bind", str(ws.path), str(view)], ["-o", "remount,bind,ro", str(view)]):
        done = subprocess.run(["mount", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    try:
        frozen = sk.Workspace(view)
        assert [j.id for j in sk.jobs(workspace=frozen)] == [job.id]  # reading works
        assert sk.job(job.id, workspace=frozen).result()["n"] == 2
        with pytest.raises(StorageError, match="cannot append to the event log"):
            EventWriter(frozen.job_dir(job.id) / "events.jsonl")
        with pytest.raises(sk.SaekitError):
            submit("count", {"n": 3}, workspace=frozen, background=False, progress=False)
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_job_on_a_full_disk_fails_cleanly_and_records_its_end_when_space_returns(small_disk, tmp_path, monkeypatch):
    ws = sk.set_workspace(small_disk / "ws")
    monkeypatch.setenv("SAEKIT_HOME", str(ws.path))
    trace, gate = tmp_path / "trace", tmp_path / "gate"  # signals on another disk
    trace.mkdir()
    monkeypatch.setenv("SAEKIT_TRACE_DIR", str(trace))
    job = submit("count", {"n": 50, "gate": str(gate), "burst": 2**20})
    deadline = time.monotonic() + 120  # bounds for a stuck worker, not timing assumptions
    while job.status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    log = events_path(ws, job.id)
    with open(log, "ab") as f:  # newlines (skipped by readers) up to a page boundary: its next append needs a page
        f.write(b"\n" * (-log.stat().st_size % 4096))
    filler = _fill(small_disk)
    gate.touch()  # the job's last step writes: on a full disk
    try:
        while not (trace / "end_waits_for_space").exists():  # it failed, and waits to write its end
            assert time.monotonic() < deadline, "the worker never reached its end"
            assert str(job.status) == "running"  # readers see it running (its lease is held), no raw error
            time.sleep(0.05)
    finally:
        os.remove(filler)
    job.wait(timeout=180)
    info = job.info()
    assert info["status"] == "failed" and info["error_type"] == "data"
    assert "is full" in info["error_message"] or "No space left" in info["error_message"]
    records = read_all(events_path(ws, job.id))
    assert any(r["t"] == "end" for r in records)
    lines = [line for line in events_path(ws, job.id).read_bytes().split(b"\n") if line]
    assert len(records) >= len(lines) - 1  # at most one line was cut, and only it is lost
