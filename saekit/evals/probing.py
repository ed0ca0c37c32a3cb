"""Sparse probing (SAEBench's ``sparse_probing``, after Gurnee et al. 2023): can a handful of latents tell classes
of text apart as well as a probe on the model's activations?

For each labelled dataset (``probe_data``) and each of its classes, a binary task "this class or another", on
balanced examples. A text is represented by the mean over its tokens (BOS left out) of the hook point's
activation, and of the SAE's codes of those tokens. Per seed (a new balanced sample and train/test split):

- ``llm_test_accuracy``: a logistic regression on the activations (standardised; L2 as scikit-learn's default
  ``C=1``), ``sae_test_accuracy`` the same on the codes;
- ``sae_top_{k}_test_accuracy``: the ``k`` latents whose mean code differs most between the classes on the training
  split (SAEBench's selection), then a logistic regression on those ``k`` alone; ``llm_top_{k}`` the same with the
  activations' dimensions.

The names are SAEBench's. Reported: each probe's held-out accuracy averaged over the tasks, as the mean over seeds
with a 95% Student-t interval (``*_ci``: its half-width), and per task in the details. Departures from SAEBench:
datasets of the standard library instead of the hub's (this runs offline), a few hundred examples per task instead
of 4,000, and the full-width probes are logistic regressions like the others (SAEBench trains a linear layer and
keeps its best test accuracy over epochs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from saekit.evals.probe_data import dataset
from saekit.models.language_model import right_padded


@torch.no_grad()
def pooled(lm, sae, hook_point: str, texts: Sequence[str], *, context: int = 128, batch: int = 16,
           progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(activations [n, d_model], codes [n, d_sae])``: each text's mean over its tokens (BOS left out); codes
    are None without an SAE (``sae=None``)."""
    tokenizer = lm.tokenizer
    bos = tokenizer.bos_token_id
    acts, codes = [], []
    for lo in range(0, len(texts), batch):
        ids = [tokenizer(t, add_special_tokens=True)["input_ids"][:context] for t in texts[lo:lo + batch]]
        input_ids, mask = right_padded(ids, tokenizer)
        width = input_ids.shape[1]
        x = lm.run_with_cache(input_ids, hook_point, attention_mask=mask)[hook_point].float()
        keep = mask.bool().to(x.device)
        if bos is not None:
            keep &= ~((torch.arange(width, device=x.device) == 0) & (input_ids.to(x.device) == bos))
        weight = keep.float() / keep.sum(1, keepdim=True).clamp_min(1)
        acts.append(torch.einsum("bt,btd->bd", weight, x).cpu())
        if sae is not None:
            z = sae.encode(x[keep].to(sae.device)).float().to(x.device)
            rows = torch.arange(len(ids), device=x.device)[:, None].expand_as(keep)[keep]
            code_sum = torch.zeros(len(ids), sae.d_sae, device=x.device).index_add_(0, rows, z)
            codes.append((code_sum / keep.sum(1, keepdim=True).clamp_min(1)).cpu())
        if progress is not None:
            progress(min(lo + batch, len(texts)))
    return torch.cat(acts), torch.cat(codes) if codes else None


class Probe:
    """A linear classifier in the activations' own space: ``logits(x) = x @ direction + bias``."""

    def __init__(self, direction: torch.Tensor, bias: float):
        self.direction, self.bias = direction, bias

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.double() @ self.direction + self.bias

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.logits(rows) > 0


def fit_logistic(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, iterations: int = 100, *,
                 balanced: bool = False) -> Probe:
    """A logistic regression fitted on standardised ``x`` (L2 ``0.5 |w|^2 / c`` plus the summed log loss, as
    scikit-learn's; ``balanced``: each class weighs as much in total), returned in ``x``'s own space."""
    x = x.detach().double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    target = y.double()
    weight = None
    if balanced:
        n_pos = float(target.sum())
        weight = torch.where(y, len(y) / (2 * max(n_pos, 1.0)), len(y) / (2 * max(len(y) - n_pos, 1.0))).double()
    opt = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, target, weight=weight,
                                                                     reduction="sum") + 0.5 * w.pow(2).sum() / c
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    direction = w.detach() / std
    return Probe(direction, float(b.detach() - mean @ direction))


