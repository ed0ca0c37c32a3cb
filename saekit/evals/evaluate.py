"""``sk.evaluate``: score an SAE by the measures the field trusts, as one resumable job whose results sit beside
the SAE's training run (``sk.runs()`` shows them as columns of that run) and as SAEBench JSON.

Metric families (one module each, in ``saekit/evals/``):

- ``core``: reconstruction and sparsity on the rows training held out, and with a model, CE and KL with the SAE
  spliced in (``core.py``);
- ``ground_truth``: recovery of a known dictionary, for SAEs trained on ``SyntheticFeatures`` (``ground_truth.py``);
- ``sparse_probing``: k-sparse probes on latents against probes on the activations (``probing.py``);
- ``absorption``: the first-letter task (``absorption.py``);
- ``autointerp``: the scored LLM explanations of an analysis, summarised (``autointerp.py``);
- ``steering``: steering by an SAE feature against DiffMean and prompting on one concept (``steering.py``).

Each family's result is committed as it finishes, so a killed job resumes at the next family, and its numbers
are logged as metrics named ``family/metric`` (``core/fvu``, ``sparse_probing/sae_top_1_test_accuracy``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from saekit._checks import check_positive_int
from saekit._faults import fault_point
from saekit.errors import ConfigError
from saekit.jobs import job_kind, submit
from saekit.jobs.spec import JobSpec, spec_field
from saekit.workspace import Workspace, as_workspace

FAMILIES = ("core", "ground_truth", "sparse_probing", "absorption", "autointerp", "steering")
NEEDS_MODEL = ("sparse_probing", "absorption", "steering")


@dataclass(frozen=True)
class EvaluateSpec(JobSpec):
    """An evaluate job's spec (``sk.evaluate`` builds it)."""
    sae: dict = spec_field(doc="the SAE's reference (its folder and a fingerprint)")
    run: dict | None = spec_field(doc="{'job': the training job, 'sae': its index} of the run scored (None: none)")
    metrics: list[str] = spec_field(doc="the metric families, in order")
    hook_point: str = spec_field(doc="the hook point the SAE reads")
    target_hook: str | None = spec_field(doc="a transcoder's output hook (None: an autoencoder)")
    source: dict | None = spec_field(doc="{'store': ...} or {'model': ..., 'tokens': ...}: the held-out rows of core")
    model: dict | None = spec_field(doc="the model's reference (CE, probing, absorption)")
    tokens: dict | None = spec_field(doc="the token store of the CE evaluation")
    include_bos: bool = spec_field(doc="whether the SAE was trained on BOS rows")
    eval_tokens: int = spec_field(doc="held-out rows of the reconstruction metrics")
    ce_tokens: int = spec_field(doc="tokens of the CE evaluation")
    truth: dict | None = spec_field(doc="the SyntheticConfig of ground_truth")
    truth_rows: int = spec_field(doc="held-out synthetic rows of ground_truth")
    analysis: dict | None = spec_field(doc="{'id', 'folder'} of the analysis whose explanations autointerp reads")
    probe_datasets: list[str] = spec_field(doc="sparse probing's datasets")
    ks: list[int] = spec_field(doc="sparse probing's k values")
    seeds: list[int] = spec_field(doc="seeds of the probes' samples and splits")
    absorption_words: int = spec_field(doc="words of the first-letter task")
    autointerp_latents: int = spec_field(doc="latents sampled for the autointerp summary")
    device: str = spec_field(volatile=True, doc="'auto', 'cpu', 'cuda'...")
    steering: dict | None = spec_field(None, omit_none=True, doc="the steering evaluation's concept texts and settings")


