"""What steering does, measured: ``compare_steering`` (generations side by side from one seed) and
``steering_sweep`` (for each coefficient: the concept score, the fluency and the KL divergence on neutral text).

Both score outputs under the *unsteered* model: the steered features' mean activation when the output is
re-encoded by the SAE at its hook point (the concept score), and the log-probability of the generated tokens
(fluency; perplexity is ``exp(-mean log-probability)``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from saekit._checks import as_int, as_number, check_positive_int
from saekit._provided import provided
from saekit._steps import Steps
from saekit.errors import ConfigError
from saekit.steering.intervention import Steering, sae_hook_point, steer

PROMPTS = ("The", "I think that", "In the morning,", "Here is a short story:")
NEUTRAL = ("The committee met on Tuesday to review the budget for the next year. After a short discussion, the members "
           "agreed to postpone the decision until more information was available. The report will be published next month.")


@dataclass
class Scored:
    """One continuation scored under the unsteered model."""

    text: str
    ids: list[int]
    tokens: list[str]  # each new token as text
    activation: dict[int, float]  # each steered feature's mean activation over the new tokens, re-encoded
    logprob: float  # sum of log P(new token | before) under the unsteered model

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / len(self.ids)) if self.ids else float("nan")


def _listed(value):
    """A 1-D NumPy array or torch tensor as a list (ids or coefficients a user computed), anything else as is."""
    return value.tolist() if getattr(value, "ndim", None) == 1 and hasattr(value, "tolist") else value


def _features(features, sae) -> dict[int, float]:
    """``features`` as {feature: weight}: a list gives each the weight 1; a mapping gives each its own (the
    coefficient of a setting times the weight is what the feature is steered by). Ids and weights may be NumPy
    or torch numbers, a list a 1-D array or tensor, as ``sk.steer`` takes them."""
    single = as_int(features)
    features = [single] if single is not None else _listed(features)
    if isinstance(features, Mapping):
        weights = dict(features)
    elif isinstance(features, Sequence) and not isinstance(features, str):
        weights = {i: 1.0 for i in features}
    else:
        raise ConfigError(f"features must be a list of feature indices, e.g. [123], or {{feature: weight}}, e.g. "
                          f"{{123: 1.0, 45: 0.5}}; got {features!r}")
    if not weights:
        raise ConfigError("features is empty; name at least one feature, e.g. [123]")
    checked: dict[int, float] = {}
    for i, w in weights.items():
        feature, weight = as_int(i), as_number(w)
        if feature is None or not 0 <= feature < sae.d_sae:
            raise ConfigError(f"feature {i!r} is not a feature of this SAE (0..{sae.d_sae - 1})")
        if weight is None:
            raise ConfigError(f"the weight {w!r} of feature {i} must be a finite number (its coefficient is "
                              "the setting's times the weight)")
        checked[feature] = weight
    return checked


def _coeffs(coeffs) -> list[float]:
    coeffs = _listed(coeffs)
    if not isinstance(coeffs, Sequence) or isinstance(coeffs, str) or not coeffs:
        raise ConfigError(f"coeffs must be a non-empty list of numbers, e.g. [0, 2, 4, 8]; got {coeffs!r}")
    checked = []
    for c in coeffs:
        number = as_number(c)
        if number is None:
            raise ConfigError(f"coefficient {c!r} must be a finite number")
        checked.append(number)
    return checked


def score(lm, sae, hook_point: str, prompt_ids: list[int], ids: list[int], features: list[int]) -> Scored:
    """Re-read a continuation with the unsteered model: the features' activation on it and its log-probability."""
    full = torch.tensor([prompt_ids + ids], device=lm.device)
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad(), lm.hooks({hook_point: lambda x: seen.__setitem__("x", x.detach())}):
        logits = lm.model(input_ids=full).logits.float()
    start = len(prompt_ids)
    activation = {}
    if ids:
        z = sae.encode(seen["x"][0, start:].float().to(sae.device)).detach()
        activation = {i: float(z[:, i].mean()) for i in features}
        logp = logits[0, start - 1:-1].log_softmax(-1)
        logprob = float(logp.gather(-1, torch.tensor(ids, device=logp.device)[:, None]).sum())
    else:
        logprob = 0.0
    tokens = [lm.tokenizer.decode([t]) for t in ids]
    return Scored(lm.tokenizer.decode(ids, skip_special_tokens=True), ids, tokens, activation, logprob)


def _differs(reference: list[int], ids: list[int]) -> list[bool]:
    """For each token of ``ids``: not matched in the reference (difflib's longest matching blocks)."""
    marks = [True] * len(ids)
    for block in difflib.SequenceMatcher(a=reference, b=ids, autojunk=False).get_matching_blocks():
        for j in range(block.b, block.b + block.size):
            marks[j] = False
    return marks


