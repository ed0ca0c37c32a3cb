"""``sk.explain``: explain features with an LLM and score the explanations (a job, resumable, every call cached).

For each latent: the explainer reads its top contexts and writes an explanation; the scorer (if given) scores
it by detection and fuzzing on held-out contexts (see ``saekit.features.scoring``). Non-activating contexts
come from a pool of windows of the analysed data, drawn once per job, on which the SAE is run again so a
window counts as non-activating for a latent only where it fires on none of its tokens.

Results go to ``jobs/<id>/explanations.jsonl`` as each latent finishes (a resumed job skips those), the LLM
explanations become ``llm`` labels with their provenance (explainer, scorer, job) and scores at the end, in
one transaction. ``job.result()`` is a DataFrame, one row per latent.
"""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from saekit._checks import check_choice, check_positive_int
from saekit._visible import visible
from saekit.errors import ConfigError
from saekit.features import labels, scoring
from saekit.features.llm import CachedChat, as_backend, backend_from_spec
from saekit.jobs.job import Job, submit
from saekit.jobs.kinds import job_kind
from saekit.jobs.spec import JobSpec, spec_field
from saekit.workspace import Workspace

RESULTS = "explanations.jsonl"
POOL_WINDOWS = 256
MODEL_BATCH = 32  # pool windows a forward pass reads at once (right-padded; a causal model's rows are unchanged)


@dataclass(frozen=True)
class ExplainSpec(JobSpec):
    """An explain job's spec (``sk.explain`` builds it)."""
    analysis: str = spec_field(doc="the analysis' id")
    folder: str = spec_field(doc="the analysis' tables (a folder or URL)")
    features: list[int] = spec_field(doc="the latents explained and scored")
    explainer: dict | None = spec_field(doc="the explaining chat model's ``spec()`` (None: explanations given)")
    scorer: dict | None = spec_field(doc="the scoring chat model's ``spec()`` (None: no scores)")
    explanations: dict[str, str] | None = spec_field(doc="given explanations by latent (None: the explainer's)")
    n_examples: int = spec_field(doc="top examples shown to the explainer")
    n_score: int = spec_field(doc="activating and non-activating examples scored per latent")
    method: str = spec_field(doc="'yes_no' or 'likelihood'")
    seed: int = spec_field(doc="the scoring examples' seed")
    device: str = spec_field(volatile=True, doc="where a local chat model and the SAE run")


def explain(feats, features=None, *, explainer=None, scorer=None, explanations: dict[int, str] | None = None,
            n_examples: int = 10, n_score: int = 10, method: str = "auto", seed: int = 0, device: str = "auto",
            background: bool = True,
            force: bool = False, name: str | None = None, progress: bool = True) -> Job:
    """Explain ``features`` of an analysis (ids; all latents that fired by default) with ``explainer`` (a chat
    ``LanguageModel``, ``LocalChat`` or ``OpenAIChat``), and score each explanation with ``scorer`` (the same
    kinds; None: no scores) by detection and fuzzing on ``n_score`` held-out activating and as many
    non-activating contexts. ``explanations={latent: text}`` scores your own explanations instead of asking an
    explainer (they are not written as labels). The explainer sees the top ``n_examples`` contexts. ``method``:
    ``"yes_no"``, ``"likelihood"`` (local scorers only) or ``"auto"`` (likelihood where the scorer allows it);
    see ``saekit.features.scoring``."""
    ws = feats.workspace
    if features is None:
        features = feats.ids[feats.column("count") > 0].tolist()
    features = [labels.check_feature(i, feats.n_latents) for i in features]
    if not features:
        raise ConfigError("no features to explain (none of this view's latents fired)")
    check_positive_int("n_examples", n_examples, example="10")
    check_positive_int("n_score", n_score, example="10")
    if explanations is not None:
        explanations = {labels.check_feature(i, feats.n_latents): labels.check_label(t) for i, t in explanations.items()}
        missing = sorted(set(features) - set(explanations))
        if missing:
            raise ConfigError(f"no explanation given for feature(s) {missing[:10]}")
        if scorer is None:
            raise ConfigError("explanations given but no scorer: pass scorer= to score them")
    elif explainer is None:
        raise ConfigError("pass explainer= (a chat model: sk.load_model(...), LocalChat or OpenAIChat)")
    backends = [as_backend(b) for b in (explainer, scorer) if b is not None and not (b is explainer and explanations)]
    for backend in backends:
        backend.check()
    check_choice("method", method, ("auto", "yes_no", "likelihood"))
    local = scorer is not None and hasattr(as_backend(scorer), "continuation_logprob")
    if method == "likelihood" and scorer is not None and not local:
        raise ConfigError("method='likelihood' needs a local scorer (an HTTP endpoint gives no prompt log-probabilities)",
                          suggestion="use method='yes_no' (or 'auto')")
    method = ("likelihood" if local else "yes_no") if method == "auto" else method
    spec = {"analysis": feats.id, "folder": str(feats.folder), "features": features,
            "explainer": as_backend(explainer).spec() if explainer is not None and explanations is None else None,
            "scorer": as_backend(scorer).spec() if scorer is not None else None,
            "explanations": {str(k): v for k, v in explanations.items()} if explanations else None,
            "n_examples": n_examples, "n_score": n_score, "method": method, "seed": seed, "device": device}
    return submit("explain", spec, workspace=ws, background=background, force=force, name=name, progress=progress)


