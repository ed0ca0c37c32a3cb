"""Feature-analysis benchmark; prints JSON.

    python benchmarks/analyze.py [--tokens 100000] [--d-sae 4096] [--d-model 256] [--speed-only] [--quick]

In one run, over the same activation store (a tiny random Llama, d_model 256, over Python's docstrings):

- ``ratio_pass``: tokens/s of the analysis' streaming pass (encode to sparse codes, counts, histograms,
  exact top-k and reservoir with context windows) over tokens/s of a bare SAE encode pass (the SAE's own
  ``encode`` on the same blocks read from the same store), alternating, best of ``--repeats``;
  ``ratio_job``: the same with the whole ``sk.analyze`` job in-process (the tables written at the end too);
- peak RSS of an analysis of N and of 10N tokens, each in a fresh process;
- ``search_ms``: ``FeatureSet.search`` over an analysis of 65,536 latents (median of 20);
- ``card_ms``: opening one feature (its examples read from Parquet) and ``to_dict`` (median of 20);
- ``delete_s``: ``job.delete()`` of an analysis whose examples file holds 10M rows (``--delete-rows``).

``--dashboard`` instead compares with SAEDashboard at its own benchmark's shapes, in one run: a random GPT-2
shape (d_model 256, 6 layers), a random ReLU SAE (d_sae 2048, about half its latents on each token, as
SAEDashboard's random SAE) at ``blocks.3.resid_post``, 256 x 128 tokens from the model (no store). saekit's
side is the whole ``sk.analyze`` job as a user runs it (a background worker, from submit to result: it starts
a process and imports the model's code, about 3.5 s here), the same job in this process with the model loaded
(what SAEDashboard's time covers), and ``export_html`` of 64 latents; SAEDashboard's is ``benchmarks/saedashboard_baseline.py`` run by the
``--dashboard-python`` interpreter (default ``.venv-dashboard/bin/python``; its docstring says how to make
that environment): ``SaeVisRunner.run`` over every latent and ``save_feature_centric_vis`` of 64.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOK = "blocks.2.resid_post"


def _setup(folder: Path, n_tokens: int, d_model: int = 256):
    """A workspace with an activation store of at least ``n_tokens`` rows (made once per folder)."""
    import saekit as sk
    from saekit.models.tiny import make_tiny_model, stdlib_docstrings

    ws = sk.set_workspace(folder / "ws")
    model = folder / f"tiny-llama-{d_model}"
    if not model.exists():
        make_tiny_model(model, "llama", d_model=d_model, n_layers=4, n_heads=d_model // 32,
                        num_key_value_heads=d_model // 64)
    corpus = folder / "docs.jsonl"
    if not corpus.exists():
        docs = stdlib_docstrings()
        copies = 1 + n_tokens // 150_000
        corpus.write_text("".join(json.dumps({"text": f"{c} {d}"}) + "\n" for c in range(copies) for d in docs))
    lm = sk.load_model(model, device="cpu")
    toks = sk.tokenize(sk.load_corpus(corpus), lm, context_length=128, background=False, progress=False).result()
    store = sk.extract(lm, toks, [HOOK], max_tokens=n_tokens, background=False, progress=False).result()
    return ws, lm, store


def _sae(d_in: int, d_sae: int, k: int = 32):
    import torch

    import saekit as sk

    torch.manual_seed(0)
    return sk.SAE.from_config(sk.SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=k))


def measure_speed(ws, lm, store, d_sae: int, n_tokens: int, repeats: int) -> dict:
    import torch

    import saekit as sk
    from saekit.features.accumulate import Accumulator
    from saekit.features.analysis import _block_rows, _Pass
    from saekit.activations.source import StoreSource

    sae = _sae(store.d_model, d_sae)
    block = _block_rows(sae, "auto")
    source = StoreSource(store, HOOK)

    def bare() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for rows in source.blocks(block, None, n_tokens):
                sae.encode(rows.x)
        return time.perf_counter() - t

    def streaming() -> float:
        t = time.perf_counter()
        acc = Accumulator(sae.d_sae, top_k=20, reservoir=100, context=(16, 4))
        stream = _Pass(sae, acc, 16, 4, block, "cpu")
        for rows in source.blocks(block, None, n_tokens):
            stream.feed(rows)
        stream.finish()
        return time.perf_counter() - t

    def job() -> float:
        t = time.perf_counter()
        sk.analyze(sae, store, model=lm, n_tokens=n_tokens, force=True, background=False, progress=False).result()
        return time.perf_counter() - t

    times = {"bare": [], "pass": [], "job": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("pass", streaming), ("job", job)):
            times[name].append(fn())
    best = {k: min(v) for k, v in times.items()}
    return {"d_sae": d_sae, "block_rows": block, "n_tokens": n_tokens,
            "bare_encode_tokens_per_s": round(n_tokens / best["bare"]),
            "pass_tokens_per_s": round(n_tokens / best["pass"]), "job_tokens_per_s": round(n_tokens / best["job"]),
            "ratio_pass": round(best["bare"] / best["pass"], 3), "ratio_job": round(best["bare"] / best["job"], 3)}


def _child_rss(folder: Path, d_sae: int, n_tokens: int) -> None:
    import saekit as sk

    sk.set_workspace(folder / "ws")
    store = sk.activation_stores()[0]  # the parent's store (it holds 10N tokens)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sk.analyze(_sae(store.d_model, d_sae), store, n_tokens=n_tokens, force=True, background=False,
               progress=False).result()
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "before_mb": base / 1024}))


def measure_rss(folder: Path, d_sae: int, n_tokens: int) -> dict:
    out = {}
    for factor in (1, 10):
        n = n_tokens * factor
        proc = subprocess.run([sys.executable, __file__, "--child-rss", str(folder), "--d-sae", str(d_sae),
                               "--tokens", str(n)], capture_output=True, text=True, check=True)
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        out[f"peak_rss_mb_{factor}x"] = round(line["peak_rss_mb"], 1)
        out[f"rss_before_analysis_mb_{factor}x"] = round(line["before_mb"], 1)  # the process with its imports and store open
    out["rss_ratio_10x_over_1x"] = round(out["peak_rss_mb_10x"] / out["peak_rss_mb_1x"], 3)
    return out


def measure_reading(ws, lm, store, n_latents: int) -> dict:
    import saekit as sk

    feats = sk.analyze(_sae(store.d_model, n_latents, k=64), store, model=lm, n_tokens=min(store.n_tokens, 20_000),
                       top_k=5, background=False, progress=False).result()
    queries = ["the", "python", "ing", "return", "file", "(", "list", "zzz"]
    search = []
    for i in range(20):
        t = time.perf_counter()
        feats.search(queries[i % len(queries)])
        search.append((time.perf_counter() - t) * 1e3)
    cards = []
    for i in range(20):
        t = time.perf_counter()
        feats[(i * 7919) % n_latents].to_dict()
        cards.append((time.perf_counter() - t) * 1e3)
    return {"n_latents": n_latents, "search_ms": round(statistics.median(search), 2),
            "search_ms_max": round(max(search), 2), "card_ms": round(statistics.median(cards), 2)}


def measure_delete(ws, lm, store, rows: int) -> dict:
    """An analysis whose examples.parquet holds ``rows`` example rows (written in row groups), then deleted."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import saekit as sk

    feats = sk.analyze(_sae(store.d_model, 256), store, n_tokens=min(store.n_tokens, 5_000), top_k=5, force=True,
                       background=False, progress=False).result()
    path = feats.folder / "examples.parquet"
    template = pq.read_table(path)
    rng = np.random.default_rng(0)
    group = 500_000
    t = time.perf_counter()
    with pq.ParquetWriter(path, template.schema, compression="zstd") as writer:
        for lo in range(0, rows, group):
            n = min(group, rows - lo)
            window = 21
            offsets = pa.array(np.arange(0, (n + 1) * window, window, dtype=np.int32))
            writer.write_table(pa.table({
                "latent": pa.array(np.sort(rng.integers(0, 256, n)).astype(np.int32)),
                "quantile": pa.array(np.full(n, -1, dtype=np.int16)), "rank": pa.array(np.zeros(n, dtype=np.int16)),
                "value": pa.array(rng.random(n, dtype=np.float32)), "row": pa.array(rng.integers(0, 10**9, n)),
                "tokens": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 50_000, n * window).astype(np.int32))),
                "values": pa.ListArray.from_arrays(offsets, pa.array(rng.random(n * window, dtype=np.float32))),
                "center": pa.array(np.full(n, 16, dtype=np.int16)),
            }, schema=template.schema))
    written = time.perf_counter() - t
    size = sum(p.stat().st_size for p in feats.folder.iterdir())
    t = time.perf_counter()
    sk.job(feats.id).delete()
    return {"example_rows": rows, "analysis_bytes": size, "write_s": round(written, 1),
            "delete_s": round(time.perf_counter() - t, 3), "gone": not feats.folder.exists()}


