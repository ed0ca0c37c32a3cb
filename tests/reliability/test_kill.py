"""kill -9 at random points of a job (chosen by progress, not by the clock), each time seen at once and
resumed from the last commit: the work in the end is exactly the uninterrupted run's."""

import os
import random
import signal
import time

import pytest

import saekit as sk
from saekit.jobs import submit
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path


def _progress(ws, job_id) -> int:
    """Steps done, from the metric record each step writes (progress records are throttled: the last ones
    before the gate may never be written)."""
    steps = [r["step"] for r in read_all(events_path(ws, job_id)) if r.get("t") == "metric"]
    return int(steps[-1]) + 1 if steps else 0


@pytest.mark.heavy
def test_random_kills_resume_to_the_uninterrupted_result(ws, tmp_path):
    rng = random.Random(7)
    n = 400
    gate = tmp_path / "gate"  # the job cannot end before the last kill, however the machine schedules it
    job = submit("count", {"n": n, "delay": 0.005, "commit_every": 7, "gate": str(gate)})
    points = sorted(rng.sample(range(20, n - 1), 5))
    for point in points:
        deadline = time.monotonic() + 300  # a bound for a stuck worker, not a timing assumption
        while _progress(ws, job.id) < point:
            assert time.monotonic() < deadline, (f"no progress past {_progress(ws, job.id)} of {point} in 300 s; "
                                                 f"job {job.status}: {job.info().get('error_message')}")
            assert job.status in ("queued", "running"), f"job {job.status}: {job.info().get('error_message')}"
            time.sleep(0.005)
        os.kill(job.info()["worker_pid"], signal.SIGKILL)
        assert job.wait(timeout=120).status == "failed" and job.info()["error_type"] == "worker_lost"
        job.resume()
    gate.touch()
    job.wait(timeout=300)
    assert job.status == "completed"
    with open(ws.job_dir(job.id) / "work.txt") as f:
        assert [int(line) for line in f] == list(range(n))
    assert job.attempt == 6 and sk.job(job.id).metrics()["value"].tolist() == [float(i) for i in range(n)]