# -- the job ------------------------------------------------------------------------------------------------

def _load_result(ws: Workspace, result: dict):
    import pandas as pd

    rows = [json.loads(line) for line in open(result["path"], encoding="utf-8")] if result.get("path") else []
    frame = pd.DataFrame(rows)
    return frame.set_index("latent").sort_index() if len(frame) else frame


def negative_pool(feats, sae, seed: int, device: str):
    """Windows of the analysed data (examples of any latent, drawn at random) and, for each, which latents fire on
    any of its tokens: ``(examples, fires [n_windows, d_sae] bool)``."""
    import torch

    from saekit.activations.store import ActivationStore
    from saekit.features.featureset import Example
    from saekit.features.tables import reading
    from saekit.models.language_model import right_padded

    shared = feats._shared
    file = shared.examples_file
    rng = np.random.default_rng(seed)
    groups = sorted(rng.choice(file.num_row_groups, size=min(4, file.num_row_groups), replace=False).tolist())
    with reading(feats.folder, "examples.parquet"):
        table = file.read_row_groups(groups, columns=["row", "center", "tokens"])
    rows = table.column("row").to_numpy()
    _, first = np.unique(rows, return_index=True)  # one window per source row
    picked = rng.permutation(first)[:POOL_WINDOWS]
    vocab, source, hook = shared.vocab, feats.meta["source"], feats.meta["hook_point"]
    store = ActivationStore(source["store"]["location"], feats.workspace) if "store" in source else None
    lm = None
    if store is None:
        from saekit.models.loading import load_model_from_ref

        lm = load_model_from_ref(source["model"], device=device)
    windows, texts, fires = [], [], []
    with torch.no_grad():
        for i in sorted(picked.tolist(), key=lambda j: rows[j]):
            row, center = int(rows[i]), int(table.column("center")[i].as_py())
            ids = table.column("tokens")[i].as_py()
            inside = [j for j, t in enumerate(ids) if t >= 0]
            if store is not None:
                lo, hi = row - center + inside[0], row - center + inside[-1] + 1
                fires.append(_fires(sae, store.read(hook, lo, hi)))
            else:
                texts.append([ids[j] for j in inside])
            windows.append(Example(value=0.0, row=row, tokens=[vocab[t] if t >= 0 else "" for t in ids], token_ids=ids,
                                   values=[0.0] * len(ids), center=center))
        for lo in range(0, len(texts), MODEL_BATCH):  # the model over the windows, a batch at a time
            assert lm is not None  # loaded above when there is no store
            part = texts[lo:lo + MODEL_BATCH]
            input_ids, mask = right_padded(part, lm.tokenizer)
            x = lm.run_with_cache(input_ids, hook, attention_mask=mask)[hook]
            fires.extend(_fires(sae, x[j, :len(t)]) for j, t in enumerate(part))
    return windows, np.stack(fires) if fires else np.zeros((0, sae.d_sae), dtype=bool)