class _Shown:
    """A result shown by a view of ``saekit.widgets.steering`` in a notebook and as text elsewhere."""

    _view = _text = ""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def widget(self):
        return provided(self._view)(self.to_dict())

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)

    def __str__(self) -> str:
        return provided(self._text)(self.to_dict())

    __repr__ = __str__


@dataclass(repr=False)
class SteeringComparison(_Shown):
    """Generations of one prompt, unsteered and at each coefficient, from the same seed (``compare_steering``)."""

    prompt: str
    features: list[int]
    mode: str
    positions: str
    relative: bool
    rows: list[dict] = field(default_factory=list)  # {"coeff": float | None, "scored": Scored, "differs": [bool]}
    weights: dict[int, float] = field(default_factory=dict)  # each feature's coefficient is coeff * weight

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{"coeff": r["coeff"], "text": r["scored"].text,
                              **{f"activation_{i}": r["scored"].activation.get(i) for i in self.features},
                              "logprob": r["scored"].logprob, "perplexity": r["scored"].perplexity,
                              "changed_tokens": sum(r["differs"])} for r in self.rows])

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "features": self.features, "mode": self.mode, "positions": self.positions,
                "relative": self.relative, "weights": {str(k): v for k, v in self.weights.items()},
                "rows": [{"coeff": r["coeff"], "text": r["scored"].text, "tokens": r["scored"].tokens,
                          "differs": r["differs"], "activation": {str(k): v for k, v in r["scored"].activation.items()},
                          "logprob": r["scored"].logprob, "perplexity": _finite(r["scored"].perplexity)}
                         for r in self.rows]}

    _view, _text = "SteeringView", "comparison_text"


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def compare_steering(lm, sae, prompt, features, coeffs=(0, 2, 4, 8), *, mode: str = "add", positions: str = "all",
                     seed: int = 0, max_new_tokens: int = 40, temperature: float | None = None,
                     top_p: float | None = None, relative_to=None, hook_point: str | None = None,
                     progress: bool = True) -> SteeringComparison:
    """Generate from ``prompt`` unsteered and with ``features`` (each at the coefficient; ``{feature: weight}``
    steers each at the coefficient times its weight) for every coefficient,
    all from ``seed`` (greedy unless ``temperature`` > 0). Each output shows the tokens that differ from the
    unsteered one, the steered features' activation read back on it, and its log-probability under the
    unsteered model. Coefficients as in ``sk.steer`` (absolute unless ``relative_to`` is an analysis). In a
    notebook it is a widget; ``print()`` it in a terminal; ``.to_pandas()`` for the numbers. While it generates, a
    line counts the generations (``progress=False``: none)."""
    weights, coeffs = _features(features, sae), _coeffs(coeffs)
    features = list(weights)
    check_positive_int("max_new_tokens", max_new_tokens, example="40")
    hook = sae_hook_point(sae, hook_point)
    plan = [steer(lm, sae, {i: c * w for i, w in weights.items()}, mode=mode, positions=positions, hook_point=hook,
                  relative_to=relative_to) for c in coeffs]  # every setting checked before anything runs
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    with Steps(1 + len(coeffs), "steering comparison: generations", show=progress) as steps:
        base = lm.generate(prompt, **options)
        result = SteeringComparison(prompt if isinstance(prompt, str) else lm.tokenizer.decode(base.prompt_ids),
                                    features, mode, positions, relative_to is not None, weights=weights)
        reference = score(lm, sae, hook, base.prompt_ids, base.ids, features)
        result.rows.append({"coeff": None, "scored": reference, "differs": [False] * len(base.ids)})
        steps.advance("unsteered")
        for coeff, steering in zip(coeffs, plan):
            with steering:
                out = lm.generate(prompt, **options)
            scored = score(lm, sae, hook, out.prompt_ids, out.ids, features)
            result.rows.append({"coeff": coeff, "scored": scored, "differs": _differs(base.ids, out.ids)})
            steps.advance(f"coefficient {coeff:g}")
    return result


# -- the sweep ---------------------------------------------------------------------------------------------
def _kl(lm, steering: Steering, neutral_ids: torch.Tensor, base: torch.Tensor) -> float:
    """Mean KL(unsteered || steered) of next-token distributions over the neutral text (steered at every position)."""
    with torch.no_grad(), steering.at("all"):
        steered = lm.model(input_ids=neutral_ids).logits.float().log_softmax(-1)
    return float((base.exp() * (base - steered)).sum(-1).mean())


def _target_probability(lm, steering: Steering, prompt_ids: list[int], ids: list[int], targets: list[int]) -> float:
    """Mean probability, under the steered model, of any target token at each generated position."""
    full = torch.tensor([prompt_ids + ids], device=lm.device)
    with torch.no_grad(), steering:
        probs = lm.model(input_ids=full).logits.float().softmax(-1)
    return float(probs[0, len(prompt_ids) - 1:-1, targets].sum(-1).mean())


