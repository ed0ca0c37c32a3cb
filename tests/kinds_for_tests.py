"""Job kinds used by the tests. They do real (tiny) work with files, so runs can be compared."""

from __future__ import annotations

import os
import time

from saekit.errors import ConfigError, DataError
from saekit.jobs import job_kind


def _validate_count(spec: dict) -> dict:
    n = spec.get("n")
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"n={n!r} is not a count; give an integer >= 0")
    return {"n": n, "delay": float(spec.get("delay", 0.0)), "commit_every": int(spec.get("commit_every", 10)),
            "fail_at": spec.get("fail_at"), "tag": spec.get("tag"), "gate": spec.get("gate"),
            "burst": int(spec.get("burst", 0))}


@job_kind("count", validate=_validate_count, volatile=("delay",))
def count(ctx, spec):
    """Count to n, appending each number to work.txt; commit every `commit_every` steps. With `gate` (a path),
    wait for that file to exist before the last step: the job stays running until the test opens the gate."""
    out = ctx.dir / "work.txt"
    start = ctx.resume_point["done"] if ctx.resume_point else 0
    with open(out, "a") as f:
        f.truncate(_offset_for(out, start))
        for i in range(start, spec["n"]):
            if spec["fail_at"] is not None and i == spec["fail_at"] and ctx.attempt == 1:
                raise DataError(f"planned failure at {i}", suggestion="resume it")
            while spec["gate"] and i == spec["n"] - 1 and not os.path.exists(spec["gate"]):
                ctx.check_cancelled()
                time.sleep(0.01)
            if spec["burst"] and i == spec["n"] - 1:  # a large record at the last step (a full-disk test)
                ctx.event("x" * spec["burst"])
            f.write(f"{i}\n")
            ctx.metrics(i, value=float(i), square=float(i * i))
            ctx.progress(i + 1, spec["n"], unit="steps", phase="counting")
            if (i + 1) % spec["commit_every"] == 0:
                f.flush()
                os.fsync(f.fileno())
                ctx.commit({"done": i + 1})
            if spec["delay"]:
                time.sleep(spec["delay"])
    ctx.event(f"counted to {spec['n']}")
    return {"n": spec["n"], "started_from": start, "pid": os.getpid()}


def _offset_for(path, done: int) -> int:
    """Byte offset after the first `done` lines of work.txt (uncommitted lines are dropped)."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    return sum(len(line) + 1 for line in lines[:done])


@job_kind("boom")
def boom(ctx, spec):
    raise RuntimeError(spec.get("message", "boom"))


@job_kind("oom")
def oom(ctx, spec):
    raise MemoryError("could not allocate 80 GiB")


@job_kind("allreduce")
def allreduce(ctx, spec):
    """Each rank contributes value * (rank + 1); rank 0 returns the sum (torchrun launcher test)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        x = torch.tensor([spec["value"] * (ctx.rank + 1)])
        dist.all_reduce(x)
        ctx.progress(1, 1, unit="reductions")
        return {"world_size": ctx.world_size, "sum": float(x.item())}
    finally:
        dist.destroy_process_group()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def queued_job(ws, job_id: str, *, worker_pid: int, launcher: str = "background", key: str | None = None) -> dict:
    """A queued `count` job written straight into the registry, as if `worker_pid` were launching it."""
    from saekit import registry

    row, _ = registry.submit_job(ws, new_id=job_id, kind="count", key=key or f"key-{job_id}", name=None,
                                 spec='{"n": 1}', entry="kinds_for_tests", force=False,
                                 launcher=launcher, worker_pid=worker_pid)
    return row