def _fires(sae, x) -> np.ndarray:
    """Which latents of ``sae`` fire on any row of ``x`` ``[d_sae]`` bool."""
    return (sae.encode(x.float().to(sae.device)) > 0).any(0).cpu().numpy()


def _first_line(text: str) -> str | None:
    """The explanation in a reply: its first non-empty line, unquoted; None when the reply says nothing."""
    line = next((part.strip() for part in (text or "").strip().splitlines() if part.strip()), "")
    line = line.strip("\"'` ").removeprefix("Explanation:").strip()
    return labels.one_line(line)[:300] if line.strip() else None  # a label: no control characters


def explain_one(feature, explainer, scorer, pool, fires, spec: ExplainSpec, given: str | None) -> dict:
    """Explain and score one feature; what it used and cost."""
    rng = np.random.default_rng([spec.seed, feature.id])
    n_examples, n_score = spec.n_examples, spec.n_score
    tokens_in = tokens_out = 0
    if given is None:
        reply = explainer.complete(scoring.explanation_messages(feature.examples[:n_examples]))
        explanation, tokens_in, tokens_out = _first_line(reply.text), reply.tokens_in, reply.tokens_out
    else:
        explanation = given
    out = {"latent": feature.id, "explanation": explanation}
    if scorer is not None and explanation is not None:
        held_out = [e for q in feature.quantiles for e in q.examples] + feature.examples[n_examples:]
        positives = [held_out[i] for i in rng.permutation(len(held_out))[:n_score]]
        quiet = np.flatnonzero(~fires[:, feature.id])
        negatives = [pool[i] for i in rng.permutation(quiet)[:n_score]]

        likelihood = spec.method == "likelihood"

        def ask(kind: str, text: str) -> float:
            nonlocal tokens_in, tokens_out
            if likelihood:
                prefix = scoring.detection_prefix(text) if kind == "detection" else scoring.fuzzing_prefix(text)
                reply = scorer.continuation_logprob(prefix, " " + explanation)
                score = reply.logprobs["continuation"]
            else:
                make = scoring.detection_messages if kind == "detection" else scoring.fuzzing_messages
                reply = scorer.choice_logprobs(make(explanation, text), scoring.CHOICES)
                score = scoring.margin(reply)
            tokens_in, tokens_out = tokens_in + reply.tokens_in, tokens_out + reply.tokens_out
            return score

        def accuracy(pos, neg):
            threshold = float(np.median(pos + neg)) if likelihood and pos and neg else 0.0
            return scoring.balanced_accuracy(pos, neg, threshold)

        text = lambda e: "".join(e.tokens).replace("\n", "\\n")  # noqa: E731
        det_pos = [ask("detection", text(e)) for e in positives]
        det_neg = [ask("detection", text(e)) for e in negatives]
        fuzz_pos, fuzz_neg = [], []
        for e in positives:
            wrong = scoring.fuzzed_marks(e, rng)
            if wrong is None:
                continue
            fuzz_pos.append(ask("fuzzing", scoring.marked(e.tokens, scoring.firing(e))))
            fuzz_neg.append(ask("fuzzing", scoring.marked(e.tokens, wrong)))
        out.update(detection_auc=scoring.auc(det_pos, det_neg), detection_balanced_accuracy=accuracy(det_pos, det_neg),
                   fuzzing_auc=scoring.auc(fuzz_pos, fuzz_neg), fuzzing_balanced_accuracy=accuracy(fuzz_pos, fuzz_neg),
                   n_activating=len(det_pos), n_non_activating=len(det_neg))
    out.update(tokens_in=tokens_in, tokens_out=tokens_out)
    return out


def _done(path) -> dict[int, dict]:
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["latent"]] = row
            except (ValueError, KeyError):  # a line cut by a kill: that latent runs again (from the cache)
                continue
    return done


