"""Which features fire on a text: run the model over the text to the analysed hook point, encode with the
analysed SAE, and keep each token's strongest latents (``FeatureSet.on_text``). In a notebook the result is a
view of the text whose tokens open their features, and the features their cards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from saekit._provided import provided
from saekit.errors import ConfigError


@dataclass
class TextFeatures:
    """The latents that fired on each token of a text, strongest first."""

    text: str
    tokens: list[str]  # each token's text
    token_ids: list[int]
    top: list[list[tuple[int, float]]]  # per token its (latent, activation) pairs, strongest first
    featureset: Any = field(repr=False)  # the FeatureSet (not imported: featureset imports this module)

    def latents(self) -> list[int]:
        """Every latent that is among some token's strongest, most active first (by its largest activation)."""
        best: dict[int, float] = {}
        for pairs in self.top:
            for latent, value in pairs:
                best[latent] = max(best.get(latent, 0.0), value)
        return sorted(best, key=lambda i: (-best[i], i))

    def overview(self) -> list[dict]:
        """Each latent of ``latents()`` as the browser lists it (id, frequency, max, top tokens, label)."""
        latents = self.latents()
        return self.featureset.select(latents).overview(len(latents)) if latents else []

    def to_pandas(self):
        """One row per (token, latent): position, token, rank, latent, activation, label."""
        import pandas as pd

        labels = {row["id"]: row["label"] for row in self.overview()}
        rows = [{"position": p, "token": self.tokens[p], "rank": r, "latent": latent, "activation": value,
                 "label": labels.get(latent, "")}
                for p, pairs in enumerate(self.top) for r, (latent, value) in enumerate(pairs)]
        return pd.DataFrame(rows, columns=["position", "token", "rank", "latent", "activation", "label"])

    def view(self):
        """The widget (Jupyter): the text, its tokens shaded by their strongest activation; a click lists a
        token's features, and a feature opens its card."""
        return provided("text features")(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.view()._repr_mimebundle_(include=include, exclude=exclude)

    def __repr__(self) -> str:
        shown = ", ".join(f"{t!r}: #{pairs[0][0]} ({pairs[0][1]:.3g})" for t, pairs in zip(self.tokens, self.top) if pairs)
        return f"TextFeatures of {len(self.tokens)} tokens: {shown[:300] or 'nothing fired'}"


def features_on_text(featureset, lm, text: str, *, n: int = 5, sae=None) -> TextFeatures:
    """The ``n`` strongest latents of ``featureset``'s SAE on each token of ``text``, read at the analysed hook
    point of ``lm`` (the model the analysis was made from)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"text={text!r}: give some text to read, e.g. feats.on_text(lm, 'def f(x): return x')")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r} must be a number of latents per token >= 1")
    hook = featureset.meta["hook_point"]
    sae = sae if sae is not None else featureset.sae(device=str(lm.device))
    if lm.d_model != sae.d_in:
        raise ConfigError(f"{lm.name} is {lm.d_model}-wide but the analysed SAE reads {sae.d_in}-wide activations",
                          suggestion="give the model the analysis was made from")
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        acts = lm.run_with_cache(ids, hook)[hook][0]
        codes = sae.encode(acts.to(sae.W_enc.device, torch.float32))
    values, latents = codes.topk(min(n, codes.shape[1]), dim=1)
    token_ids = ids[0].tolist()
    special = set(lm.tokenizer.all_special_ids)  # BOS and the like: the analysis leaves them out, and so does this
    top = [[(int(i), float(v)) for i, v in zip(row_ids, row_values) if v > 0] if token not in special else []
           for token, row_ids, row_values in zip(token_ids, latents.tolist(), values.tolist())]
    tokens = lm.tokenizer.batch_decode([[i] for i in token_ids], clean_up_tokenization_spaces=False)
    return TextFeatures(text=text, tokens=tokens, token_ids=token_ids, top=top, featureset=featureset)