def top_latents(codes: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` latents whose mean code differs most between the two classes (SAEBench's selection)."""
    diff = (codes[y].mean(0) - codes[~y].mean(0)).abs()
    return diff.topk(min(k, len(diff))).indices


def _accuracy(predict, x, y) -> float:
    return float((predict(x) == y).float().mean())


def balanced_split(labels: np.ndarray, task: str, seed: int, max_per_class: int, train_fraction: float = 0.7
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of a balanced binary task: ``task``'s examples and as many others, drawn evenly
    from each other class (SAEBench's negatives), split ``train_fraction`` to train."""
    g = np.random.default_rng(seed)
    pos = np.flatnonzero(labels == task)
    others = [np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()) - {task})]
    n = min(len(pos), max_per_class, sum(len(o) for o in others))
    pos = g.choice(pos, n, replace=False)
    share = math.ceil(n / len(others))
    neg = np.concatenate([g.choice(o, min(share, len(o)), replace=False) for o in others])
    neg = g.permutation(neg)[:n]
    if len(neg) < n:  # a small class gave less than its share
        rest = np.setdiff1d(np.concatenate(others), neg)
        neg = np.concatenate([neg, g.choice(rest, n - len(neg), replace=False)])
    cut = max(1, int(round(n * train_fraction)))
    return (torch.as_tensor(np.concatenate([pos[:cut], neg[:cut]])),
            torch.as_tensor(np.concatenate([pos[cut:], neg[cut:]])))


def task_accuracies(acts, codes, labels: np.ndarray, task: str, ks: Sequence[int], seed: int, *,
                    max_per_class: int) -> dict[str, float]:
    """The probes' held-out accuracies on the task "``task`` or another class" for one seed."""
    train, test = balanced_split(labels, task, seed, max_per_class)
    y = torch.from_numpy(labels == task)
    out = {}
    for name, rows in (("llm", acts), ("sae", codes)):
        out[f"{name}_test_accuracy"] = _accuracy(fit_logistic(rows[train], y[train]), rows[test], y[test])
        for k in ks:
            sub = rows[:, top_latents(rows[train], y[train], k)]
            out[f"{name}_top_{k}_test_accuracy"] = _accuracy(fit_logistic(sub[train], y[train]), sub[test], y[test])
    return out


def interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% Student-t interval); the half-width is NaN for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def sparse_probing(lm, sae, hook_point: str, *, datasets: Sequence[str], ks: Sequence[int], seeds: Sequence[int],
                   max_per_class: int = 150, context: int = 128, progress: Callable[[float], None] | None = None
                   ) -> dict:
    """``{"metrics": {...}, "details": {...}}``: the probes' accuracies (module docstring)."""
    per_seed: dict[str, list[list[float]]] = {}  # probe -> seeds -> accuracies over all tasks
    details: dict[str, dict] = {}
    for d_index, name in enumerate(datasets):
        rows = dataset(name)
        texts = [t for t, _ in rows]
        classes = sorted({c for _, c in rows})
        n_texts = len(texts)
        report = None if progress is None else (
            lambda done, d=d_index, n=n_texts: progress((d + 0.8 * done / n) / len(datasets)))
        acts, codes = pooled(lm, sae, hook_point, texts, context=context, progress=report)
        assert codes is not None  # an SAE was given
        labels = np.array([c for _, c in rows])
        tasks = classes if len(classes) > 2 else classes[:1]  # two classes: one task
        for task in tasks:
            runs = [task_accuracies(acts, codes, labels, task, ks, seed, max_per_class=max_per_class) for seed in seeds]
            name_of_task = f"{name}/{task}"
            details[name_of_task] = {probe: interval([r[probe] for r in runs]) for probe in runs[0]}
            for probe in runs[0]:
                per_seed.setdefault(probe, [[] for _ in seeds])
                for i, r in enumerate(runs):
                    per_seed[probe][i].append(r[probe])
        if progress is not None:
            progress((d_index + 1) / len(datasets))
    metrics = {}
    for probe, by_seed in per_seed.items():
        mean, half = interval([float(np.mean(s)) for s in by_seed])
        metrics[probe] = mean
        metrics[f"{probe}_ci"] = half
    return {"metrics": metrics, "details": {task: {probe: {"accuracy": m, "ci": h} for probe, (m, h) in d.items()}
                                            for task, d in details.items()}}
