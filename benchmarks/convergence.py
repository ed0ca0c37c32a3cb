"""How fast saekit's TopK defaults converge against EleutherAI's sparsify on the same rows; prints JSON.

    python benchmarks/convergence.py [--real-rows 1000000] [--rows-cache /tmp/smol6.npy]
                                     [--peer-python .venv-interop/bin/python] [--only smollm2] [--lr-scales 1,2,3]

Three data sets, each trained by three trainers on the same batches in the same order:

- ``random``: Gaussian rows (d_in 512, d_sae 8192, k 32, 65,536 training rows);
- ``smollm2``: SmolLM2-135M-Instruct's ``blocks.6.resid_post`` over the standard-library docstrings (d_in 576,
  d_sae 4608, k 32, 1M training rows);
- ``planted``: rows made of 4 of 256 random unit atoms in 64 dims (the tests' planted dictionary), d_sae 256 =
  atoms, k 4, batch 1024, 1.5M tokens; scored by the fraction of atoms some decoder row matches at cosine > 0.9.

On ``random`` and ``smollm2``, held-out FVU (the same held-out 4,096 rows) after 60 steps and after one epoch of
batch 4096. The trainers: ``sk.train`` with its defaults (``saekit``); the same with the defaults before
2026-12-04's change (``lr=2e-4 / sqrt(d_sae / 2**14)``, ``dead_after_tokens=10_000_000``: ``saekit_before``);
and sparsify's SparseCoder stepped as its Trainer steps it (Adam at its default learning rate, the first batch's
mean as b_dec, decoder gradient projection and renormalisation; its AuxK starts after 10M tokens, so never here)
in a Python that has it (``make interop-env``). One process per trainer.
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
HELD = 4096

SPARSIFY = """
import json, math, sys
import numpy as np, torch
from sparsify import SparseCoder, SparseCoderConfig
data = torch.from_numpy(np.load(sys.argv[1])).float()
d_sae, k, steps, batch, held_rows = (int(a) for a in sys.argv[2:7])
held, train = data[-held_rows:], data[:-held_rows]
torch.manual_seed(0)
sae = SparseCoder(data.shape[1], SparseCoderConfig(k=k, num_latents=d_sae))
opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / math.sqrt(d_sae / 2**14))
n = len(train) // batch
for i in range(steps):
    xb = train[(i % n) * batch:(i % n + 1) * batch]
    if i == 0:
        sae.b_dec.data = xb.mean(0)
    sae(xb).fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.set_decoder_norm_to_unit_norm()
np.save(sys.argv[7], sae.W_dec.detach().numpy())
with torch.no_grad():
    print(json.dumps({"fvu": float(sae(held).fvu)}))
"""


def saekit_run(data: np.ndarray, d_sae: int, k: int, steps: int, batch: int, held: int, before: bool,
               lr_scale: float | None = None):
    """(held-out FVU, decoder rows) of ``sk.train`` on ``data`` (its last ``held`` rows held out); ``lr_scale``
    trains at that multiple of the old rate, ``2e-4 / sqrt(d_sae / 2**14)`` (the default is 4)."""
    import torch

    import saekit as sk

    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        ws = sk.Workspace(tmp)
        store = sk.ActivationStore.from_array(torch.from_numpy(data), "x", workspace=ws)
        earlier = {"lr": 2e-4 / math.sqrt(d_sae / 2**14), "dead_after_tokens": 10_000_000} if before else {}
        if lr_scale is not None:
            earlier = {"lr": lr_scale * 2e-4 / math.sqrt(d_sae / 2**14)}
        tc = sk.TrainConfig(total_tokens=steps * batch, batch_size=batch, eval_tokens=held, log_every=10**6,
                            checkpoint_every=10**9, device="cpu", **earlier)
        job = sk.train(store, "x", sk.SAEConfig(arch="topk", d_sae=d_sae, k=k), tc, background=False, progress=False,
                       workspace=ws)
        return job.info()["result"]["saes"][0]["eval"]["fvu"], job.result().W_dec.detach().numpy()


def sparsify_run(python: str | None, data: np.ndarray, d_sae: int, k: int, steps: int, batch: int, held: int):
    if python is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path, w_dec = Path(tmp) / "rows.npy", Path(tmp) / "w_dec.npy"
        np.save(path, data)
        done = subprocess.run([python, "-c", SPARSIFY, str(path), str(d_sae), str(k), str(steps), str(batch), str(held),
                               str(w_dec)], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["fvu"], np.load(w_dec)


def smollm2_rows(rows: int, hooks: list[str]) -> dict[str, np.ndarray]:
    """SmolLM2-135M-Instruct's activations at ``hooks`` over the standard-library docstrings (repeated as needed),
    ``rows`` of them, float32, from one extraction pass."""
    import datasets

    import saekit as sk
    from saekit.models.fetch import SMOLLM2, fetch_model
    from saekit.models.tiny import stdlib_docstrings

    with tempfile.TemporaryDirectory() as tmp:
        ws = sk.Workspace(Path(tmp) / "ws")
        lm = sk.load_model(fetch_model(progress=False, workspace=ws), gguf_file=SMOLLM2["gguf_file"], device="cpu")
        copies = max(1, math.ceil(rows / 400_000))
        corpus = sk.load_corpus(datasets.Dataset.from_dict({"text": stdlib_docstrings() * 4 * copies}))
        toks = sk.tokenize(corpus, lm, context_length=256, background=False, progress=False, workspace=ws).result()
        store = sk.extract(lm, toks, hooks, max_tokens=rows, dtype="float32", background=False, progress=False,
                           workspace=ws).result()
        return {h: store.read(h, 0, store.n_tokens).float().numpy() for h in hooks}


def planted_rows():
    """The tests' planted dictionary (``tests/data_for_tests.py``): 300,000 rows of 4 of 256 atoms in 64 dims."""
    sys.path.insert(0, str(ROOT / "tests"))
    from data_for_tests import dictionary_data

    rows, atoms = dictionary_data(300_000, 64, 256, 4)
    return rows.numpy(), atoms.numpy()


