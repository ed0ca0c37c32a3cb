"""Steering benchmark; prints JSON.

    python benchmarks/steer.py [--d-model 576] [--layers 8] [--d-sae 4608] [--tokens 64] [--repeats 5] [--quick]

Generated tokens/s of greedy generation with the KV cache, unsteered and steered (``add`` needs no encode;
``clamp`` encodes every new position with the SAE), alternating in one run, best of ``--repeats``, on a random
Llama of SmolLM2-135M's width (d_model 576) so the ratio reflects the SAE's share of a real model's step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.d_model, args.layers, args.d_sae, args.tokens, args.repeats = 64, 2, 256, 8, 1

    import torch

    import saekit as sk
    from saekit.models.tiny import make_tiny_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="saekit-bench-steer-") as tmp:
        path = make_tiny_model(Path(tmp) / "model", "llama", d_model=args.d_model, n_layers=args.layers,
                               n_heads=max(1, args.d_model // 64), num_key_value_heads=max(1, args.d_model // 192))
        lm = sk.load_model(path, device="cpu", dtype="float32")
        hook = f"blocks.{args.layers // 2}.resid_post"
        torch.manual_seed(0)
        sae = sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=lm.d_model, d_sae=args.d_sae, k=32))
        sae.metadata["hook_point"] = hook
        prompt = "The Python standard library"
        settings = {"unsteered": None,
                    "add": sk.steer(lm, sae, {7: 4.0, 99: -2.0}, mode="add"),
                    "clamp": sk.steer(lm, sae, {7: 4.0, 99: 0.0}, mode="clamp")}

        def run(steering) -> float:
            t = time.perf_counter()
            if steering is None:
                out = lm.generate(prompt, max_new_tokens=args.tokens, stop_at_eos=False)
            else:
                with steering:
                    out = lm.generate(prompt, max_new_tokens=args.tokens, stop_at_eos=False)
            assert len(out.ids) == args.tokens
            return time.perf_counter() - t

        run(None)  # warm up
        times = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, steering in settings.items():
                times[name].append(run(steering))
        best = {name: min(v) for name, v in times.items()}
        rate = {name: round(args.tokens / t, 1) for name, t in best.items()}
        print(json.dumps({"benchmark": "steer", "d_model": args.d_model, "layers": args.layers, "d_sae": args.d_sae,
                          "new_tokens": args.tokens, "tokens_per_s": rate,
                          "ratio_add": round(best["unsteered"] / best["add"], 3),
                          "ratio_clamp": round(best["unsteered"] / best["clamp"], 3)}, indent=2))


if __name__ == "__main__":
    main()
