"""What one training step asks of a GPU, counted on this CPU; prints JSON.

    python benchmarks/step_ops.py [--d-in 512] [--d-sae 8192] [--batch 1024]

At a small shape on a GPU (d 512 / 8192, batch 4096) a step is bound by launching its kernels, not by running
them: an H200 ran saekit's TopK step at 0.99x sparsify's speed with about 60 kernels a step (docs/gpu.md). A
host sync (a value read back, an output sized by the data) also makes the host wait for the device. Both can be
counted without a GPU: per architecture, for the step the trainer runs between logged ones (``_step_parts`` of
``gpu.py``: forward with ``TrainingState(dead=None, metrics=False)``, backward, the decoder constraint, fused
Adam, the dead-latent counter):

- ``ops``: PyTorch operators called at the top level (the profiler's ``aten::`` events not inside another);
- ``kernels``: of those, the ones that compute (views, detaches and reshapes launch nothing);
- ``syncs``: host syncs, counted by ``tests/simulated_cuda.py``'s ``counting_syncs``;
- ``cpu_ms_tiny``: the step's CPU time at d 64 / 512, batch 64, where the per-operator overhead is what is timed
  (the median of 50 steps; compare architectures within one run, not across runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

NO_KERNEL = {"aten::detach", "aten::slice", "aten::reshape", "aten::t", "aten::expand", "aten::view", "aten::squeeze",
             "aten::unsqueeze", "aten::select", "aten::as_strided", "aten::alias", "aten::_reshape_alias",
             "aten::permute", "aten::transpose", "aten::lift_fresh", "aten::empty", "aten::result_type", "aten::flatten",
             "aten::mT", "aten::type_as", "aten::detach_", "aten::_has_compatible_shallow_copy_type"}
ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk", "relu", "jumprelu")


def _step(arch: str, d_in: int, d_sae: int, batch: int):
    import torch

    import saekit as sk
    from gpu import _step_parts, _whole_step

    torch.manual_seed(0)
    extra = {"k": 32} if "topk" in arch else {}
    sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, **extra))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    step = _whole_step(*_step_parts(sae, opt, torch.randn(batch, d_in)))
    for _ in range(3):
        step()
    return step


def count(arch: str, d_in: int, d_sae: int, batch: int) -> dict:
    from simulated_cuda import counting_syncs
    from torch.profiler import ProfilerActivity, profile

    step = _step(arch, d_in, d_sae, batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    top = [e.name for e in prof.events() if e.name.startswith("aten::")
           and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    with counting_syncs() as seen:
        step()
    return {"ops": len(top), "kernels": sum(name not in NO_KERNEL for name in top), "syncs": len(seen),
            "sync_sites": sorted({f"{s} ({s.site.split('/saekit/')[-1]})" for s in seen})}


def cpu_ms(arch: str) -> float:
    step = _step(arch, 64, 512, 64)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    out = {"shape": {"d_in": args.d_in, "d_sae": args.d_sae, "batch": args.batch}}
    for arch in ARCHS:
        out[arch] = {**count(arch, args.d_in, args.d_sae, args.batch), "cpu_ms_tiny": cpu_ms(arch)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
