"""Whether a training run's numbers can be read at face value: ``assess`` says ``ok``, ``suspicious`` or
``diverged``, with the reasons (what the widgets' amber badge and ``saekit show`` report).

A run diverged when its loss became NaN or infinite, grew tenfold over its lowest value, its held-out FVU is
above 1 (worse than predicting the mean), or its training FVU is above 1 and not below every earlier point (a
ReLU SAE's warm-up starts above 1 and falls: that is no divergence); it is suspicious when the downstream
evaluation's ``ce_recovered`` cannot be read (see ``evaluation.ce_warnings``).
"""

from __future__ import annotations

import math

LEVELS = ("ok", "suspicious", "diverged")


def _series(metrics: dict[tuple[int, str], float], base: str) -> dict[str, list[float]]:
    """``{prefix: values by step}`` of metric ``base`` (``""`` for one SAE, ``"sae0"``... for a sweep)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for (step, name), value in metrics.items():
        prefix, _, last = name.rpartition("/")
        if last == base:
            out.setdefault(prefix, []).append((step, value))
    return {k: [v for _, v in sorted(points)] for k, points in out.items()}


def assess(metrics: dict[tuple[int, str], float], evaluations: list[dict] | None = None) -> dict:
    """``{"level": "ok"|"suspicious"|"diverged", "reasons": [...]}`` from the logged metrics
    (``(step, name) -> value``) and the held-out evaluations of the SAEs (the job's result)."""
    reasons: list[tuple[str, str]] = []
    for prefix, losses in _series(metrics, "loss").items():
        who = f"SAE {prefix.removeprefix('sae')}: " if prefix else ""
        finite = [v for v in losses if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(finite) < len(losses):
            reasons.append(("diverged", f"{who}the loss became NaN or infinite"))
        elif finite and min(finite) > 0 and finite[-1] > 10 * min(finite):
            reasons.append(("diverged", f"{who}the loss grew from {min(finite):.3g} to {finite[-1]:.3g}"))
    for prefix, fvus in _series(metrics, "fvu").items():
        who = f"SAE {prefix.removeprefix('sae')}: " if prefix else ""
        # above 1 and not below every earlier point (a ReLU SAE starts above 1 and falls: no divergence)
        if len(fvus) >= 2 and math.isfinite(fvus[-1]) and fvus[-1] > 1 and fvus[-1] >= min(fvus[:-1]):
            reasons.append(("diverged", f"{who}training FVU {fvus[-1]:.3g} > 1 and not falling: worse than "
                                        "predicting the mean"))
    evaluations = evaluations or []
    for i, evaluation in enumerate(evaluations):
        who = f"SAE {i}: " if len(evaluations) > 1 else ""
        fvu = evaluation.get("fvu")
        if isinstance(fvu, (int, float)) and (not math.isfinite(fvu) or fvu > 1):
            reasons.append(("diverged", f"{who}held-out FVU {fvu:.3g} > 1: worse than predicting the mean"))
        for warning in evaluation.get("warnings", []):
            reasons.append(("suspicious", f"{who}{warning}"))
    level = max((lvl for lvl, _ in reasons), key=LEVELS.index, default="ok")
    return {"level": level, "reasons": list(dict.fromkeys(text for _, text in reasons))}
