"""The background worker: ``python -m saekit.jobs.worker JOB_ID --workspace PATH``.

Started detached (its own session) by ``start()``; under torchrun each rank runs it, and rank 0 is
the one that holds the lease and writes the event log.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from saekit import _logging
from saekit.jobs.lifecycle import execute
from saekit.workspace import Workspace


def _terminate(signum, frame):  # SIGTERM: end like an interrupted run, recording the job's end first
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saekit.jobs.worker", description=__doc__)
    parser.add_argument("job_id")
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args(argv)
    _logging.configure_worker()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a worker's log shows saekit's records, not bars
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    signal.signal(signal.SIGTERM, _terminate)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ or world_size > 1 else "background"
    row = execute(Workspace(args.workspace), args.job_id, launcher=launcher, rank=rank, world_size=world_size)
    if row is not None and rank == 0:
        logging.getLogger("saekit.jobs").info("job %s ended %s", args.job_id, row.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
