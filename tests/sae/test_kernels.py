"""The Triton kernels (run on the CPU by Triton's interpreter) give the sums embedding_bag gives, and the same
gradients; skipped where Triton is not installed (CI installs it with the dev extras)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import torch
    import saekit as sk
    from saekit.config import config
    from saekit.sae import kernels
    from saekit.sae.model import TrainingState
    from saekit.sae.sparse import Codes, _by_latent_sum, _by_row_sum

    assert kernels.usable(torch.zeros(1))
    torch.manual_seed(0)
    rows = torch.tensor([0, 0, 1, 3, 3, 3])  # row 2 has no entry
    codes = Codes(rows, torch.tensor([4, 1, 4, 0, 2, 5]), 4, 7)  # latents 3 and 6 have none
    table, weights = torch.randn(7, 1100), torch.randn(6)  # wider than one block of columns
    rows_table = torch.randn(4, 1100)
    sums = {}
    for choice in ("triton", "torch"):
        with config.set(sparse_kernels=choice):
            sums[choice] = (_by_row_sum(codes, table, weights), _by_latent_sum(codes, rows_table, weights))
    for a, b in zip(sums["triton"], sums["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    grads = {}
    for arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        for choice in ("triton", "torch"):
            torch.manual_seed(0)
            sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=24, d_sae=96, k=4, aux_k=8))
            with torch.no_grad():
                sae.b_dec.normal_()
            dead = torch.zeros(96, dtype=torch.bool)
            dead[:30] = True
            with config.set(sparse_kernels=choice):
                sae.training_forward(torch.randn(32, 24), TrainingState(dead=dead)).loss.backward()
            grads[choice] = {n: p.grad for n, p in sae.named_parameters()}
        for name in grads["torch"]:
            torch.testing.assert_close(grads["triton"][name], grads["torch"][name], rtol=1e-4, atol=1e-6, msg=name)
    print("same")
''')


def test_the_kernels_equal_embedding_bag_sums_and_gradients():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-3000:]
