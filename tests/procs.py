"""Helper processes for the multi-process tests: `python procs.py COMMAND JSON_ARGS`.

Each prints JSON lines to stdout. (The registry contention workload lives in benchmarks/registry.py.)
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kinds_for_tests  # noqa: E402,F401

from saekit.jobs import submit  # noqa: E402


def emit(**record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def wait_until(t0):
    delay = t0 - time.time()
    if delay > 0:
        time.sleep(delay)


def start_same(a):
    """Submit one spec at a given moment; print the job id."""
    wait_until(a["at"])
    job = submit("count", a["spec"], workspace=a["ws"], background=True)
    emit(id=job.id)


def start_and_exit(a):
    job = submit("count", a["spec"], workspace=a["ws"], background=True)
    emit(id=job.id, exited_at=time.time())


if __name__ == "__main__":
    globals()[sys.argv[1]](json.loads(sys.argv[2]))
