"""A skip-transcoder and a Matryoshka BatchTopK on SmolLM2-135M's layer 6 against EleutherAI's sparsify; prints JSON.

    python benchmarks/transcoder.py [--rows 300000] [--steps 60] [--rows-cache /tmp/layer6.npz]
                                    [--peer-python .venv-interop/bin/python]

The rows: SmolLM2-135M-Instruct (``make demo``'s model, offline) over the standard-library docstrings,
``blocks.6.mlp_in`` (what the MLP reads), ``blocks.6.mlp_out`` (what it adds) and ``blocks.6.resid_post``, from
one extraction pass; the last 4,096 rows are held out. Every run takes batches of 4,096 in the same order, k 32,
d_sae 4,608 (8x), and is reported after ``--steps`` steps and after one epoch:

- ``transcoder``: saekit's skip-transcoder (``SAEConfig(arch="topk", transcoder=True, skip_connection=True)``,
  ``sk.train(..., target_hook="blocks.6.mlp_out")`` with its defaults) against sparsify's ``SparseCoder`` with
  ``transcode=True, skip_connection=True`` stepped as its ``Trainer`` steps it (Adam at its default learning rate;
  at the first batch ``b_dec`` is the targets' mean and ``b_enc`` centres the pre-activations; the decoder is not
  normalised, as sparsify does for transcoders). Held-out FVU against the target, and the step time.
- ``matryoshka``: saekit's Matryoshka BatchTopK and BatchTopK on ``blocks.6.resid_post``, against sparsify's TopK
  SAE on the same rows. Held-out FVU, L0 at inference, and the step time.

Each trainer runs in its own process, one after another (sparsify in a Python that has it: ``make interop-env``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from convergence import smollm2_rows  # noqa: E402  the same rows, made the same way
BATCH, HELD, D_SAE, K = 4096, 4096, 4608, 32
HOOKS = ("blocks.6.mlp_in", "blocks.6.mlp_out", "blocks.6.resid_post")

SPARSIFY = """
import json, math, sys, time
import numpy as np, torch
from sparsify import SparseCoder, SparseCoderConfig
rows = np.load(sys.argv[1])
transcode, steps = sys.argv[2] == "transcoder", [int(s) for s in sys.argv[3].split(",")]
x = torch.from_numpy(rows["blocks.6.mlp_in" if transcode else "blocks.6.resid_post"]).float()
y = torch.from_numpy(rows["blocks.6.mlp_out"]).float() if transcode else x
held_x, held_y, train_x, train_y = x[-{held}:], y[-{held}:], x[:-{held}], y[:-{held}]
n = len(train_x) // {batch}
out = {{}}
for total in steps:
    torch.manual_seed(0)
    cfg = SparseCoderConfig(k={k}, num_latents={d_sae}, transcode=transcode, skip_connection=transcode)
    sae = SparseCoder(x.shape[1], cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / math.sqrt({d_sae} / 2**14))
    times = []
    for i in range(total):
        lo = (i % n) * {batch}
        xb, yb = train_x[lo:lo + {batch}], train_y[lo:lo + {batch}]
        start = time.perf_counter()
        if i == 0:  # as sparsify's Trainer does at its first step
            if transcode:
                sae.encoder.bias.data = -xb.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = yb.mean(0)
        sae(xb, yb if transcode else None).fvu.backward()
        if not transcode:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not transcode:
            sae.set_decoder_norm_to_unit_norm()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        fvu = float(sae(held_x, held_y if transcode else None).fvu)
    out[str(total)] = {{"fvu": round(fvu, 4), "step_s": round(float(np.median(times[1:])), 4), "l0": {k}}}
print(json.dumps(out))
""".format(held=HELD, batch=BATCH, k=K, d_sae=D_SAE)


def saekit_runs(rows_path: str, which: str, steps: list[int]) -> dict:
    """saekit's runs of one comparison, in this process."""
    import torch

    import saekit as sk

    rows = np.load(rows_path)
    out: dict = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        ws = sk.Workspace(tmp)
        if which == "transcoder":
            store = sk.ActivationStore.from_array({h: torch.from_numpy(rows[h]) for h in HOOKS[:2]}, workspace=ws)
            runs = {"saekit_skip_transcoder": (HOOKS[0], sk.SAEConfig(arch="topk", d_sae=D_SAE, k=K, transcoder=True,
                                                                       skip_connection=True), HOOKS[1])}
        else:
            store = sk.ActivationStore.from_array(torch.from_numpy(rows[HOOKS[2]]), HOOKS[2], workspace=ws)
            runs = {"saekit_matryoshka_batchtopk": (HOOKS[2], sk.SAEConfig(arch="matryoshka_batchtopk", d_sae=D_SAE, k=K),
                                                    None),
                    "saekit_batchtopk": (HOOKS[2], sk.SAEConfig(arch="batchtopk", d_sae=D_SAE, k=K), None)}
        for name, (hook, config, target) in runs.items():
            for total in steps:
                tc = sk.TrainConfig(total_tokens=total * BATCH, batch_size=BATCH, eval_tokens=HELD, log_every=5,
                                    checkpoint_every=10**9, device="cpu")
                job = sk.train(store, hook, config, tc, target_hook=target, background=False, progress=False,
                               workspace=ws)
                evaluation = job.info()["result"]["saes"][0]["eval"]
                metrics = job.metrics()
                speed = metrics["tokens_per_s"].dropna().iloc[1:].median()
                out.setdefault(name, {})[str(total)] = {
                    "fvu": round(evaluation["fvu"], 4), "step_s": round(BATCH / float(speed), 4),
                    "l0": round(evaluation["l0"], 2),
                    "data_wait_fraction": round(float(metrics["data_wait_fraction"].dropna().iloc[1:].median()), 3)}
    return out


def sparsify_runs(python: str | None, rows_path: str, which: str, steps: list[int]) -> dict | None:
    if python is None:
        return None
    done = subprocess.run([python, "-c", SPARSIFY, rows_path, which, ",".join(map(str, steps))],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000, help="training rows (4,096 more are held out)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-interop" / "bin" / "python"))
    parser.add_argument("--rows-cache", default=None, help="keep the rows in this .npz file between runs")
    parser.add_argument("--only", choices=("transcoder", "matryoshka"), default=None)
    opts = parser.parse_args()
    peer = opts.peer_python if Path(opts.peer_python).exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        path = opts.rows_cache or str(Path(tmp) / "rows.npz")
        if not Path(path).exists():
            np.savez(path, **smollm2_rows(opts.rows + HELD, list(HOOKS)))
        with np.load(path) as rows:
            n_rows = len(rows[HOOKS[0]])
        steps = [opts.steps, (n_rows - HELD) // BATCH]
        out: dict = {"rows": n_rows, "batch": BATCH, "d_sae": D_SAE, "k": K, "steps": steps,
                     "peer": peer or "no sparsify here (make interop-env)"}
        for which in ("transcoder", "matryoshka"):
            if opts.only and which != opts.only:
                continue
            section = saekit_runs(path, which, steps)
            theirs = sparsify_runs(peer, path, which, steps)
            if theirs is not None:
                section["sparsify_" + ("skip_transcoder" if which == "transcoder" else "topk")] = theirs
                for name, runs in list(section.items()):
                    if name.startswith("saekit"):
                        for total, row in runs.items():
                            row["fvu_over_sparsify"] = round(row["fvu"] / theirs[total]["fvu"], 3)
                            row["step_over_sparsify"] = round(row["step_s"] / theirs[total]["step_s"], 3)
            out[which] = section
            print(json.dumps({which: section}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