def measure_dashboard(folder: Path, python: str, repeats: int, quick: bool) -> dict:
    """saekit's analyze job and HTML export against SAEDashboard's, at SAEDashboard's shapes (see above)."""
    import torch

    from gpu import job_phase_seconds  # benchmarks/ is the script's folder

    import saekit as sk
    from saekit.models.tiny import make_tiny_model, stdlib_docstrings

    sk.set_workspace(folder / "ws")
    sequences, d_sae = (32, 256) if quick else (256, 2048)
    # the largest vocabulary a tokenizer trained on the docstrings reaches (about 14k; SAEDashboard's model has
    # GPT-2's 50,257: its logit tables multiply by a 3.5x larger unembedding)
    model = make_tiny_model(folder / "gpt2-256", "gpt2", d_model=256, n_layers=6, n_heads=8, vocab_size=50_257)
    lm = sk.load_model(model, device="cpu")
    corpus = folder / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in stdlib_docstrings()))
    toks = sk.tokenize(sk.load_corpus(corpus), lm, context_length=128, background=False, progress=False).result()
    torch.manual_seed(0)
    sae = sk.SAE.from_config(sk.SAEConfig(arch="relu", d_in=256, d_sae=d_sae))  # b_enc = 0: half fire
    sae.metadata["hook_point"] = "blocks.3.resid_post"
    out: dict = {"tokens": sequences * 128, "d_sae": d_sae, "vocab": len(lm.tokenizer)}
    job_s, here_s, html_s, job_phases = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        job = sk.analyze(sae, (lm, toks), n_tokens=sequences * 128, force=True, progress=False)
        submitted = time.perf_counter()
        feats = job.result(progress=False)
        job_s.append(time.perf_counter() - start)
        job_phases.append({"submit": round(submitted - start, 3), **job_phase_seconds(sk.job(feats.id))})
        start = time.perf_counter()  # in this process, the model loaded: what SAEDashboard's run_s covers
        sk.analyze(sae, (lm, toks), n_tokens=sequences * 128, force=True, background=False, progress=False).result()
        here_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        sk.job(feats.id).result().export_html(folder / "features.html", features=list(range(64)))
        html_s.append(time.perf_counter() - start)
    out |= {"saekit_job_s": round(min(job_s), 2), "saekit_in_process_s": round(min(here_s), 2),
            "saekit_job_phases_s": job_phases[job_s.index(min(job_s))],  # where the fastest job's time went
            "saekit_html_64_s": round(min(html_s), 3),
            "saekit_fired_share": round(float(sk.job(feats.id).result().to_pandas()["frequency"].mean()), 3)}
    if not Path(python).exists():
        out["saedashboard"] = f"no {python}: make it as benchmarks/saedashboard_baseline.py says"
        return out
    cmd = [python, str(Path(__file__).with_name("saedashboard_baseline.py"))] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    out["saedashboard"] = theirs
    out["job_speedup_over_saedashboard"] = round(theirs["run_s"] / min(job_s), 2)
    out["in_process_speedup_over_saedashboard"] = round(theirs["run_s"] / min(here_s), 2)
    out["html_speedup_over_saedashboard"] = round(theirs["html_64_s"] / min(html_s), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256, help="the random model's width (576: SmolLM2-135M's)")
    parser.add_argument("--speed-only", action="store_true", help="only the tokens/s ratios")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search-latents", type=int, default=65_536)
    parser.add_argument("--delete-rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--dashboard", action="store_true", help="only the comparison with SAEDashboard (above)")
    parser.add_argument("--dashboard-python", default=str(Path(__file__).resolve().parents[1] / ".venv-dashboard/bin/python"))
    parser.add_argument("--child-rss", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        _child_rss(Path(args.child_rss), args.d_sae, args.tokens)
        return
    if args.dashboard:
        with tempfile.TemporaryDirectory(prefix="saekit-bench-dashboard-") as tmp:
            result = measure_dashboard(Path(tmp), args.dashboard_python, 1 if args.quick else 2, args.quick)
        print(json.dumps({"benchmark": "analyze_vs_saedashboard", **result}, indent=2))
        return
    if args.quick:
        args.tokens, args.d_sae, args.repeats, args.search_latents, args.delete_rows = 20_000, 1024, 1, 4096, 200_000
    with tempfile.TemporaryDirectory(prefix="saekit-bench-analyze-") as tmp:
        folder = Path(tmp)
        ws, lm, store = _setup(folder, args.tokens * (1 if args.speed_only else 10), args.d_model)
        result = {"benchmark": "analyze", "d_model": args.d_model,
                  "speed": measure_speed(ws, lm, store, args.d_sae, args.tokens, args.repeats)}
        if args.speed_only:
            print(json.dumps(result, indent=2))
            return
        result |= {"memory": measure_rss(folder, args.d_sae, args.tokens),
                  "reading": measure_reading(ws, lm, store, args.search_latents),
                  "delete": measure_delete(ws, lm, store, args.delete_rows)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
