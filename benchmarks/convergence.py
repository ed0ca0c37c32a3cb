"""How fast saekit's TopK defaults converge against EleutherAI's sparsify on the same rows; prints JSON.

    python benchmarks/convergence.py [--real-rows 1000000] [--peer-python .venv-interop/bin/python]

Two data sets: ``random`` (train.py's Gaussian rows, d_in 512, d_sae 8192, k 32) and ``smollm2``
(SmolLM2-135M-Instruct's ``blocks.6.resid_post`` over the standard-library docstrings, d_in 576, d_sae 4608,
k 32). On each, held-out FVU (the same held-out rows) after 60 steps and after one epoch of batch 4096:
``sk.train`` with its defaults; the same with the encoder initialised as before 2026-12-04 (rows of unit norm,
``unit_encoder``); and sparsify's SparseCoder stepped as its Trainer steps it (Adam at its default learning rate,
b_dec from the first batch's mean, decoder gradient projection and renormalisation) in a Python that has it
(``make interop-env``). One run, one process per trainer.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH, HELD = 4096, 4096

SPARSIFY = """
import json, math, sys
import numpy as np, torch
from sparsify import SparseCoder, SparseCoderConfig
data = torch.from_numpy(np.load(sys.argv[1])).float()
d_sae, k, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
held, train = data[-{held}:], data[:-{held}]
torch.manual_seed(0)
sae = SparseCoder(data.shape[1], SparseCoderConfig(k=k, num_latents=d_sae))
opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / math.sqrt(d_sae / 2**14))
n = len(train) // {batch}
for i in range(steps):
    xb = train[(i % n) * {batch}:(i % n + 1) * {batch}]
    if i == 0:
        sae.b_dec.data = xb.mean(0)
    sae(xb).fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.set_decoder_norm_to_unit_norm()
with torch.no_grad():
    print(json.dumps({{"fvu": float(sae(held).fvu)}}))
""".format(held=HELD, batch=BATCH)


def saekit_fvu(data: np.ndarray, d_sae: int, k: int, steps: int, unit_encoder: bool) -> float:
    import torch

    import importlib

    import saekit as sk

    archs = importlib.import_module("saekit.sae.archs")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        ws = sk.Workspace(tmp)
        store = sk.ActivationStore.from_array(torch.from_numpy(data), "x", workspace=ws)
        tc = sk.TrainConfig(total_tokens=steps * BATCH, batch_size=BATCH, eval_tokens=HELD, log_every=10**6,
                            checkpoint_every=10**9, device="cpu")
        before = archs.ENCODER_INIT_SCALE
        archs.ENCODER_INIT_SCALE = 1.0 if unit_encoder else before
        try:
            job = sk.train(store, "x", sk.SAEConfig(arch="topk", d_sae=d_sae, k=k), tc, background=False,
                           progress=False, workspace=ws)
        finally:
            archs.ENCODER_INIT_SCALE = before
        return round(job.info()["result"]["saes"][0]["eval"]["fvu"], 4)


def sparsify_fvu(python: str | None, data: np.ndarray, d_sae: int, k: int, steps: int) -> float | None:
    if python is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.npy"
        np.save(path, data)
        done = subprocess.run([python, "-c", SPARSIFY, str(path), str(d_sae), str(k), str(steps)],
                              capture_output=True, text=True, check=True)
    return round(json.loads(done.stdout.strip().splitlines()[-1])["fvu"], 4)


def real_rows(rows: int) -> np.ndarray:
    import datasets

    import saekit as sk
    from saekit.models.fetch import SMOLLM2, fetch_model
    from saekit.models.tiny import stdlib_docstrings

    with tempfile.TemporaryDirectory() as tmp:
        ws = sk.Workspace(Path(tmp) / "ws")
        lm = sk.load_model(fetch_model(progress=False), gguf_file=SMOLLM2["gguf_file"], device="cpu")
        copies = max(1, math.ceil(rows / 400_000))
        corpus = sk.load_corpus(datasets.Dataset.from_dict({"text": stdlib_docstrings() * 4 * copies}))
        toks = sk.tokenize(corpus, lm, context_length=256, background=False, progress=False, workspace=ws).result()
        store = sk.extract(lm, toks, ["blocks.6.resid_post"], max_tokens=rows, dtype="float32", background=False,
                           progress=False, workspace=ws).result()
        return store.read("blocks.6.resid_post", 0, store.n_tokens).float().numpy()


def _cached(path: str | None, make) -> np.ndarray:
    if path and Path(path).exists():
        return np.load(path)
    rows = make()
    if path:
        np.save(path, rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-rows", type=int, default=1_000_000)
    parser.add_argument("--random-rows", type=int, default=65536)
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-interop" / "bin" / "python"))
    parser.add_argument("--rows-cache", default=None, help="keep the SmolLM2 rows in this .npy file between runs")
    opts = parser.parse_args()
    peer = opts.peer_python if Path(opts.peer_python).exists() else None
    import torch

    g = torch.Generator().manual_seed(0)
    sets = {"random": (torch.randn(opts.random_rows + HELD, 512, generator=g).numpy(), 8192, 32),
            "smollm2": (_cached(opts.rows_cache, lambda: real_rows(opts.real_rows + HELD)), 4608, 32)}
    out: dict = {"peer": peer or "no sparsify here (make interop-env)"}
    for name, (data, d_sae, k) in sets.items():
        epoch = (len(data) - HELD) // BATCH
        for label, steps in (("60_steps", 60), ("one_epoch", epoch)):
            row = {"steps": steps, "saekit": saekit_fvu(data, d_sae, k, steps, False),
                   "saekit_unit_encoder": saekit_fvu(data, d_sae, k, steps, True),
                   "sparsify": sparsify_fvu(peer, data, d_sae, k, steps)}
            if row["sparsify"]:
                row["saekit_over_sparsify"] = round(row["saekit"] / row["sparsify"], 3)
            out[f"{name}_{label}"] = row
            print(json.dumps({f"{name}_{label}": row}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
