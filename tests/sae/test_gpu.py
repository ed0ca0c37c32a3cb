"""Training on CUDA (skipped without a GPU; `benchmarks/gpu_check.py train` runs the same paths with numbers)."""

import pytest
import torch
from data_for_tests import quick

import saekit as sk

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_trains_on_the_gpu_with_float32_parameters(ws, small_store, arch):
    extra = {"k": 2} if arch != "jumprelu" else {}
    job = sk.train(small_store, "toy", sk.SAEConfig(arch=arch, d_sae=32, **extra), quick(device="cuda"),
                   background=False, progress=False)
    sae = job.result()
    assert all(p.dtype == torch.float32 for p in sae.parameters())
    evaluation = job.info()["result"]["saes"][0]["eval"]
    assert evaluation["fvu"] < 1 and job.metrics()["fvu"].dropna().iloc[-1] < job.metrics()["fvu"].dropna().iloc[0]
    cpu = sk.train(small_store, "toy", sk.SAEConfig(arch=arch, d_sae=32, **extra), quick(device="cpu"),
                   background=False, progress=False)
    assert abs(cpu.info()["result"]["saes"][0]["eval"]["fvu"] - evaluation["fvu"]) < 0.05
