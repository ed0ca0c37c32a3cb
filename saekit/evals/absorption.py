"""Feature absorption by the first-letter task (SAEBench's ``absorption_first_letter``, after Chanin et al. 2024).

A model knows which letter a word starts with; an SAE should have latents for "starts with L". Absorption is
when such a latent stays silent on some L-words because a more specific latent (say "the word *lion*") took the
letter's direction into its own decoder row.

1. Words: tokens of the model's vocabulary made only of letters (a leading space allowed), a seeded sample of
   ``words``, split 80/20. Each is read in SAEBench's prompt: ten in-context examples ``"{word} has the first
   letter: L"`` then ``"{word} has the first letter:"``; the activation is the word's token's.
2. A probe per letter on those activations (a one-vs-rest logistic regression, classes balanced); letters whose
   probe reaches F1 ``min_probe_f1`` on the test words are scored.
3. Each letter's *main* latents: the latents ranked by how much their mean code differs between the letter's words
   and the others (SAEBench ranks by an L1 probe's weights), a balanced logistic regression on the top ``k`` for
   k = 1..10, and k grows while F1 rises by more than ``f1_jump``.
4. For each test word of the letter that the probe gets right, with ``p`` the probe's unit direction,
   ``P = x.p`` and ``proj_i = a_i d_i.p`` for latent ``i`` (code ``a_i``, decoder row ``d_i``; SAEBench writes
   ``a_i cos(p, d_i)``, the same for the unit decoder rows it assumes, which an SAE with its input scale folded
   in does not have):
   *absorption fraction*: the share of ``P`` that up to 3 other latents (cosine >= 0.1) carry instead of the main
   ones, when they carry at least 40% of ``P``; *full absorption*: no main latent fires and the top latent by
   ``proj`` carries 40% of ``P`` with cosine >= 0.025.

Reported as SAEBench does: the mean (and standard deviation) over scored letters of the mean absorption fraction,
of the full-absorption rate and of the number of main latents.
"""

from __future__ import annotations

import statistics
import string
from collections.abc import Callable

import numpy as np
import torch

from saekit.evals.probing import fit_logistic, top_latents
from saekit.models.language_model import right_padded

TEMPLATE = "{word} has the first letter:"
ICL_EXAMPLES = 10
PROBE_COS = 0.1  # ABSORPTION_FRACTION_PROBE_COS_THRESHOLD
MAX_ABSORBING = 3  # ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS
PROJECTION_SHARE = 0.4  # ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD
FULL_COS = 0.025  # FULL_ABSORPTION_PROBE_COS_THRESHOLD
MAX_K = 10


def alpha_tokens(tokenizer) -> list[tuple[int, str]]:
    """``(token id, word)`` for every vocabulary token that is letters only after an optional leading space."""
    out = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        word = text[1:] if text.startswith(" ") else text
        if word and word.isascii() and word.isalpha():
            out.append((token_id, word))
    return out


