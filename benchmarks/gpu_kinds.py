"""The job kinds of ``gpu_check.py``, in a module of their own: a background worker imports them by this name
(defined in the script itself they were registered twice, as ``__main__`` and as ``gpu_check``)."""

from __future__ import annotations

import os
import time

from saekit.jobs import job_kind


@job_kind("gpu_hold")
def gpu_hold(ctx, spec):
    """Hold a GPU allocation for a while, reporting progress (so pynvml can be read meanwhile)."""
    import torch

    x = torch.ones(spec["mib"] * 2**18, device="cuda")  # float32: MiB * 2**18 elements
    for i in range(spec["seconds"] * 10):
        ctx.progress(i + 1, spec["seconds"] * 10, unit="ticks")
        time.sleep(0.1)
    return {"sum": float(x.sum().item()), "device": str(x.device), "pid": os.getpid()}


@job_kind("gpu_oom")
def gpu_oom(ctx, spec):
    import torch

    torch.empty(int(spec["gib"] * 2**30), dtype=torch.uint8, device="cuda")
    return {}
