"""The analysis on a device: its numeric core (the streaming pass, the accumulator, the tables) run with the SAE's
codes and the accumulator on "cuda" (simulated on this CPU, with CUDA's rules about mixing devices: see
tests/simulated_cuda.py) gives the tables of the CPU run, byte for byte. Before, it failed as it did on an H200:
"indices should be either on cpu or on the same device as the indexed tensor (cpu)"."""

import sys
from types import SimpleNamespace
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import saekit as sk
from saekit.features.accumulate import Accumulator
from saekit.features.analysis import _Pass
from saekit.activations.source import StoreSource
from saekit.features.tables import examples_table, latents_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from planted import HOOK, planted_sae, tokens, common_token  # noqa: E402
from simulated_cuda import OnCuda, simulated_cuda  # noqa: E402


class _OnDevice:
    """An SAE whose codes come out on ``device`` (what a CUDA SAE gives), computed by the CPU SAE."""

    def __init__(self, sae, device):
        self.sae, self.device, self.d_sae = sae, device, sae.d_sae
        self.W_dec = sae.W_dec.detach().to(device)

    def encode_sparse(self, x):
        assert isinstance(x, OnCuda), "the pass hands the SAE rows on the SAE's device"
        with torch.no_grad():
            return tuple(t.to(self.device) for t in self.sae.encode_sparse(x.cpu()))


def _tables(sae, store, device):
    spec = SimpleNamespace(quantiles=4, per_quantile=3, neighbours=4)  # what the tables read of an AnalyzeSpec
    acc = Accumulator(sae.d_sae, top_k=8, reservoir=32, context=(4, 2), seed=0, device=device)
    stream = _Pass(sae, acc, 4, 2, 500, device)
    for rows in StoreSource(store, HOOK).blocks(stream.block, None, store.n_tokens):
        stream.feed(rows)
    stream.finish()
    vocab = [f"t{i}" for i in range(4096)]
    return latents_table(spec, sae, acc, None, vocab), examples_table(spec, acc)


def test_the_analysis_core_on_another_device_gives_the_cpu_tables(ws, tiny_lm, docs_file):
    toks = tokens(tiny_lm, docs_file, n=60)
    store = sk.extract(tiny_lm, toks, [HOOK], background=False, progress=False).result()
    sae = planted_sae(tiny_lm, common_token(toks, tiny_lm))
    cpu = _tables(sae, store, torch.device("cpu"))
    with simulated_cuda() as cuda:
        on_device = _tables(_OnDevice(sae, cuda), store, cuda)
    for a, b in zip(cpu, on_device):
        assert isinstance(b, pa.Table) and a.equals(b)


def test_the_simulator_fails_as_cuda_does():
    with simulated_cuda() as cuda:
        on = torch.arange(4).to(cuda)
        with pytest.raises(RuntimeError, match="indices should be either on cpu or on the same device"):
            torch.zeros(4)[on]
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            on + torch.ones(4)
        assert isinstance(on[torch.tensor([1, 2])], OnCuda) and not isinstance(on.cpu(), OnCuda)  # allowed
        assert isinstance(torch.zeros(2, device=on.device), OnCuda) and (on * torch.tensor(2)).device == cuda


def test_a_block_of_sparse_codes_reads_back_a_dozen_times():
    """The streaming pass on a GPU waits for the device only where it must: once a block's co-occurrence
    sample is taken, folding in a block of TopK codes reads back 12 values (the TopK selection, the sort
    check, the core's bounds, the document runs, and per buffer the candidates and the merge's groups,
    evicted and entering slots); it was 42 (a boolean mask per tensor)."""
    from simulated_cuda import counting_syncs

    from saekit.activations.source import Rows

    torch.manual_seed(0)
    n, block = 12_288, 2048
    sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=32, d_sae=512, k=16))
    acc = Accumulator(sae.d_sae, top_k=20, reservoir=100, context=(16, 4), cooccurrence_rows=4096)
    stream = _Pass(sae, acc, 16, 4, block, "cpu")
    x, tokens = torch.randn(n, 32), torch.randint(0, 500, (n,))
    docs, positions = torch.arange(n) // 128, torch.arange(n) % 128
    for lo in range(0, n, block):
        rows = Rows(x[lo:lo + block], tokens[lo:lo + block], docs[lo:lo + block], positions[lo:lo + block],
                    {"row": lo + block})
        with counting_syncs() as seen:
            stream.feed(rows)
        if lo >= 3 * block:  # the sample is taken, the buffers are full
            assert len(seen) == 12, [f"{s} at {s.site}" for s in seen]
