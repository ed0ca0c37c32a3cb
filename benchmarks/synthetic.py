"""Each architecture's recovery of a known dictionary at equal L0; prints JSON.

    python benchmarks/synthetic.py [--tokens 2000000] [--n-features 512] [--d-in 64] [--mean-active 6] [--lr 3e-3]

Each measure is ``[mean, half-width of its 95% interval]``.

One ``sk.SyntheticFeatures`` world (Zipf frequencies, ``--parents`` parents with 4 mutually exclusive children
each, correlated firing), one activation store, and the same ``sk.TrainConfig`` for TopK, BatchTopK and Matryoshka
BatchTopK with ``k`` = the world's mean number of active features and ``d_sae`` = its number of features. Scored by
``sk.evaluate(..., truth=truth, metrics=["ground_truth"])`` on 16,384 held-out rows per seed (seeds 0-2): MCC,
uniqueness, precision/recall/F1 of each latent against its best-matching true feature, the share of features
recovered at |cos| > 0.9, FVU and L0, each with its 95% interval over the seeds; then evaluated again on seeds 3-5,
and ``agrees`` says whether each measure's two means lie within the sum of their intervals. ReLU and JumpReLU are
left out: their L0 follows a penalty, and equal L0 would need a sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--n-features", type=int, default=512)
    parser.add_argument("--mean-active", type=float, default=6.0)
    parser.add_argument("--parents", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dead-after", type=int, default=50_000, help="tokens without firing until AuxK revives a "
                        "latent (the default, 10M, is longer than this run)")
    parser.add_argument("--correlation", type=float, default=0.2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import saekit as sk

    truth = sk.SyntheticFeatures(d_in=args.d_in, n_features=args.n_features, mean_active=args.mean_active,
                                 parents=args.parents, children=4, correlation=args.correlation, zipf_exponent=0.5)
    k = round(args.mean_active)
    out = {"world": truth.config.to_dict(), "tokens": args.tokens, "k": k, "lr": args.lr,
           "batch_size": args.batch_size, "dead_after_tokens": args.dead_after, "archs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sk.set_workspace(Path(tmp) / "ws")
        started = time.monotonic()
        store = truth.store(args.tokens)
        out["store_seconds"] = round(time.monotonic() - started, 1)
        tc = sk.TrainConfig(total_tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, log_every=100,
                            eval_tokens=8192, dead_after_tokens=args.dead_after, device=args.device)
        for arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
            started = time.monotonic()
            run = sk.train(store, "synthetic", sk.SAEConfig(arch=arch, d_sae=args.n_features, k=k), tc,
                           background=False, progress=False)
            trained = time.monotonic() - started
            kw = dict(truth=truth, metrics=["ground_truth"], background=False, progress=False)
            scores = sk.evaluate(run, seeds=[0, 1, 2], **kw).result().metrics["ground_truth"]
            again = sk.evaluate(run, seeds=[3, 4, 5], **kw).result().metrics["ground_truth"]
            measures = [m for m in scores if not m.endswith("_ci") and f"{m}_ci" in scores]
            out["archs"][arch] = {
                **{m: [round(scores[m], 4), round(scores[f"{m}_ci"], 4)] for m in measures},
                "agrees": {m: abs(scores[m] - again[m]) <= scores[f"{m}_ci"] + again[f"{m}_ci"] + 1e-9
                           for m in measures},
                "train_seconds": round(trained, 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
