"""SAE training benchmark; prints JSON.

    python benchmarks/train.py [--steps 30] [--repeats 2] [--d-in 512] [--d-sae 8192] [--k 32] [--batch 4096] [--s3]

In one run, alternating, each in a fresh process (so peak RSS is its own): ``sk.train`` on an in-memory
activation store (a workspace on /dev/shm) vs a minimal hand-written PyTorch TopK loop of the same shapes
(dense scatter + decoder matmul, autograd, Adam), both float32. Each process also times the encoder's
forward matmul ``[batch, d_in] @ [d_in, d_sae]`` - the one dense product exact TopK cannot avoid - so
tokens/s is also reported as a fraction of that bound. ``sk.train``'s steady tokens/s is the median of
its logged intervals after the first; its end-to-end figure includes setup (decoder-bias geometric
median, the held-out evaluation, saving). The store (128 MiB) is read into memory once, as ``sk.train`` does
by default for stores up to 1 GiB; ``--streamed`` adds a run streaming it (``TrainConfig(preload=False)``),
``--bf16`` one with ``encoder_dtype="bfloat16"``, ``--s3`` one streaming the same store from S3 (a copy on moto's
S3 server on loopback, reached through the standard AWS environment) beside one streaming it from local disk, with
the fraction of step time spent waiting for data (the ``data_wait_fraction`` metric) and the held-out FVU of each. When a Python with EleutherAI's sparsify is at hand
(``make interop-env``, or ``--peer-python``) its SparseCoder trains the same shapes in the same run, and the
ratio to it is printed; without one, no ratio to it is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _matmul_seconds(args) -> float:
    import torch

    x, w = torch.randn(args.batch, args.d_in), torch.randn(args.d_sae, args.d_in)
    x @ w.t()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x @ w.t()
        times.append(time.perf_counter() - start)
    return min(times)


def _data(args):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(args.rows, args.d_in, generator=g)


def run_hand(args) -> dict:
    """The minimal loop: encoder, top-k, dense scatter, decoder matmul, MSE, backward, Adam."""
    import torch

    data = _data(args)
    torch.manual_seed(0)
    w_enc = (torch.randn(args.d_sae, args.d_in) / args.d_in**0.5).requires_grad_()
    w_dec = w_enc.detach().clone().requires_grad_()
    b_enc = torch.zeros(args.d_sae, requires_grad=True)
    b_dec = torch.zeros(args.d_in, requires_grad=True)
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=1e-4)

    def step(i):
        lo = (i * args.batch) % (args.rows - args.batch)
        x = data[lo:lo + args.batch]
        pre = (x - b_dec) @ w_enc.t() + b_enc
        values, indices = pre.topk(args.k, dim=1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, indices, values.relu())
        loss = ((z @ w_dec + b_dec - x) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": args.steps * args.batch / seconds}


def run_sparsify(args) -> dict:
    """EleutherAI's sparsify on the same shapes: its SparseCoder's forward (fused encoder, sparse decoder),
    backward, the decoder-gradient projection and renormalisation its trainer does, Adam. Runs in whatever
    Python has sparsify (``--peer-python``, by default .venv-interop: make interop-env)."""
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    data = _data(args)
    torch.manual_seed(0)
    sae = SparseCoder(args.d_in, SparseCoderConfig(k=args.k, num_latents=args.d_sae))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(i):
        lo = (i * args.batch) % (args.rows - args.batch)
        out = sae(data[lo:lo + args.batch])
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    return {"tokens_per_s": args.steps * args.batch / (time.perf_counter() - start)}


def _peer_python(requested: str | None) -> str | None:
    """A Python that can import sparsify, or None (then no sparsify figure and no ratio are printed)."""
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-interop", "bin", "python")
    for python in ([requested] if requested else [default, sys.executable]):
        if python and os.path.exists(python) and subprocess.run(
                [python, "-c", "import sparsify"], capture_output=True).returncode == 0:
            return python
    return None


def _on_s3(store, ws):
    """A copy of ``store`` on a loopback S3 server (moto's server mode), as an ActivationStore."""
    import fsspec

    import saekit as sk

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import s3_server  # the tests' helper: moto's server, reached through the standard AWS environment

    s3_server.start()  # for this benchmark process's life
    s3_server.make_bucket("bench")
    fs = fsspec.filesystem("s3")
    fs.put(store.location, "bench/store.zarr", recursive=True)
    return sk.ActivationStore("s3://bench/store.zarr", ws)


def run_saekit(args) -> dict:
    import logging

    import saekit as sk

    logging.getLogger("saekit").setLevel(logging.WARNING)
    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=root) as folder:
        ws = sk.Workspace(folder)
        store = sk.ActivationStore.from_array(_data(args), "bench", workspace=ws)
        if args.s3_store:
            store = _on_s3(store, ws)
        steps = args.warmup + args.steps
        config = sk.SAEConfig(arch="topk", d_sae=args.d_sae, k=args.k, encoder_dtype=args.encoder_dtype)
        tc = sk.TrainConfig(total_tokens=steps * args.batch, batch_size=args.batch, lr=1e-4, log_every=args.warmup,
                            checkpoint_every=10**9, eval_tokens=args.batch, lr_decay="none", lr_warmup=0,
                            preload=False if args.stream_store else None)
        start = time.perf_counter()
        job = sk.train(store, "bench", config, tc, background=False, progress=False, workspace=ws)
        job.result()
        seconds = time.perf_counter() - start
        metrics = job.metrics()
        rates = metrics["tokens_per_s"].dropna().to_numpy()[1:]
        waits = metrics["data_wait_fraction"].dropna().to_numpy()[1:]
        return {"tokens_per_s": float(statistics.median(rates)), "end_to_end_tokens_per_s": steps * args.batch / seconds,
                "data_wait_fraction": float(statistics.median(waits)),
                "held_out_fvu": job.info()["result"]["saes"][0]["eval"]["fvu"]}