def recovered(w_dec: np.ndarray | None, atoms: np.ndarray) -> float | None:
    """The fraction of atoms whose best-matching decoder row has cosine > 0.9."""
    if w_dec is None:
        return None
    rows = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True).clip(1e-12)
    return round(float(((rows @ atoms.T).max(0) > 0.9).mean()), 4)


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
    parser.add_argument("--only", choices=("random", "smollm2", "planted"), default=None)
    parser.add_argument("--lr-scales", default="", help="also train at these multiples of the old rate, e.g. 1,2,3 "
                                                        "(rows saekit_lr1x ...; the default is 4x)")
    opts = parser.parse_args()
    scales = [float(s) for s in opts.lr_scales.split(",") if s]
    peer = opts.peer_python if Path(opts.peer_python).exists() else None
    import torch

    out: dict = {"peer": peer or "no sparsify here (make interop-env)"}
    sets = {"random": lambda: (torch.randn(opts.random_rows + HELD, 512, generator=torch.Generator().manual_seed(0)
                                           ).numpy(), 8192, 32),
            "smollm2": lambda: (_cached(opts.rows_cache, lambda: smollm2_rows(opts.real_rows + HELD,
                                                                               ["blocks.6.resid_post"])["blocks.6.resid_post"]),
                                4608, 32)}
    for name, make in sets.items():
        if opts.only and name != opts.only:
            continue
        data, d_sae, k = make()
        epoch = (len(data) - HELD) // 4096
        for label, steps in (("60_steps", 60), ("one_epoch", epoch)):
            row = {"steps": steps}
            for trainer, before in (("saekit", False), ("saekit_before", True)):
                row[trainer] = round(saekit_run(data, d_sae, k, steps, 4096, HELD, before)[0], 4)
            for scale in scales:
                row[f"saekit_lr{scale:g}x"] = round(saekit_run(data, d_sae, k, steps, 4096, HELD, False, scale)[0], 4)
            theirs = sparsify_run(peer, data, d_sae, k, steps, 4096, HELD)[0]
            if theirs is not None:
                row["sparsify"] = round(theirs, 4)
                row["saekit_over_sparsify"] = round(row["saekit"] / theirs, 3)
            out[f"{name}_{label}"] = row
            print(json.dumps({f"{name}_{label}": row}), file=sys.stderr, flush=True)
    if not opts.only or opts.only == "planted":
        rows, atoms = planted_rows()
        steps = 1_500_000 // 1024
        row = {"steps": steps}
        trainers = [("saekit", False, None), ("saekit_before", True, None),
                    *((f"saekit_lr{s:g}x", False, s) for s in scales)]
        for trainer, before, scale in trainers:
            fvu, w_dec = saekit_run(rows, 256, 4, steps, 1024, 8192, before, scale)
            row[trainer] = {"recovered": recovered(w_dec, atoms), "fvu": round(fvu, 4)}
        fvu, w_dec = sparsify_run(peer, rows, 256, 4, steps, 1024, 8192)
        if fvu is not None:
            row["sparsify"] = {"recovered": recovered(w_dec, atoms), "fvu": round(fvu, 4)}
        out["planted"] = row
        print(json.dumps({"planted": row}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