def prompts(tokenizer, words: list[tuple[int, str]], examples: list[tuple[int, str]], seed: int
            ) -> tuple[list[list[int]], list[int]]:
    """Token ids of each word's prompt and the position of the word in it."""
    g = np.random.default_rng(seed)
    suffix = tokenizer(TEMPLATE.format(word=""), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out, where = [], []
    for token_id, word in words:
        picks = [examples[i] for i in g.choice(len(examples), ICL_EXAMPLES + 1, replace=False)]
        shots = [w for w in picks if w[1] != word][:ICL_EXAMPLES]
        prefix = "\n" + "\n".join(TEMPLATE.format(word=w) + " " + w[0].upper() for _, w in shots) + "\n"
        ids = bos + tokenizer(prefix, add_special_tokens=False)["input_ids"] + [token_id]
        where.append(len(ids) - 1)
        out.append(ids + suffix)
    return out, where


@torch.no_grad()
def word_activations(lm, hook_point: str, ids: list[list[int]], where: list[int], batch: int = 32,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    rows = []
    for lo in range(0, len(ids), batch):
        part = ids[lo:lo + batch]
        input_ids, mask = right_padded(part, lm.tokenizer)
        x = lm.run_with_cache(input_ids, hook_point, attention_mask=mask)[hook_point]
        rows.append(x[torch.arange(len(part)), torch.tensor(where[lo:lo + batch])].float().cpu())
        if progress is not None:
            progress(min(lo + batch, len(ids)))
    return torch.cat(rows)


def f1(predicted: torch.Tensor, y: torch.Tensor) -> float:
    tp = float((predicted & y).sum())
    denominator = float(predicted.sum() + y.sum())
    return 2 * tp / denominator if denominator else 0.0


def token_absorption(x: torch.Tensor, codes: torch.Tensor, direction: torch.Tensor, decoder: torch.Tensor,
                     main: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (absorption fraction, fully absorbed) against the unit probe ``direction`` (module docstring)."""
    p = direction.double() / direction.double().norm()
    along = decoder.double() @ p  # [d_sae]: each decoder row's length along the probe
    cos = along / decoder.double().norm(dim=1).clamp_min(1e-12)
    proj = codes.double() * along  # [n, d_sae]: what each latent writes along the probe
    total = x.double() @ p  # P
    is_main = torch.zeros(len(cos), dtype=torch.bool)
    is_main[main] = True
    main_part = proj[:, is_main].sum(1)
    candidates = torch.where(~is_main & (cos >= PROBE_COS) & (proj > 0), proj, torch.zeros_like(proj))
    taken = candidates.topk(min(MAX_ABSORBING, proj.shape[1]), dim=1).values.sum(1)
    absorbed = torch.minimum(taken, total - main_part)
    fraction = (absorbed / (absorbed + main_part)).clamp(0, 1)
    fraction = torch.where(main_part <= 0, torch.ones_like(fraction), fraction)
    fraction = torch.where((main_part >= total) | (taken / total < PROJECTION_SHARE), torch.zeros_like(fraction),
                           fraction)
    top = proj.argmax(dim=1)
    full = ((codes[:, is_main].abs() < 1e-8).all(1) & (cos[top] >= FULL_COS) & (total >= 0)
            & (proj.gather(1, top[:, None])[:, 0] / total >= PROJECTION_SHARE))
    return fraction, full


def first_letter_absorption(lm, sae, hook_point: str, *, words: int = 1500, seed: int = 0, min_probe_f1: float = 0.6,
                            f1_jump: float = 0.03, progress: Callable[[float], None] | None = None) -> dict:
    """``{"metrics": {...}, "details": {...}}`` of the first-letter absorption (module docstring)."""
    vocab = alpha_tokens(lm.tokenizer)
    g = np.random.default_rng(seed)
    picked = [vocab[i] for i in g.permutation(len(vocab))[:words]]
    cut = int(len(picked) * 0.8)
    ids, where = prompts(lm.tokenizer, picked, picked[:cut], seed)
    report = None if progress is None else (lambda done: progress(0.8 * done / len(ids)))
    x = word_activations(lm, hook_point, ids, where, progress=report)
    with torch.no_grad():
        z = sae.encode(x.to(sae.device)).float().cpu()
    decoder = sae.W_dec.detach().float().cpu()
    letters = np.array([w[0].lower() for _, w in picked])
    train, test = np.arange(cut), np.arange(cut, len(picked))
    per_letter: list[dict] = []
    skipped: dict[str, str] = {}
    for letter in string.ascii_lowercase:
        y = torch.from_numpy(letters == letter)
        if int(y[train].sum()) < 2 or int(y[test].sum()) < 1:
            skipped[letter] = "too few words"
            continue
        probe = fit_logistic(x[train], y[train], balanced=True)
        probe_f1 = f1(probe(x[test]), y[test])
        if probe_f1 < min_probe_f1:
            skipped[letter] = f"probe F1 {probe_f1:.2f}"
            continue
        ranked = top_latents(z[train], y[train], MAX_K)
        main, best = ranked[:1], -100.0
        for k in range(1, len(ranked) + 1):
            chosen = ranked[:k]
            score = f1(fit_logistic(z[train][:, chosen], y[train], balanced=True)(z[test][:, chosen]), y[test])
            if score <= best + f1_jump:
                break
            main, best = chosen, score
        hits = torch.from_numpy(test[(y[test] & probe(x[test])).numpy()])
        fraction, full = token_absorption(x[hits], z[hits], probe.direction, decoder, main)
        per_letter.append({"first_letter": letter, "mean_absorption_fraction": float(fraction.mean()),
                           "full_absorption_rate": float(full.float().mean()), "num_full_absorption": int(full.sum()),
                           "num_probe_true_positives": len(hits), "num_split_features": len(main),
                           "probe_f1": probe_f1, "split_f1": best, "main_latents": main.tolist()})
    if progress is not None:
        progress(1.0)

    def mean_std(key: str) -> tuple[float, float]:
        values = [float(r[key]) for r in per_letter]
        if not values:
            return float("nan"), float("nan")
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")

    metrics: dict[str, float] = {"letters_scored": float(len(per_letter)), "words": float(len(picked))}
    for key, name in (("mean_absorption_fraction", "absorption_fraction_score"),
                      ("full_absorption_rate", "full_absorption_score"), ("num_split_features", "num_split_features")):
        mean, std = mean_std(key)
        metrics[f"mean_{name}"], metrics[f"std_dev_{name}"] = mean, std
    return {"metrics": metrics, "details": {"letters": per_letter, "skipped": skipped}}