@dataclass(repr=False)
class SteeringSweep(_Shown):
    """The measured effect of each coefficient (``steering_sweep``): ``.table`` is a DataFrame, one row per
    coefficient; in a notebook the curves are charts."""

    features: list[int]
    mode: str
    relative: bool
    rows: list[dict]
    samples: list[dict]  # every generation: coeff, prompt, text
    weights: dict[int, float] = field(default_factory=dict)  # each feature's coefficient is coeff * weight

    @property
    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def to_pandas(self):
        return self.table

    def to_dict(self) -> dict:
        return {"features": self.features, "mode": self.mode, "relative": self.relative,
                "weights": {str(k): v for k, v in self.weights.items()},
                "rows": [{k: _finite(v) if isinstance(v, float) else v for k, v in r.items()} for r in self.rows],
                "samples": self.samples}

    _view, _text = "SweepView", "sweep_text"


def steering_sweep(lm, sae, features, coeffs=(0, 1, 2, 4, 8, 16), *, prompts: Sequence[str] = PROMPTS,
                   neutral: str = NEUTRAL, target_tokens: Sequence[str] | None = None, mode: str = "add",
                   positions: str = "all", max_new_tokens: int = 24, seed: int = 0, temperature: float | None = None,
                   relative_to=None, hook_point: str | None = None, progress: bool = True) -> SteeringSweep:
    """For each coefficient, generate from each of ``prompts`` with ``features`` steered (each at the coefficient;
    ``{feature: weight}`` steers each at the coefficient times its weight) and measure:

    - ``concept``: the steered features' mean activation on the outputs, re-encoded under the unsteered model;
    - ``target_probability`` (with ``target_tokens``): the steered model's mean probability of those tokens at
      each generated position;
    - ``perplexity``: of the outputs under the unsteered model (fluency; lower is more fluent);
    - ``kl``: mean KL divergence of next-token distributions, unsteered to steered, over ``neutral`` text
      (steered at every position): how much the intervention disturbs unrelated text.

    While it runs, a line counts the generations (``progress=False``: none).
    """
    weights, coeffs = _features(features, sae), _coeffs(coeffs)
    features = list(weights)
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError(f"prompts must be a non-empty list of strings; got {prompts!r}")
    if not isinstance(neutral, str) or not neutral.strip():
        raise ConfigError("neutral must be some text to measure the KL divergence on")
    targets = _target_ids(lm, target_tokens)
    check_positive_int("max_new_tokens", max_new_tokens, example="24")
    hook = sae_hook_point(sae, hook_point)
    plan = [steer(lm, sae, {i: c * w for i, w in weights.items()}, mode=mode, positions=positions, hook_point=hook,
                  relative_to=relative_to) for c in coeffs]
    neutral_ids = lm._as_ids(neutral)
    with torch.no_grad():
        base = lm.model(input_ids=neutral_ids).logits.float().log_softmax(-1)
    rows, samples = [], []
    with Steps(len(coeffs) * len(prompts), "steering sweep: generations", show=progress) as steps:
        for coeff, steering in zip(coeffs, plan):
            concept, logprob, n_tokens, target = [], 0.0, 0, []
            for prompt in prompts:
                with steering:
                    out = lm.generate(prompt, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature)
                scored = score(lm, sae, hook, out.prompt_ids, out.ids, features)
                samples.append({"coeff": coeff, "prompt": prompt, "text": scored.text})
                if scored.ids:
                    concept.append(sum(scored.activation.values()) / len(features))
                    logprob, n_tokens = logprob + scored.logprob, n_tokens + len(scored.ids)
                    if targets:
                        target.append(_target_probability(lm, steering, out.prompt_ids, out.ids, targets))
                steps.advance(f"coefficient {coeff:g}")
            row = {"coeff": coeff, "concept": sum(concept) / len(concept) if concept else float("nan"),
                   "perplexity": math.exp(-logprob / n_tokens) if n_tokens else float("nan"),
                   "kl": _kl(lm, steering, neutral_ids, base)}
            if targets:
                row["target_probability"] = sum(target) / len(target) if target else float("nan")
            rows.append(row)
    return SteeringSweep(features, mode, relative_to is not None, rows, samples, weights=weights)


def _target_ids(lm, target_tokens) -> list[int]:
    if target_tokens is None:
        return []
    if isinstance(target_tokens, str) or not target_tokens:
        raise ConfigError(f"target_tokens must be a list of token strings, e.g. [' rain', ' snow']; got {target_tokens!r}")
    ids = []
    for text in target_tokens:
        encoded = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ConfigError(f"target token {text!r} is {len(encoded)} tokens for this tokenizer; give single tokens",
                              suggestion=f"e.g. {lm.tokenizer.convert_ids_to_tokens(encoded[:1])}")
        ids.append(encoded[0])
    return ids
