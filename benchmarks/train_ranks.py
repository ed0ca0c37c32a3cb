"""Model-source training under torchrun: how much of the model's work each rank does; prints JSON.

    python benchmarks/train_ranks.py [--nproc 2] [--steps 20] [--batch 2048]

``sk.train((lm, token_store), ...)`` computes activations on the fly. Under ``launcher="torchrun"`` each rank
runs the model only over the sequences its slice of the global batch overlaps. In one run, on a tiny random
Llama (d_model 256, 6 layers, context 128, a BPE tokenizer trained here on saekit's own source), this trains
the same SAE in one process and on ``--nproc`` ranks, and reports each job's wall time from submit to result
and rank 0's "model rows computed" event: the rows it ran the model for against the rows of its slices (one
process computes every row of every batch). On a CPU with fewer cores than ranks x threads the wall times say
little; the rows are the point.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args()

    import saekit as sk
    from saekit.models.tiny import make_tiny_model

    texts = [p.read_text() for p in sorted((Path(__file__).resolve().parents[1] / "saekit").rglob("*.py"))]
    with tempfile.TemporaryDirectory() as folder:
        ws = sk.set_workspace(folder)
        lm = sk.load_model(make_tiny_model(ws.path / "model", "llama", texts=texts, d_model=256, n_layers=6),
                           device="cpu")
        corpus = ws.path / "corpus.txt"
        corpus.write_text("\n\n".join(texts * 3))
        tokens = sk.tokenize(sk.load_corpus(str(corpus)), lm, context_length=128, background=False,
                             progress=False).result()
        tc = sk.TrainConfig(total_tokens=args.steps * args.batch, batch_size=args.batch, log_every=5,
                            checkpoint_every=10**9, eval_tokens=1024, ce_eval_tokens=0)
        config = sk.SAEConfig(arch="topk", d_sae=1024, k=16)
        out = {"d_model": lm.d_model, "context_length": 128, "batch_size": args.batch, "steps": args.steps}
        for name, launch in (("one_process", {}), (f"{args.nproc}_ranks", {"launcher": "torchrun", "nproc": args.nproc})):
            start = time.perf_counter()
            job = sk.train((lm, tokens), "blocks.5.resid_post", config, tc, force=True, progress=False, **launch)
            job.result(timeout=900)
            out[f"{name}_wall_s"] = round(time.perf_counter() - start, 2)
            for event in job.events():
                found = re.search(r"rows computed on rank 0 this attempt: ([\d,]+) \(its slices: ([\d,]+)\)",
                                  event["message"])
                if found:
                    computed, share = (int(n.replace(",", "")) for n in found.groups())
                    out.update(rank0_rows_computed=computed, rank0_slice_rows=share,
                               rank0_over_its_slices=round(computed / share, 3),
                               rank0_over_every_row=round(computed / (args.steps * args.batch), 3))
        out["ranks_over_one_process_wall"] = round(out[f"{args.nproc}_ranks_wall_s"] / out["one_process_wall_s"], 2)
        sk.set_workspace(None)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
