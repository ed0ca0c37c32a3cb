"""Every GPU figure of the GPU issue from one command, in one process; prints JSON (one object per section, then
a summary). On one H200 it is meant to run in under 5 minutes:

    python benchmarks/gpu.py                 # on a machine with CUDA
    python benchmarks/gpu.py --smoke         # tiny shapes on the CPU: checks that every section runs

Sections (each reports its own failure; the others go on):

- ``train_{small,large}``: TopK training at d_in 512 / d_sae 8192 / k 32 and d_in 2304 / d_sae 65536 / k 64, batch
  4096, on the same random rows: ``sk.train`` with its defaults, with TF32 allowed, and with the bf16 encoder;
  EleutherAI sparsify's SparseCoder with its trainer's step (TF32 on, as its ``fit()`` sets it) when it imports;
  a hand-written loop; and the forward encoder matmul alone (fp32, TF32, bf16: the bound). Tokens/s, held-out
  FVU after the same steps, and the ratios.
- ``profile_{large,small}``: where one TopK step's time goes (per phase and per kernel), sparsify's step beside it,
  and the step replayed as a CUDA graph against the same step run eagerly (``saekit_graphed``: what graphs would
  save; the trainer does not capture yet).
- ``extract_{smollm2,llama1b}``: random-weight Llamas of SmolLM2-135M's shape (hook ``blocks.15.resid_post``) and
  Llama-3.2-1B's (``blocks.8.resid_post``), bfloat16: ``sk.extract`` against the bare forward to the hook over
  the same sequences.
- ``analyze``: ``sk.analyze`` on the GPU from a store and from ``(lm, token_store)``, against a bare sparse encode
  of the same rows; and against the CPU analysis of the same rows (the same top-k rows, statistics to
  tolerance).
- ``steer``: greedy generation with the KV cache, unsteered against ``add`` and ``clamp``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS: dict[str, dict] = {}
SAVE_TO: list[Path] = []  # --json PATH: the results so far, rewritten after each section


def section(name: str, fn, *args) -> None:
    start = time.perf_counter()
    try:
        out = {"ok": True, **fn(*args)}
    except Exception as exc:  # noqa: BLE001 - a failed section is reported, the others go on
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    out["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS[name] = out
    print(json.dumps({"section": name, **out}, default=str), flush=True)
    for path in SAVE_TO:
        path.write_text(json.dumps(RESULTS, default=str, indent=1))


def _saekit_config():
    from saekit.config import config

    return config


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, device, repeats: int = 3) -> float:
    """The best of ``repeats`` timed calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


# -- training ------------------------------------------------------------------------------------------------