def child(args) -> None:
    result = {"hand": run_hand, "saekit": run_saekit, "sparsify": run_sparsify}[args.child](args)
    result["matmul_s"] = _matmul_seconds(args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--bf16", action="store_true", help="also run sk.train with encoder_dtype='bfloat16'")
    parser.add_argument("--streamed", action="store_true",
                        help="also run sk.train streaming the store (preload=False) instead of reading it in once")
    parser.add_argument("--s3", action="store_true",
                        help="also stream the store from S3 (moto's server on loopback) and from local disk")
    parser.add_argument("--s3-store", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--encoder-dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--stream-store", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peer-python", default=None,
                        help="a Python with eai-sparsify installed (default: .venv-interop/bin/python, then this one)")
    parser.add_argument("--child", choices=["hand", "saekit", "sparsify"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    shape = ["--d-in", str(args.d_in), "--d-sae", str(args.d_sae), "--k", str(args.k), "--batch", str(args.batch),
             "--steps", str(args.steps), "--warmup", str(args.warmup), "--rows", str(args.rows)]
    runs: dict[str, list[dict]] = {"hand": [], "saekit": []}
    if args.bf16:
        runs["saekit_bf16"] = []
    if args.streamed or args.s3:
        runs["saekit_streamed"] = []
    if args.s3:
        runs["saekit_s3"] = []
    peer = _peer_python(args.peer_python)
    if peer:
        runs["sparsify"] = []
    children = {"saekit_bf16": ["--child", "saekit", "--encoder-dtype", "bfloat16"],
                "saekit_streamed": ["--child", "saekit", "--stream-store"],
                "saekit_s3": ["--child", "saekit", "--stream-store", "--s3-store"]}
    for _ in range(args.repeats):
        for name in runs:
            extra = children.get(name, ["--child", name])
            python = peer if name == "sparsify" else sys.executable
            out = subprocess.run([python, __file__, *shape, *extra], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for name, items in runs.items():
        best = max(items, key=lambda r: r["tokens_per_s"])
        bound = args.batch / best["matmul_s"]
        summary[name] = {**{k: round(v, 4) if isinstance(v, float) else v for k, v in best.items()},
                         "all_tokens_per_s": [round(r["tokens_per_s"]) for r in items],
                         "fraction_of_matmul_bound": round(best["tokens_per_s"] / bound, 3)}
    summary["saekit_over_hand"] = round(summary["saekit"]["tokens_per_s"] / summary["hand"]["tokens_per_s"], 2)
    if peer:  # measured in this run, each in its own process, alternating
        summary["saekit_over_sparsify"] = round(summary["saekit"]["tokens_per_s"] / summary["sparsify"]["tokens_per_s"], 2)
    else:
        summary["sparsify"] = "not installed (make interop-env, or --peer-python): no ratio to it"
    if args.s3:  # the same store, streamed from S3 and from disk, in the same run
        summary["s3_over_disk_streamed"] = round(summary["saekit_s3"]["tokens_per_s"] / summary["saekit_streamed"]["tokens_per_s"], 2)
        summary["s3_fvu_equals_disk_fvu"] = summary["saekit_s3"]["held_out_fvu"] == summary["saekit_streamed"]["held_out_fvu"]
    if args.streamed or args.s3:
        summary["preloaded_over_streamed"] = round(summary["saekit"]["tokens_per_s"] / summary["saekit_streamed"]["tokens_per_s"], 2)
    if args.bf16:
        summary["bf16_over_fp32"] = round(summary["saekit_bf16"]["tokens_per_s"] / summary["saekit"]["tokens_per_s"], 2)
    print(json.dumps({"shape": {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch": args.batch,
                                "steps": args.steps}, **summary}, indent=2))


if __name__ == "__main__":
    main()
