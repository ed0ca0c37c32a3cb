"""How well an SAE recovers a known dictionary (``SyntheticFeatures``), by SynthSAEBench's measures as SAELens
computes them, so the numbers compare:

- ``mcc``: the mean |cosine| of the decoder rows and true features matched one to one (Hungarian matching);
- ``uniqueness``: distinct true features that are some latent's best match, over the latents;
- ``precision``, ``recall``, ``f1``: each latent as a detector of its best-matching feature (fires vs fires), on
  held-out rows, averaged over the latents (a dead latent counts 0);
- ``recovered``: the true features some decoder row matches at |cosine| > 0.9;
- ``fvu``, ``l0``, ``true_l0``, ``dead_fraction`` on the same rows;
- with parents in the world, ``absorption``: how much a parent's latent stops firing when one of its children fires
  (``absorption()``), and the two recalls it compares.
"""

from __future__ import annotations

import torch

from saekit.evals.synthetic import SyntheticFeatures


def abs_cosines(decoder: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """``[rows of decoder, rows of dictionary]``: the |cosine| of every pair."""
    normalize = torch.nn.functional.normalize
    return (normalize(decoder.float(), dim=1) @ normalize(dictionary.float(), dim=1).t()).abs()


def matched_cosines(decoder: torch.Tensor, dictionary: torch.Tensor, cos: torch.Tensor | None = None) -> torch.Tensor:
    """The |cosine| of each pair of an optimal one-to-one matching of decoder rows and features (as many pairs as
    the smaller of the two has rows); ``cos`` when their ``abs_cosines`` are at hand."""
    from scipy.optimize import linear_sum_assignment

    cos = abs_cosines(decoder, dictionary) if cos is None else cos
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    return cos[torch.as_tensor(rows), torch.as_tensor(cols)]


def absorption(fires: torch.Tensor, codes: torch.Tensor, truth: SyntheticFeatures, parent_latents: torch.Tensor) -> dict:
    """Per parent ``p`` and its latent (``parent_latents[p]``, the decoder row closest to it): the latent's recall on
    rows where ``p`` fires alone and where it fires with a child. ``absorption`` is the mean over parents of
    ``1 - recall_with_child / recall_alone`` (at least 0): 0 when a child never stops the parent's latent, 1 when the
    children's latents take over the parent's direction whenever they fire (feature absorption)."""
    c = truth.config
    true = codes > 0
    alone, with_child, share = [], [], []
    for p in range(c.parents):
        parent, child = true[:, p], true[:, truth.children[p]].any(1)
        latent = fires[:, parent_latents[p]]
        r_alone = float(latent[parent & ~child].float().mean()) if bool((parent & ~child).any()) else float("nan")
        r_child = float(latent[parent & child].float().mean()) if bool((parent & child).any()) else float("nan")
        alone.append(r_alone)
        with_child.append(r_child)
        if r_alone > 0 and r_child == r_child:
            share.append(max(0.0, 1 - r_child / r_alone))
    return {"absorption": _mean(share), "parent_recall_alone": _mean(alone),
            "parent_recall_with_child": _mean(with_child)}


def _mean(values: list[float]) -> float:
    """The mean of the numbers that are not NaN (NaN when there are none)."""
    return float(torch.tensor(values, dtype=torch.float64).nanmean()) if values else float("nan")


@torch.no_grad()
def recovery(sae, truth: SyntheticFeatures, n: int = 16384, *, seed: int = 1) -> dict:
    """The recovery measures (module docstring) of ``sae`` on ``n`` held-out rows of ``truth``."""
    x, codes = truth.sample(n, seed=seed)
    z = sae.encode(x.to(sae.device)).float().cpu()
    x_hat = sae.decode(z.to(sae.device)).float().cpu()
    decoder = sae.W_dec.detach().float().cpu()
    dictionary = truth.dictionary
    cos = abs_cosines(decoder, dictionary)  # [d_sae, n_features]
    best = cos.argmax(dim=1)
    fires, true = z != 0, codes[:, best] > 0
    tp = (fires & true).sum(0).double()
    precision = torch.where(fires.sum(0) > 0, tp / fires.sum(0).clamp_min(1), 0.0)
    recall = torch.where(true.sum(0) > 0, tp / true.sum(0).clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return {
        "mcc": float(matched_cosines(decoder, dictionary, cos).mean()),
        "uniqueness": len(best.unique()) / len(best),
        "precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()),
        "recovered": float((cos.max(dim=0).values > 0.9).float().mean()),
        "fvu": float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
        "l0": float(fires.sum(1).float().mean()), "true_l0": float((codes > 0).sum(1).float().mean()),
        "dead_fraction": float((~fires.any(0)).float().mean()),
        **(absorption(fires, codes, truth, cos[:, :truth.config.parents].argmax(dim=0)) if truth.config.parents else {}),
    }


def recovery_over_seeds(sae, truth: SyntheticFeatures, n: int, seeds, progress=None) -> dict:
    """``recovery`` on a fresh held-out sample per seed (``1000 + seed``: never the training rows' seeds):
    ``{"metrics": mean per measure, with "<measure>_ci" the half-width of its 95% interval, "details": per seed}``
    (``mcc`` and ``uniqueness`` read only the decoder, so their interval is 0)."""
    from saekit.evals.probing import interval

    runs = []
    for i, seed in enumerate(seeds):
        runs.append(recovery(sae, truth, n, seed=1000 + int(seed)))
        if progress is not None:
            progress((i + 1) / len(seeds))
    metrics: dict[str, float] = {}
    for key in runs[0]:
        mean, half = interval([r[key] for r in runs])
        metrics[key] = mean
        if len(runs) > 1:
            metrics[f"{key}_ci"] = half
    return {"metrics": metrics, "details": {"per_seed": runs}}