def _tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _fvu(recon, x) -> float:
    return float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def train_section(device: str, d_in: int, d_sae: int, k: int, batch: int, steps: int) -> dict:
    import torch

    import saekit as sk

    warmup = 3
    g = torch.Generator().manual_seed(0)
    rows = batch * (steps + warmup + 1)
    data = torch.randn(rows, d_in, generator=g)
    held = data[-batch:].to(device)
    out: dict = {"shape": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "steps": steps}}

    x, w = torch.randn(batch, d_in, device=device), torch.randn(d_sae, d_in, device=device)
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        _tf32(tf32)
        a, b = x.to(dtype), w.to(dtype)
        out[f"matmul_bound_tokens_per_s_{name}"] = round(batch / _best(lambda: a @ b.t(), device))
    _tf32(False)
    del x, w

    def loop(step, params) -> float:
        for i in range(warmup):
            step(i)
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        _sync(device)
        return steps * batch / (time.perf_counter() - start)

    on_device = data.to(device)

    # the hand loop: encoder, top-k, dense scatter, decoder matmul, MSE, backward, Adam
    torch.manual_seed(0)
    w_enc = (torch.randn(d_sae, d_in, device=device) / d_in**0.5).requires_grad_()
    w_dec = w_enc.detach().clone().requires_grad_()
    b_enc = torch.zeros(d_sae, device=device, requires_grad=True)
    b_dec = torch.zeros(d_in, device=device, requires_grad=True)
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=1e-4)

    def hand_step(i):
        xb = on_device[i * batch:(i + 1) * batch]
        pre = (xb - b_dec) @ w_enc.t() + b_enc
        values, indices = pre.topk(k, dim=1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, indices, values.relu())
        ((z @ w_dec + b_dec - xb) ** 2).sum(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out["hand_loop_tokens_per_s"] = round(loop(hand_step, None))
    del w_enc, w_dec, b_enc, b_dec, opt

    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        out["sparsify"] = "not importable here: bring the eai-sparsify wheel (see benchmarks/README.md)"
    else:
        _tf32(True)  # as sparsify's Trainer.fit() sets it
        torch.manual_seed(0)
        coder = SparseCoder(d_in, SparseCoderConfig(k=k, num_latents=d_sae), device=device)
        lr = 2e-4 / math.sqrt(d_sae / 2**14)  # its default learning-rate rule
        opt = torch.optim.Adam(coder.parameters(), lr=lr)

        def sparsify_step(i):
            result = coder(on_device[i * batch:(i + 1) * batch])
            result.fvu.backward()
            coder.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=True)
            coder.set_decoder_norm_to_unit_norm()

        out["sparsify_tokens_per_s"] = round(loop(sparsify_step, None))
        with torch.no_grad():
            out["sparsify_held_out_fvu"] = round(float(coder(held).fvu), 4)
        _tf32(False)
        del coder, opt
    del on_device

    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=root) as folder:
        ws = sk.Workspace(folder)
        store = sk.ActivationStore.from_array(data[:-batch], "bench", workspace=ws)
        variants = (("saekit", {}, {}, "auto"),  # the defaults: encoder_dtype "auto", TF32, Triton sums
                    ("saekit_torch_sums", {}, {}, "torch"),  # embedding_bag instead of the Triton kernels
                    ("saekit_fp32_tf32", {"encoder_dtype": "float32"}, {}, "auto"),
                    ("saekit_fp32", {"encoder_dtype": "float32"}, {"tf32": False}, "auto"))  # full float32
        for name, sae_changes, train_changes, sums in variants:
            config = sk.SAEConfig(arch="topk", d_sae=d_sae, k=k, **sae_changes)
            tc = sk.TrainConfig(total_tokens=(steps + warmup) * batch, batch_size=batch, log_every=warmup,
                                checkpoint_every=10**9, eval_tokens=batch, device=device, **train_changes)
            with _saekit_config().set(sparse_kernels=sums):
                job = sk.train(store, "bench", config, tc, background=False, progress=False, workspace=ws, force=True)
            sae = job.result()
            rates = job.metrics()["tokens_per_s"].dropna().to_numpy()[1:]
            out[f"{name}_tokens_per_s"] = round(float(sorted(rates)[len(rates) // 2])) if len(rates) else None
            with torch.no_grad():
                out[f"{name}_held_out_fvu"] = round(_fvu(sae.to(device)(held.float()), held.float()), 4)
        _tf32(False)
    for name in ("saekit", "saekit_torch_sums", "saekit_fp32_tf32", "saekit_fp32", "hand_loop"):
        rate = out.get(f"{name}_tokens_per_s")
        if rate and out.get("sparsify_tokens_per_s"):
            out[f"{name}_over_sparsify"] = round(rate / out["sparsify_tokens_per_s"], 2)
        if rate:
            out[f"{name}_fraction_of_bf16_bound"] = round(rate / out["matmul_bound_tokens_per_s_bf16"], 3)
    return out


def archs_section(device: str, d_in: int, d_sae: int, batch: int, steps: int) -> dict:
    """ReLU, JumpReLU, BatchTopK and Matryoshka BatchTopK: sk.train's tokens/s with the defaults (TF32; the bf16
    selection) against full float32, and held-out FVU; Matryoshka's step against BatchTopK's (issue 27: <= 1.3x)."""
    import torch

    import saekit as sk

    data = torch.randn(batch * (steps + 4), d_in)
    held = data[-batch:].to(device)
    out: dict = {"shape": {"d_in": d_in, "d_sae": d_sae, "batch": batch, "steps": steps}}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as folder:
        ws = sk.Workspace(folder)
        store = sk.ActivationStore.from_array(data[:-batch], "bench", workspace=ws)
        for arch, extra in (("relu", {}), ("jumprelu", {}), ("batchtopk", {"k": 32}),
                            ("matryoshka_batchtopk", {"k": 32})):
            for name, sae_changes, tf32 in (("default", {}, True), ("fp32", {"encoder_dtype": "float32"}, False)):
                sae_changes = sae_changes if "k" in extra else {}
                config = sk.SAEConfig(arch=arch, d_sae=d_sae, **extra, **sae_changes)
                tc = sk.TrainConfig(total_tokens=(steps + 3) * batch, batch_size=batch, log_every=3,
                                    checkpoint_every=10**9, eval_tokens=batch, device=device, tf32=tf32)
                job = sk.train(store, "bench", config, tc, background=False, progress=False, workspace=ws, force=True)
                rates = job.metrics()["tokens_per_s"].dropna().to_numpy()[1:]
                out[f"{arch}_{name}_tokens_per_s"] = round(float(sorted(rates)[len(rates) // 2])) if len(rates) else None
                with torch.no_grad():
                    sae = job.result().to(device)
                    out[f"{arch}_{name}_held_out_fvu"] = round(_fvu(sae(held.float()), held.float()), 4)
            if out.get(f"{arch}_fp32_tokens_per_s"):
                out[f"{arch}_default_over_fp32"] = round(out[f"{arch}_default_tokens_per_s"] / out[f"{arch}_fp32_tokens_per_s"], 2)
    if out.get("matryoshka_batchtopk_default_tokens_per_s") and out.get("batchtopk_default_tokens_per_s"):
        out["matryoshka_step_over_batchtopk"] = round(out["batchtopk_default_tokens_per_s"]
                                                      / out["matryoshka_batchtopk_default_tokens_per_s"], 2)
    return out


def writer_section(folder: Path, d_model: int, megabytes: int) -> dict:
    """The store writer alone (``benchmarks/writer.py``'s pipeline) at 1, 8 and all-core threads, and the bound:
    zstd level 1 over 4 MiB chunks on every core at once, with no Zarr."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from numcodecs import Zstd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from writer import pipeline

    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    data = rng.standard_normal((65536, d_model), dtype=np.float32)
    data = (data.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bits
    out: dict = {"d_model": d_model, "cores": cores, "pipeline": []}
    for compression in ("zstd", "none"):
        for threads in sorted({1, 8, cores}):
            out["pipeline"].append(pipeline(data, folder, compression, threads, megabytes))
    chunks = [data[i:i + 4 * 2**20 // (2 * d_model)] for i in range(0, len(data), 4 * 2**20 // (2 * d_model))]
    codec = Zstd(level=1)
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(codec.encode, chunks))
        start = time.perf_counter()
        for _ in range(4):
            list(pool.map(codec.encode, chunks))
        out["zstd_all_cores_mb_s"] = round(4 * data.nbytes / (time.perf_counter() - start) / 1e6)
    return out


# -- where a training step's time goes -------------------------------------------------------------------------

def _step_parts(sae, opt, x):
    """saekit's training step, cut where the trainer's phases are (forward, backward, optimizer and the rest)."""
    import torch

    from saekit.sae.model import TrainingState

    since = torch.zeros(sae.d_sae, dtype=torch.long, device=x.device)

    def forward():  # a step whose metrics are not logged, as most of the trainer's are
        return sae.training_forward(x, TrainingState(dead=None, metrics=False))

    def apply(out):
        sae.remove_parallel_decoder_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        since.add_(len(x)).masked_fill_(out.fired > 0, 0)

    return forward, apply


def _whole_step(forward, apply):
    """One step from ``_step_parts``: forward, backward, apply."""

    def step():
        out = forward()
        out.loss.backward()
        apply(out)

    return step


def _per_step(fn, steps: int = 20) -> float:
    """Milliseconds a call of ``fn`` takes in a loop of ``steps`` (the host queues ahead, as in training)."""
    import torch

    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / steps * 1000, 3)


def graphed_step(d_in: int, d_sae: int, k: int, x) -> dict:
    """saekit's TopK step (its defaults, TF32) captured once as a CUDA graph and replayed, against the same step run
    eagerly with the same optimizer (Adam with ``capturable=True`` and a tensor learning rate, as a graph needs):
    what graphs would save at this shape. The trainer does not use graphs yet (docs/gpu.md)."""
    import torch

    import saekit as sk

    out: dict = {}
    _tf32(True)
    try:
        torch.manual_seed(0)
        sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=k), device=x.device)
        opt = torch.optim.Adam(sae.parameters(), lr=torch.tensor(1e-4, device=x.device), fused=True, capturable=True)
        step = _whole_step(*_step_parts(sae, opt, x))
        side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graph's documentation asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        out["eager_step_ms"] = _per_step(step)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        out["graphed_step_ms"] = _per_step(graph.replay)
        out["graph_speedup"] = round(out["eager_step_ms"] / out["graphed_step_ms"], 2)
    except Exception as e:  # a step that cannot be captured says why
        out["error"] = f"{type(e).__name__}: {e}"[:500]
    finally:
        _tf32(False)
    return out


def profile_section(device: str, d_in: int, d_sae: int, k: int, batch: int) -> dict:
    """Per phase (CUDA events) and per kernel (the profiler) time of one step: saekit's TopK step with TF32 and with
    the bf16 encoder, sparsify's step; and the top-k alone. Milliseconds per step. On CUDA also the step replayed
    as a CUDA graph (``graphed_step``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import saekit as sk

    out: dict = {"shape": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch}}
    x = torch.randn(batch, d_in, device=device)
    cuda = device.startswith("cuda")

    def kernels(step, steps: int = 4) -> list:
        for _ in range(3):
            step()
        _sync(device)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(steps):
                step()
            _sync(device)
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total
            if t > 0 and (cuda or e.key.startswith("aten::")):
                rows.append((t, e.key[:90], e.count))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        return [{"kernel": name, "ms": round(t / 1000 / steps, 3), "calls": count // steps}
                for t, name, count in rows[:14]] + [{"kernel": "(all)", "ms": round(total / 1000 / steps, 3)}]

    for name, dtype, tf32, sums in (("saekit_default", "auto", True, "auto"), ("saekit_torch_sums", "auto", True, "torch"),
                                    ("saekit_fp32_tf32", "float32", True, "auto")):
        _tf32(tf32)
        variant = contextlib.ExitStack()  # the setting holds for this variant's steps, profile included
        variant.enter_context(_saekit_config().set(sparse_kernels=sums))
        torch.manual_seed(0)
        sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=k, encoder_dtype=dtype),
                                 device=device)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
        forward, apply = _step_parts(sae, opt, x)
        step = _whole_step(forward, apply)
        phases = {"forward": 0.0, "backward": 0.0, "apply": 0.0}
        for _ in range(3):
            step()
        steps = 6
        for _ in range(steps):
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if cuda else None
            t = [time.perf_counter()]
            marks and marks[0].record()
            o = forward()
            marks and marks[1].record()
            t.append(time.perf_counter())
            o.loss.backward()
            marks and marks[2].record()
            t.append(time.perf_counter())
            apply(o)
            marks and marks[3].record()
            _sync(device)
            t.append(time.perf_counter())
            for i, phase in enumerate(phases):
                phases[phase] += (marks[i].elapsed_time(marks[i + 1]) if cuda else (t[i + 1] - t[i]) * 1000) / steps
        out[name] = {"phases_ms": {p: round(v, 3) for p, v in phases.items()},
                     "step_ms": round(_best(step, device, repeats=5) * 1000, 3), "kernels": kernels(step)}
        del sae, opt
        variant.close()
    _tf32(False)

    if cuda:
        out["saekit_graphed"] = graphed_step(d_in, d_sae, k, x)
    for dtype in (torch.float32, torch.bfloat16):
        pre = torch.randn(batch, d_sae, device=device, dtype=dtype)
        out[f"topk_ms_{str(dtype)[6:]}"] = round(_best(lambda: pre.topk(k, dim=1, sorted=False), device, 5) * 1000, 3)
        del pre
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        out["sparsify"] = "not importable"
    else:
        _tf32(True)
        coder = SparseCoder(d_in, SparseCoderConfig(k=k, num_latents=d_sae), device=device)
        opt = torch.optim.Adam(coder.parameters(), lr=1e-4)

        def sparsify_step():
            coder(x).fvu.backward()
            coder.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=True)
            coder.set_decoder_norm_to_unit_norm()

        out["sparsify"] = {"step_ms": round(_best(sparsify_step, device, repeats=5) * 1000, 3),
                           "kernels": kernels(sparsify_step)}
        _tf32(False)
    return out


def data_section(device: str, d_in: int, batch: int, steps: int) -> dict:
    """How fast the training source alone hands batches to the device: a float32 store, preloaded and streamed."""
    import torch

    import saekit as sk
    from saekit.activations.source import StoreSource

    data = torch.randn(batch * (steps + 2), d_in)
    out: dict = {"d_in": d_in, "batch": batch}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as folder:
        ws = sk.Workspace(folder)
        store = sk.ActivationStore.from_array(data, "bench", workspace=ws)
        for preload in (True, False):
            source = StoreSource(store, "bench", batch, preload=preload)
            stream = source.batches(batch, 0, 0, torch.device(device))
            next(stream)
            _sync(device)
            start = time.perf_counter()
            n = 0
            for b in stream:
                b.to(device=device, dtype=torch.float32)
                n += 1
                if n == steps:
                    break
            _sync(device)
            out[f"{'preloaded' if preload else 'streamed'}_tokens_per_s"] = round(n * batch / (time.perf_counter() - start))
            stream.close()
    return out


# -- extraction -----------------------------------------------------------------------------------------------

SHAPES = {  # random-weight Llamas of real shapes (the tokenizer is the tests' offline one; its vocabulary is small)
    "smollm2": dict(d_model=576, n_layers=30, n_heads=9, num_key_value_heads=3, intermediate_size=1536,
                    hook="blocks.15.resid_post"),
    "llama1b": dict(d_model=2048, n_layers=16, n_heads=32, num_key_value_heads=8, intermediate_size=8192,
                    hook="blocks.8.resid_post"),
    "smoke": dict(d_model=64, n_layers=4, n_heads=4, num_key_value_heads=2, intermediate_size=128,
                  hook="blocks.2.resid_post"),
}


def _model(folder: Path, shape: str, device: str):
    import saekit as sk
    from saekit.models.tiny import make_tiny_model

    spec = dict(SHAPES[shape])
    hook = spec.pop("hook")
    path = folder / f"model-{shape}"
    if not path.exists():
        make_tiny_model(path, "llama", max_positions=2048, **spec)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return sk.load_model(path, device=device, dtype=dtype), hook


def _tokens(folder: Path, lm, n_tokens: int):
    import datasets

    import saekit as sk
    from saekit.models.tiny import stdlib_docstrings

    docs = stdlib_docstrings()
    copies = max(1, math.ceil(n_tokens / 250_000))
    corpus = sk.load_corpus(datasets.Dataset.from_dict({"text": [f"{c} {d}" for c in range(copies) for d in docs]}))
    return sk.tokenize(corpus, lm, context_length=256, background=False, progress=False,
                       workspace=folder / "ws").result()


def extract_section(device: str, folder: Path, shape: str, n_tokens: int) -> dict:
    import numpy as np

    import saekit as sk

    lm, hook = _model(folder, shape, device)
    toks = _tokens(folder, lm, n_tokens)
    from saekit.activations.source import tokens_per_batch

    batch = max(1, tokens_per_batch(lm.device) // toks.context_length)
    n_seq = min(toks.n_sequences, math.ceil(n_tokens / toks.context_length) + batch)
    reader = toks.reader()

    def bare():
        done = 0
        for lo in range(0, n_seq, batch):
            rows = reader.rows(lo, min(lo + batch, n_seq))
            lm.run_with_cache(rows.input_ids, [hook], attention_mask=rows.mask.astype(np.int64))
            done += int(rows.mask.sum())
            if done >= n_tokens:
                break

    bare_s = _best(bare, device, repeats=2)

    def forward_and_copy():
        import torch

        done = 0
        for lo in range(0, n_seq, batch):
            rows = reader.rows(lo, min(lo + batch, n_seq))
            cache = lm.run_with_cache(rows.input_ids, [hook], attention_mask=rows.mask.astype(np.int64))
            keep = torch.from_numpy(np.flatnonzero(rows.mask.reshape(-1))).to(lm.device)
            cache[hook].reshape(-1, lm.d_model).index_select(0, keep).to(torch.bfloat16).cpu()
            done += int(rows.mask.sum())
            if done >= n_tokens:
                break

    copy_s = _best(forward_and_copy, device, repeats=2)

    def extraction():
        extraction.store = sk.extract(lm, toks, [hook], max_tokens=n_tokens, batch_size=batch, force=True,
                                      background=False, progress=False, workspace=folder / "ws").result()

    extract_s = _best(extraction, device, repeats=2)
    tokens = extraction.store.n_tokens
    return {"model_shape": shape, "d_model": lm.d_model, "hook_point": hook, "tokens": tokens, "batch_sequences": batch,
            "bare_forward_tokens_per_s": round(tokens / bare_s), "extract_tokens_per_s": round(tokens / extract_s),
            "extract_over_bare_forward": round(bare_s / extract_s, 3),
            "forward_and_copy_tokens_per_s": round(tokens / copy_s),
            "writer_threads": __import__("saekit.config", fromlist=["config"]).config.get("writer_threads")}


# -- analysis --------------------------------------------------------------------------------------------------

def job_phase_seconds(job) -> dict:
    """Where a job's time went: seconds from the worker's start to its first phase, then in each phase of its
    progress (the last attempt's, from its event log)."""
    marks: list = []
    for record in job.events(all_records=True):
        if record.get("t") == "start":
            marks = [("starting", record["time"])]
        elif record.get("t") == "progress" and record.get("phase") and (not marks or marks[-1][0] != record["phase"]):
            marks.append((record["phase"], record["time"]))
        elif record.get("t") == "end":
            marks.append(("end", record["time"]))
    seconds: dict = {}
    for (name, begun), (_, ended) in zip(marks, marks[1:]):
        seconds[name] = round(seconds.get(name, 0.0) + ended - begun, 3)
    return seconds


def analyze_section(device: str, folder: Path, shape: str, n_tokens: int, d_sae: int) -> dict:
    import numpy as np
    import torch

    import saekit as sk

    lm, hook = _model(folder, shape, device)
    toks = _tokens(folder, lm, n_tokens)
    store = sk.extract(lm, toks, [hook], max_tokens=n_tokens, background=False, progress=False,
                       workspace=folder / "ws").result()
    sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=lm.d_model, d_sae=d_sae, k=32))
    sae.metadata["hook_point"] = hook
    out: dict = {"d_sae": d_sae, "tokens": store.n_tokens}
    on_device = sae.to(device).eval()

    def encode():
        with torch.no_grad():
            for lo in range(0, store.n_tokens, 8192):
                on_device.encode_sparse(store.read(hook, lo, min(lo + 8192, store.n_tokens)).float().to(device))

    encode_s = _best(encode, device, repeats=2)
    out["bare_encode_tokens_per_s"] = round(store.n_tokens / encode_s)

    def streaming():  # the analysis' streaming pass alone: what the job adds to a bare encode, per token
        from saekit.features.accumulate import Accumulator
        from saekit.features.analysis import _block_rows, _Pass
        from saekit.activations.source import StoreSource

        acc = Accumulator(d_sae, top_k=20, reservoir=100, context=(16, 4), device=device)
        stream = _Pass(on_device, acc, 16, 4, _block_rows(on_device, "auto"), device)
        for rows in StoreSource(store, hook).blocks(stream.block, None, store.n_tokens,
                                                    read_ahead=device.startswith("cuda")):  # as the job reads
            stream.feed(rows)
        stream.finish()

    pass_s = _best(streaming, device, repeats=2)
    out["pass_tokens_per_s"] = round(store.n_tokens / pass_s)
    out["pass_over_bare_encode"] = round(encode_s / pass_s, 3)
    results = {}
    for name, source in (("store", store), ("model", (lm, toks))):
        start = time.perf_counter()
        feats = sk.analyze(on_device, source, hook_point=hook, device=device, background=False, progress=False,
                           force=True, workspace=folder / "ws").result()
        seconds = time.perf_counter() - start
        results[name] = feats
        out[f"analyze_{name}_tokens_per_s"] = round(feats.n_tokens / seconds)
        out[f"analyze_{name}_over_bare_encode"] = round(encode_s / seconds * feats.n_tokens / store.n_tokens, 3)
        out[f"analyze_{name}_phases_s"] = job_phase_seconds(sk.job(feats.id, workspace=folder / "ws"))
    cpu = sk.analyze(sae.to("cpu"), store, hook_point=hook, device="cpu", background=False, progress=False,
                     force=True, workspace=folder / "ws").result()
    a, b = results["store"].to_pandas(), cpu.to_pandas()
    differ = a["count"].to_numpy() != b["count"].to_numpy()
    out["latents_whose_count_differs_from_cpu"] = int(differ.sum())
    out["largest_count_difference"] = int(abs(a["count"].to_numpy() - b["count"].to_numpy()).max())
    out["max_abs_difference_of_max"] = float(np.abs(a["max"].to_numpy() - b["max"].to_numpy()).max())
    alive = [i for i in range(d_sae) if b["count"].iloc[i] > 0][:64]
    out["same_top_rows_of_64_alive_latents"] = sum(
        [e.row for e in results["store"][i].examples] == [e.row for e in cpu[i].examples] for i in alive)
    return out


# -- steering ----------------------------------------------------------------------------------------------------

def steer_section(device: str, folder: Path, shape: str, new_tokens: int, d_sae: int) -> dict:
    import saekit as sk

    lm, hook = _model(folder, shape, device)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=lm.d_model, d_sae=d_sae, k=32)).to(lm.device)
    sae.metadata["hook_point"] = hook
    prompt = "The weather today is"

    def generate():
        lm.generate(prompt, max_new_tokens=new_tokens, seed=0, stop_at_eos=False)

    out = {"new_tokens": new_tokens}
    plain = _best(generate, device)
    out["unsteered_tokens_per_s"] = round(new_tokens / plain)
    for mode in ("add", "clamp"):
        with sk.steer(lm, sae, {1: 4.0, 2: 2.0}, mode=mode):
            seconds = _best(generate, device)
        out[f"{mode}_tokens_per_s"] = round(new_tokens / seconds)
        out[f"{mode}_over_unsteered"] = round(plain / seconds, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: check that every section runs")
    parser.add_argument("--only", default="", help="comma-separated section prefixes (train, extract, analyze, steer)")
    parser.add_argument("--json", default=None, help="also write the results to this file (after every section)")
    opts = parser.parse_args()
    if opts.json:
        SAVE_TO.append(Path(opts.json))
    import torch

    device = "cpu" if opts.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke to check the script on the CPU")
    wanted = [w for w in opts.only.split(",") if w]
    run = (lambda name: not wanted or any(name.startswith(w) for w in wanted))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if opts.smoke:
            plan = [("profile_small", profile_section, device, 64, 512, 8, 256),
                    ("data", data_section, device, 64, 256, 8),
                    ("archs", archs_section, device, 64, 512, 256, 4),
                    ("writer", writer_section, folder, 64, 4),
                    ("train_small", train_section, device, 64, 512, 8, 256, 4),
                    ("extract_smoke", extract_section, device, folder, "smoke", 20_000),
                    ("analyze", analyze_section, device, folder, "smoke", 20_000, 256),
                    ("steer", steer_section, device, folder, "smoke", 8, 256)]
        else:
            plan = [("profile_large", profile_section, device, 2304, 65536, 64, 4096),
                    ("profile_small", profile_section, device, 512, 8192, 32, 4096),
                    ("train_small", train_section, device, 512, 8192, 32, 4096, 60),
                    ("train_large", train_section, device, 2304, 65536, 64, 4096, 30),
                    ("extract_smollm2", extract_section, device, folder, "smollm2", 1_000_000),
                    ("extract_llama1b", extract_section, device, folder, "llama1b", 600_000),
                    ("analyze", analyze_section, device, folder, "smollm2", 250_000, 16384),
                    ("archs", archs_section, device, 512, 8192, 4096, 30),
                    ("writer", writer_section, folder, 576, 384),
                    ("steer", steer_section, device, folder, "smollm2", 64, 4608)]
        for name, fn, *args in plan:
            if run(name):
                section(name, fn, *args)
    machine = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
               "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({"summary": True, "machine": machine, **RESULTS}, default=str, indent=1))


if __name__ == "__main__":
    main()