def evaluate(sae, source=None, *, metrics=None, model=None, features=None, truth=None, eval_tokens: int | None = None,
             ce_tokens: int = 8_192, truth_rows: int = 16_384, probe_datasets=("stdlib_topic", "code_or_prose"),
             ks=(1, 2, 5), seeds: int | list[int] = 3, absorption_words: int = 1500, autointerp_latents: int = 100,
             concept=None, steer_feature: int | None = None, steer_prompts=None, steer_coeffs=None,
             fluency_budget: float = 1.0, device: str = "auto", workspace: Workspace | str | None = None,
             background: bool = True, force: bool = False, name: str | None = None, progress: bool = True):
    """Evaluate ``sae`` (an ``sk.SAE`` or a finished training job) as a job; its result is an ``Evaluation``.

    ``source``: an ``ActivationStore`` or ``(lm, token_store)`` whose held-out rows ``core`` reads (default: the
    one the SAE was trained on). ``model``: the ``LanguageModel`` for CE, sparse probing and absorption (default:
    the source's). ``features``: a ``FeatureSet`` of the SAE whose scored explanations ``autointerp`` summarises.
    ``truth``: the ``SyntheticFeatures`` an SAE trained on synthetic rows should recover (``ground_truth``; a store
    made by ``truth.store(n)`` names its own, so the default is that one).
    ``metrics``: families among ``core, ground_truth, sparse_probing, absorption, autointerp, steering``
    (default: every one its inputs allow).
    ``concept=(texts_with, texts_without)``: the ``steering`` family steers toward that concept by ``steer_feature``
    (default: the latent that tells the texts apart best), by DiffMean and by prompting, along ``steer_coeffs`` over
    ``steer_prompts``, and compares them within a loss increase of ``fluency_budget`` nats (``saekit.evals.steering``).
    ``eval_tokens``: the held-out rows ``core`` reads, the last of the source (default: as many rows as training
    held out, so no training row is scored; 50,000 for an SAE from elsewhere).
    ``seeds``: how many seeds (or which) the probes' samples are drawn with; intervals are over them.
    """
    from saekit.activations.source import sae_hook
    from saekit.features.analysis import sae_reference

    ws = as_workspace(workspace if workspace is not None else getattr(features, "workspace", None))
    check_positive_int("eval_tokens", eval_tokens, allow_none=True)
    if absorption_words < 100:
        raise ConfigError(f"absorption_words={absorption_words} is too few for the first-letter task's probes and "
                          "its in-context examples", suggestion="use absorption_words >= 100 (1500 is the default)")
    for label, value in (("ce_tokens", ce_tokens), ("truth_rows", truth_rows),
                         ("absorption_words", absorption_words), ("autointerp_latents", autointerp_latents)):
        check_positive_int(label, value)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("seeds=0: give at least one seed (3 gives an interval)")
    for k in ks:
        check_positive_int("k", k)
    ks = sorted({int(k) for k in ks})
    sae_ref, sae_obj = sae_reference(sae, ws)
    meta: dict = getattr(sae_obj, "metadata", None) or {}
    hook, target = sae_hook(sae_obj), sae_hook(sae_obj, "target_hook")
    if eval_tokens is None:
        held = (meta.get("eval") or {}).get("eval_tokens")
        eval_tokens = int(held) if isinstance(held, (int, float)) and held > 0 else 50_000
    source_ref, model_ref, tokens_ref, include_bos, hook = _source(source, meta, hook, target, ws)
    if model is not None:
        model_ref = model.ref
    if truth is not None and not hasattr(truth, "config"):
        raise ConfigError(f"truth must be an sk.SyntheticFeatures; got {type(truth).__name__}")
    if truth is None:
        truth = _synthetic_truth(source_ref, ws)
    steering = _steering_settings(concept, steer_feature, steer_prompts, steer_coeffs, fluency_budget, sae_obj)
    available = {"core": source_ref is not None, "ground_truth": truth is not None,
                 "sparse_probing": model_ref is not None, "absorption": model_ref is not None and not target,
                 "autointerp": features is not None, "steering": model_ref is not None and steering is not None}
    chosen = [f for f in FAMILIES if available[f]] if metrics is None else list(metrics)
    if target and "absorption" in chosen:
        raise ConfigError("absorption compares decoder rows with a first-letter probe of the SAE's input; a "
                          "transcoder's decoder writes another hook point, so the measure does not apply",
                          suggestion="leave 'absorption' out of metrics= for a transcoder")
    for family in chosen:
        if family not in FAMILIES:
            raise ConfigError(f"no metric family {family!r}; choose among {list(FAMILIES)}")
        if not available[family]:
            raise ConfigError(f"metric {family!r} needs " + {
                "core": "held-out activations: pass source= (an ActivationStore or (lm, token_store))",
                "ground_truth": "truth= (the sk.SyntheticFeatures the SAE's rows came from)",
                "sparse_probing": "a model: pass model=lm (or a source made by sk.extract, which names its model)",
                "absorption": "a model: pass model=lm (or a source made by sk.extract, which names its model)",
                "autointerp": "features= (a FeatureSet of this SAE with explanations scored by sk.explain)",
                "steering": "concept=(texts with the concept, texts without it) and a model (model=lm)"}[family])
    if not chosen:
        raise ConfigError("nothing to evaluate: give source=, model=, truth=, features= or concept=")
    if hook is None and any(f in chosen for f in ("core", *NEEDS_MODEL)):
        raise ConfigError("the SAE does not say which hook point it reads (its metadata has no hook_point)",
                          suggestion="set sae.metadata['hook_point'] = 'blocks.6.resid_post' (for example)")
    spec = EvaluateSpec(
        sae=sae_ref, run=_run_of(sae_ref, meta, ws), metrics=chosen, hook_point=hook or "", target_hook=target,
        source=source_ref, model=model_ref, tokens=tokens_ref, include_bos=include_bos, eval_tokens=eval_tokens,
        ce_tokens=ce_tokens if tokens_ref is not None and model_ref is not None else 0,
        truth=truth.config.to_dict() if truth is not None else None, truth_rows=truth_rows,
        analysis={"id": features.id, "folder": str(features.folder)} if features is not None else None,
        probe_datasets=list(probe_datasets), ks=ks, seeds=seed_list, absorption_words=absorption_words,
        autointerp_latents=autointerp_latents, steering=steering, device=device)
    return submit("evaluate", spec, workspace=ws, background=background, force=force, name=name, progress=progress)


