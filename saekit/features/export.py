"""Features as JSON in the layout Neuronpedia takes for dashboard uploads (SAEDashboard's
``NeuronpediaDashboardBatch``): one batch of features, each with its logit lens (``pos_str``/``neg_str``),
density (``frac_nonzero``), activation histogram, co-occurring latents and activation contexts. Top
contexts are marked ``bin_min = -1`` with ``bin_max`` the latent's maximum; quantile contexts carry their
bin's range and the share of the latent's activations in it (``bin_contains``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from saekit._fs import write_atomic
from saekit.errors import ConfigError


def chosen(feats, features) -> list:
    """The features to export: latent ids (or Features), or the first 50 of the view."""
    if features is None:
        return feats.features(feats.ids[:50])
    if isinstance(features, int):
        features = [features]
    features = list(features)
    ids = [f for f in features if not hasattr(f, "examples")]
    read = iter(feats.features(ids))  # their labels in one query
    out = [f if hasattr(f, "examples") else next(read) for f in features]
    if not out:
        raise ConfigError("no features to export: give latent ids, e.g. features=[3, 17]")
    return out


def _round(values, digits: int = 3) -> list[float]:
    return [round(float(v), digits) if v is not None and math.isfinite(v) else 0.0 for v in values]


def _activation(example, bin_min: float, bin_max: float, bin_contains: float) -> dict:
    keep = [i for i, t in enumerate(example.token_ids) if t >= 0]  # the window inside the document
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": bin_contains,
            "tokens": [example.tokens[i] for i in keep], "values": _round([example.values[i] for i in keep])}


def neuronpedia_feature(feature, n_tokens: int) -> dict:
    hist = feature.histogram
    centres = [math.sqrt(lo * hi) if lo > 0 and math.isfinite(hi) else (hi if lo == 0 else lo)
               for lo, hi in zip(hist["edges"][:-1], hist["edges"][1:])]
    used = [i for i, c in enumerate(hist["counts"]) if c]
    activations = [_activation(e, -1, round(feature.max, 3), -1) for e in feature.examples]
    share = 1 / len(feature.quantiles) if feature.quantiles else 0
    for q in feature.quantiles:
        activations += [_activation(e, round(q.low, 3), round(q.high, 3), share) for e in q.examples]
    logits = feature.logits or {"top": [], "bottom": []}
    return {
        "feature_index": feature.id,
        "neg_str": [t for t, _ in logits["bottom"]], "neg_values": _round(v for _, v in logits["bottom"]),
        "pos_str": [t for t, _ in logits["top"]], "pos_values": _round(v for _, v in logits["top"]),
        "frac_nonzero": feature.frequency,
        "freq_hist_data_bar_values": _round(centres[i] for i in used),
        "freq_hist_data_bar_heights": [hist["counts"][i] for i in used],
        "correlated_features_indices": [i for i, _ in feature.cooccurring],
        "correlated_features_l1": _round(s for _, s in feature.cooccurring),
        "n_tokens_in_prompt": len(feature.examples[0].tokens) if feature.examples else 0,
        "n_prompts_total": n_tokens,
        "activations": activations,
    }


def to_neuronpedia(feats, path: str | Path, features=None, *, model_id: str = "", sae_id: str = "") -> Path:
    """Write the chosen features as one Neuronpedia batch file at ``path``."""
    layer = _layer(feats.meta.get("hook_point") or "")
    batch = {"model_id": model_id, "layer": layer, "sae_set": sae_id,
             "features": [neuronpedia_feature(f, feats.n_tokens) for f in chosen(feats, features)]}
    path = Path(path)
    write_atomic(path, json.dumps(batch))
    return path


def _layer(hook_point: str) -> int:
    parts = hook_point.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else 0
