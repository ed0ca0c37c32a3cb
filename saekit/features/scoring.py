"""Explaining a feature with an LLM and scoring the explanation (after delphi: detection and fuzzing).

- The explainer sees the feature's top contexts with the tokens where it fires marked ``<<like this>>``.
- **Detection**: given the explanation, does the scorer tell held-out activating contexts (the quantile
  samples, so weak activations count too) from contexts where the feature does not fire anywhere?
- **Fuzzing**: within activating contexts, does it tell the marking of the tokens where the feature fires
  from a marking of as many tokens where it does not?

Two ways to score an item, both from the scorer's log-probabilities, so a small model gives a graded score:

- ``yes_no`` (any backend, HTTP ones included): the scorer is asked a question, the score is
  ``log P(Yes) - log P(No)`` of its answer, and an item counts as recognised when it is > 0;
- ``likelihood`` (local backends): the score is ``log P(explanation | text)``: the explanation's likelihood after
  ``"{text}\nThis text contains"`` (detection) or after the marked text and ``"The marked tokens are"``
  (fuzzing); an item counts as recognised above the median of the latent's scores (the classes are balanced).
  A 135M model barely follows a Yes/No instruction but does tell which explanation a text supports: on planted
  features SmolLM2-135M-Instruct ranks the right explanation above a wrong one this way (see the tests).

Reported per latent: AUC (the chance an activating item outscores a non-activating one; ties count half) and
balanced accuracy (the mean of the rates on both classes), never raw accuracy, which a scorer that always says
"No" already wins on sparse features.
"""

from __future__ import annotations

import numpy as np

CHOICES = ("Yes", "No")
SYSTEM = "You are an interpretability researcher studying the neurons of a language model."


def marked(tokens: list[str], marks) -> str:
    """The tokens joined, those at ``marks`` (indices) wrapped as <<token>>; tokens outside the document dropped."""
    marks = set(marks)
    return "".join(f"<<{t}>>" if i in marks else t for i, t in enumerate(tokens)).replace("\n", "\\n")


def firing(example) -> list[int]:
    """Where in the window the feature fires (its value > 0)."""
    return [i for i, v in enumerate(example.values) if v > 0 and example.tokens[i] != ""]


def explanation_messages(examples) -> list[dict]:
    lines = "\n".join(f"{n}. {marked(e.tokens, firing(e))}" for n, e in enumerate(examples, start=1))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Here are texts where one neuron activates; the tokens where it activates are "
             f"marked <<like this>>.\n\n{lines}\n\nIn a few words, what does this neuron detect? Answer with the "
             "description only."}]


def detection_messages(explanation: str, text: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"A neuron detects: {explanation}\n\nText: {text}\n\nDoes this neuron "
             "activate anywhere in the text? Answer Yes or No."}]


def fuzzing_messages(explanation: str, text: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"A neuron detects: {explanation}\n\nIn this text some tokens are marked "
             f"<<like this>>:\n{text}\n\nAre the marked tokens what the neuron detects? Answer Yes or No."}]


def margin(reply) -> float:
    """``log P(Yes) - log P(No)`` of a ``choice_logprobs`` reply, clipped to +-50 (an answer the scorer gave no
    probability counts as -1e30, so two such answers tie at 0 instead of making NaN)."""
    yes, no = (max(float(reply.logprobs.get(c, -1e30)), -1e30) for c in CHOICES)
    return float(np.clip(yes - no, -50, 50))


def auc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive item scores above a negative one), ties counting half; None without both classes."""
    if not positive or not negative:
        return None
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def balanced_accuracy(positive: list[float], negative: list[float], threshold: float = 0.0) -> float | None:
    """The mean of the rates of recognised positives (score > threshold) and rejected negatives."""
    if not positive or not negative:
        return None
    return float(((np.asarray(positive) > threshold).mean() + (np.asarray(negative) <= threshold).mean()) / 2)


def detection_prefix(text: str) -> str:
    return f"{text}\nThis text contains"


def fuzzing_prefix(marked_text: str) -> str:
    return f"{marked_text}\nThe tokens marked <<like this>> are"


def fuzzed_marks(example, rng: np.random.Generator) -> list[int] | None:
    """As many tokens of the window as fire, chosen among those that do not (None when there are too few)."""
    fire = firing(example)
    quiet = [i for i, t in enumerate(example.tokens) if t != "" and i not in set(fire)]
    if not fire or len(quiet) < len(fire):
        return None
    return sorted(rng.choice(quiet, size=len(fire), replace=False).tolist())
