"""The auto-interpretation summary (SAEBench's ``autointerp``): how well the LLM explanations of a random sample
of latents predict where they fire, from the scores ``sk.explain`` gave them (detection and fuzzing; see
``saekit.features.scoring``).

``autointerp_score`` is the mean detection balanced accuracy over the sampled latents, the closest of saekit's
scores to SAEBench's (the share of 14 sequences whose activity the scorer predicts right); ``autointerp_std_dev``
their standard deviation. Beside them: the mean detection and fuzzing AUCs, each with a 95% interval
(``*_ci``, its half-width). Latents are sampled at random (seeded) among those scored; the latest scored LLM
label of each latent counts.
"""

from __future__ import annotations

import json
import statistics

import numpy as np

from saekit.errors import ConfigError
from saekit.evals.probing import interval

SCORES = ("detection_balanced_accuracy", "detection_auc", "fuzzing_auc", "fuzzing_balanced_accuracy")


def scored_latents(ws, analysis: str) -> dict[int, dict]:
    """Each latent's latest LLM label scores, for the latents that have them."""
    from saekit.registry.labels import label_rows

    latest: dict[int, dict] = {}
    for row in label_rows(ws, analysis):
        if row["source"] == "llm" and row.get("scores"):
            scores = json.loads(row["scores"]) if isinstance(row["scores"], str) else row["scores"]
            if scores:
                latest[int(row["feature"])] = scores
    return latest


def autointerp_summary(ws, analysis: str, *, n_latents: int, seed: int) -> dict:
    """``{"metrics": {...}, "details": {...}}`` of the explanations scored in analysis ``analysis``."""
    scored = scored_latents(ws, analysis)
    if not scored:
        raise ConfigError(f"no latent of analysis {analysis} has scored explanations, so there is no auto-interpretation "
                          "score to summarise", suggestion="run sk.explain(feats, explainer=..., scorer=...) first, "
                          "or leave 'autointerp' out of metrics=")
    latents = sorted(scored)
    chosen = sorted(np.random.default_rng(seed).permutation(latents)[:n_latents].tolist())
    metrics: dict[str, float] = {"latents": float(len(chosen))}
    for key in SCORES:
        values = [scored[i][key] for i in chosen if isinstance(scored[i].get(key), (int, float))]
        mean, half = interval(values) if values else (float("nan"), float("nan"))
        metrics[key], metrics[f"{key}_ci"] = mean, half
    accuracies = [scored[i]["detection_balanced_accuracy"] for i in chosen
                  if isinstance(scored[i].get("detection_balanced_accuracy"), (int, float))]
    metrics["autointerp_score"] = metrics["detection_balanced_accuracy"]
    metrics["autointerp_std_dev"] = statistics.stdev(accuracies) if len(accuracies) > 1 else float("nan")
    return {"metrics": metrics, "details": {"latents": {str(i): scored[i] for i in chosen}}}