@job_kind("explain", load_result=_load_result, spec=ExplainSpec)
def run_explain(ctx, spec: ExplainSpec) -> dict:
    """The explain job: per latent, explain (cached LLM calls), score, append the result; then the labels."""
    from saekit.features.featureset import FeatureSet

    feats = FeatureSet(spec.folder, workspace=ctx.workspace)
    cache = ctx.workspace.dir("cache", "llm")
    ctx.progress(0, len(spec.features), unit="latents", phase="loading the models")
    explainer = CachedChat(backend_from_spec(spec.explainer, spec.device), cache) if spec.explainer else None
    scorer = None
    if spec.scorer:
        scorer = explainer if spec.scorer == spec.explainer else CachedChat(backend_from_spec(spec.scorer, spec.device), cache)
    pool, fires = [], None
    if scorer is not None:
        ctx.progress(0, len(spec.features), unit="latents", phase="finding non-activating contexts")
        pool, fires = negative_pool(feats, feats.sae(device="cpu").eval(), spec.seed, spec.device)
    path = ctx.dir / RESULTS
    done = _done(path)
    todo = [i for i in spec.features if i not in done]
    given = {int(k): v for k, v in (spec.explanations or {}).items()}
    lock, started = threading.Lock(), time.monotonic()
    ctx.progress(len(done), len(spec.features), unit="latents", phase="explaining" if explainer else "scoring")

    def work(latent: int) -> None:
        ctx.check_cancelled()
        row = explain_one(feats.feature(latent), explainer, scorer, pool, fires, spec, given.get(latent))
        with lock:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            done[latent] = row
            ctx.progress(len(done), len(spec.features), unit="latents")
            said = (f'"{visible(row["explanation"])}"' if row["explanation"] is not None
                    else "no explanation (an empty answer)")
            ctx.event(f"latent {latent}: {said}" + "".join(
                f", {k} {row[k]:.3f}" for k in ("detection_auc", "fuzzing_auc") if row.get(k) is not None)
                + f" ({row['tokens_in']} tokens in, {row['tokens_out']} out)", level="debug", latent=latent,
                tokens_in=row["tokens_in"], tokens_out=row["tokens_out"])

    workers = min(getattr(explainer or scorer, "concurrency", 1), getattr(scorer or explainer, "concurrency", 1))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool_:
            for future in [pool_.submit(work, latent) for latent in todo]:
                future.result()
    else:
        for latent in todo:
            work(latent)
    rows = [done[i] for i in spec.features]
    if explainer is not None:
        _write_labels(ctx, feats, spec, rows, explainer, scorer)
    backends = [b for b in (explainer, scorer if scorer is not explainer else None) if b is not None]
    summary = {"path": str(path), "n": len(rows), "calls": sum(b.calls for b in backends),
               "cache_hits": sum(b.hits for b in backends), "seconds": round(time.monotonic() - started, 1)}
    for key in ("detection_auc", "fuzzing_auc"):
        values = [r[key] for r in rows if r.get(key) is not None]
        summary[f"mean_{key}"] = float(np.mean(values)) if values else None
    return summary


def _write_labels(ctx, feats, spec: ExplainSpec, rows, explainer, scorer) -> None:
    """The explanations as ``llm`` labels, once per job: a resumed job whose labels reached the journal (the
    truth a registry is rebuilt from) only makes sure the registry holds them, it never writes them again."""
    from saekit.registry.labels import add_labels, read_journal

    journalled = [r for r in read_journal(feats.journal_folder)
                  if r["source"] == "llm" and labels.provenance_of(r).get("job") == ctx.job_id]
    if journalled:  # killed between the journal and the registry: the same rows, once
        add_labels(ctx.workspace, journalled)
        return
    if any(labels.provenance_of(r).get("job") == ctx.job_id
           for r in labels.label_rows(ctx.workspace, feats.id) if r["source"] == "llm"):
        return
    provenance = {"explainer": explainer.name, "explainer_model": explainer.model_name,
                  "scorer": scorer.name if scorer else None, "scorer_model": scorer.model_name if scorer else None,
                  "job": ctx.job_id}
    score_keys = ("detection_auc", "detection_balanced_accuracy", "fuzzing_auc", "fuzzing_balanced_accuracy")
    batch = [labels.make_row(feats.id, r["latent"], labels.one_line(r["explanation"]), "llm", provenance=provenance,
                             scores={k: r[k] for k in score_keys if k in r and r[k] is not None and math.isfinite(r[k])})
             for r in rows if r["explanation"] is not None]  # an empty answer labels nothing
    labels.write(ctx.workspace, feats.journal_folder, batch)