def _steering_settings(concept, feature, prompts, coeffs, budget, sae) -> dict | None:
    """The steering family's settings, checked (None without a concept)."""
    from saekit.evals.steering import COEFFS, PROMPTS

    if concept is None:
        return None
    if not (isinstance(concept, (tuple, list)) and len(concept) == 2
            and all(not isinstance(s, str) and len(s) >= 2 and all(isinstance(t, str) and t.strip() for t in s)
                    for s in concept)):
        raise ConfigError("concept must be (texts with the concept, texts without it): two lists of at least two "
                          "non-empty strings each", suggestion='e.g. concept=(["It rained all day", ...], '
                                                              '["The meeting is at noon", ...])')
    if feature is not None and not (isinstance(feature, int) and 0 <= feature < sae.d_sae):
        raise ConfigError(f"steer_feature={feature!r} is not a latent of this SAE (0..{sae.d_sae - 1})")
    prompts = list(PROMPTS if prompts is None else prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError(f"steer_prompts must be a non-empty list of strings; got {prompts!r}")
    coeffs = [float(c) for c in (COEFFS if coeffs is None else coeffs)]
    if len(coeffs) < 2 or any(not math.isfinite(c) or c < 0 for c in coeffs):
        raise ConfigError(f"steer_coeffs={coeffs!r}: give at least two finite coefficients >= 0, e.g. [0, 0.5, 1, 2]")
    if not (isinstance(budget, (int, float)) and budget > 0):
        raise ConfigError(f"fluency_budget={budget!r} must be a positive number of nats, e.g. 1.0")
    return {"with": list(concept[0]), "without": list(concept[1]), "feature": feature, "prompts": prompts,
            "coeffs": sorted(set(coeffs)), "fluency_budget": float(budget), "max_new_tokens": 24}


def _synthetic_truth(source_ref: dict | None, ws: Workspace):
    """The ``SyntheticFeatures`` a store made by ``truth.store(n)`` came from (its attrs keep the config), else None."""
    if not source_ref or "store" not in source_ref:
        return None
    from saekit.activations.store import ActivationStore
    from saekit.evals.synthetic import SyntheticConfig, SyntheticFeatures

    config = ActivationStore(source_ref["store"]["location"], ws).attrs.get("synthetic")
    return SyntheticFeatures(SyntheticConfig(**config)) if isinstance(config, dict) else None


def _source(source, meta: dict, hook: str | None, target: str | None, ws: Workspace
            ) -> tuple[dict | None, dict | None, dict | None, bool, str | None]:
    """(source reference, model reference, token store reference, include_bos, hook point) of ``source``, or of
    the source the SAE was trained on when ``source`` is None."""
    from saekit.activations.source import describe_source
    from saekit.activations.store import ActivationStore

    if source is None:
        trained = meta.get("source") or {}
        if "store" in trained:
            source = ActivationStore(trained["store"]["location"], ws)
        elif "model" in trained:
            return ({"model": trained["model"], "tokens": trained["tokens"]}, trained["model"], trained["tokens"],
                    False, hook)
        else:
            return None, None, None, False, hook
    if hook is None and isinstance(source, tuple):
        raise ConfigError("the SAE does not say which hook point it reads (its metadata has no hook_point)",
                          suggestion="set sae.metadata['hook_point'] = 'blocks.6.resid_post' (for example)")
    try:
        described = describe_source(source, ws, hook, target_hook=target)
    except ConfigError as error:
        if hook is not None:
            raise
        raise ConfigError(f"the SAE does not say which hook point it reads (its metadata has no hook_point): {error}",
                          suggestion="set sae.metadata['hook_point'] to the one it reads") from error
    if described.store is not None:
        attrs = described.store.attrs
        return (described.ref, attrs.get("model"), attrs.get("tokens"), bool(attrs.get("include_bos", False)),
                described.hook_point)
    return described.ref, described.ref["model"], described.ref["tokens"], False, described.hook_point


def _run_of(sae_ref: dict, meta: dict, ws: Workspace) -> dict | None:
    """The training run an SAE of this workspace came from: its job and its index in that job's sweep."""
    job_id = meta.get("job_id")
    if not isinstance(job_id, str):
        return None
    path = Path(sae_ref["path"])
    index = re.fullmatch(r"sae(\d+)", path.name)
    return {"job": job_id, "sae": int(index.group(1)) if index else None}


# -- the job -----------------------------------------------------------------------------------------------------

def _scored_run(spec: dict) -> tuple[str, int | None] | None:
    run = spec.get("run")
    return (run["job"], run.get("sae")) if run else None


def _load_result(ws: Workspace, result: dict):
    from saekit.evals.report import Evaluation

    return Evaluation(result, ws)


@job_kind("evaluate", load_result=_load_result, spec=EvaluateSpec, scores=_scored_run)
def run_evaluate(ctx, spec: EvaluateSpec) -> dict:
    """The evaluate job: each family in turn, committed as it ends (a resumed job skips those done)."""
    from saekit.models.loading import load_model_from_ref, resolve_device
    from saekit.sae.model import SAE

    device = resolve_device(spec.device)
    done: dict = dict((ctx.resume_point or {}).get("results", {}))
    sae = SAE.load(spec.sae["path"], device=device).eval()
    lm = None
    started = time.monotonic()
    for index, family in enumerate(spec.metrics):
        if family in done:
            continue

        def progress(fraction: float, index=index, family=family) -> None:
            ctx.progress(round(100 * (index + fraction) / len(spec.metrics), 1), 100, unit="%", phase=family)

        progress(0.0)
        if lm is None and (family in NEEDS_MODEL or (family == "core" and spec.ce_tokens)
                           or (family == "core" and spec.source and "model" in spec.source)):
            lm = load_model_from_ref(spec.model or (spec.source or {})["model"], device=device)
        t0 = time.monotonic()
        result = _family(family, ctx, spec, sae, lm, progress)
        result["seconds"] = round(time.monotonic() - t0, 1)
        done[family] = result = _finite(result)
        numbers = {f"{family}/{k}": v for k, v in result["metrics"].items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        ctx.metrics(0, **numbers)
        ctx.event(f"{family}: " + ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in list(numbers.items())[:8]))
        for warning in result.get("warnings", []):
            ctx.event(f"{family}: {warning}", level="warning")
        ctx.commit({"results": done})
        fault_point("evaluate:committed", ctx.attempt)
    ctx.progress(100, 100, unit="%", phase="done")
    return {"sae": spec.sae, "run": spec.run, "hook_point": spec.hook_point, "metrics": spec.metrics,
            "results": {f: done[f] for f in spec.metrics}, "seconds": round(time.monotonic() - started, 1),
            "config": {k: v for k, v in spec.to_dict().items() if k not in ("sae", "run", "device")}}


def _finite(value):
    """``value`` with NaN and infinities as None (a metric with nothing to measure: JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _family(family: str, ctx, spec: EvaluateSpec, sae, lm, progress) -> dict:
    from saekit.evals import absorption, autointerp, ground_truth, probing

    if family == "core":
        return _core(ctx, spec, sae, lm, progress)
    if family == "ground_truth":
        from saekit.evals.synthetic import SyntheticConfig, SyntheticFeatures

        truth = SyntheticFeatures(SyntheticConfig(**(spec.truth or {})))
        return ground_truth.recovery_over_seeds(sae, truth, spec.truth_rows, spec.seeds, progress)
    if family == "sparse_probing":
        return probing.sparse_probing(lm, sae, spec.hook_point, datasets=spec.probe_datasets, ks=spec.ks,
                                      seeds=spec.seeds, progress=progress)
    if family == "absorption":
        out = absorption.first_letter_absorption(lm, sae, spec.hook_point, words=spec.absorption_words,
                                                 seed=spec.seeds[0], progress=progress)
        if not out["metrics"]["letters_scored"]:
            out["warnings"] = [f"no letter's probe reached F1 0.6 on the model's activations at {spec.hook_point}: "
                               "the model does not represent first letters there, so nothing is scored"]
        return out
    if family == "steering":
        from saekit.evals.steering import steering_evaluation

        s = spec.steering or {}
        return steering_evaluation(lm, sae, s["with"], s["without"], feature=s["feature"], prompts=s["prompts"],
                                   coeffs=s["coeffs"], max_new_tokens=s["max_new_tokens"],
                                   fluency_budget=s["fluency_budget"], seed=spec.seeds[0], input_hook=spec.hook_point,
                                   output_hook=spec.target_hook or spec.hook_point, progress=progress)
    assert family == "autointerp" and spec.analysis is not None
    return autointerp.autointerp_summary(ctx.workspace, spec.analysis["id"], n_latents=spec.autointerp_latents,
                                         seed=spec.seeds[0])


def _core(ctx, spec: EvaluateSpec, sae, lm, progress) -> dict:
    from saekit.activations.source import open_source
    from saekit.data.tokens import TokenStore
    from saekit.evals import core

    assert spec.source is not None
    ws = ctx.workspace
    source, _ = open_source(spec.source, ws, spec.hook_point, target_hook=spec.target_hook,
                            eval_tokens=spec.eval_tokens, lm=lm)
    metrics = core.reconstruction_metrics(sae, core.held_out(source, spec.target_hook is not None))
    progress(0.5)
    warnings = []
    if spec.ce_tokens and lm is not None and spec.tokens is not None:
        tokens = TokenStore(spec.tokens["path"], ws)
        n_seq = max(1, math.ceil(spec.ce_tokens / tokens.context_length))
        sequences = range(max(0, tokens.n_sequences - n_seq), tokens.n_sequences)
        downstream = core.downstream_metrics(sae, lm, tokens, spec.hook_point, sequences,
                                             include_bos=spec.include_bos, target_hook=spec.target_hook)
        warnings = list(downstream.pop("warnings", []))
        metrics.update(downstream)
    return {"metrics": metrics, "details": {}, "warnings": warnings}
