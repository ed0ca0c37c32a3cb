"""What an SAE's decoder says about each latent without any data: its nearest latents by decoder cosine, and,
through a model's unembedding, the tokens its direction promotes and suppresses (the logit lens)."""

from __future__ import annotations

import torch

BLOCK = 1024  # latents per matrix product (memory: BLOCK x d_sae or BLOCK x vocab floats)


@torch.no_grad()
def decoder_neighbours(w_dec: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent the ``n`` other latents whose decoder directions are closest by cosine: ids and cosines
    [d_sae, n]."""
    d_sae = len(w_dec)
    n = min(n, d_sae - 1)
    unit = torch.nn.functional.normalize(w_dec.float(), dim=1)
    ids = torch.empty((d_sae, n), dtype=torch.int64)
    cos = torch.empty((d_sae, n), dtype=torch.float32)
    for lo in range(0, d_sae, BLOCK):
        sims = unit[lo:lo + BLOCK] @ unit.t()
        sims[torch.arange(len(sims)), torch.arange(lo, lo + len(sims))] = -2.0  # not itself
        values, index = sims.topk(n, dim=1)
        ids[lo:lo + len(sims)], cos[lo:lo + len(sims)] = index.cpu(), values.cpu()
    return ids, cos


@torch.no_grad()
def logit_lens(w_dec: torch.Tensor, unembedding: torch.Tensor, norm_weight: torch.Tensor | None,
               n: int = 10) -> dict[str, torch.Tensor]:
    """The ``n`` tokens each latent's decoder direction raises most and lowers most through the unembedding.

    The direction is scaled by the final norm's weight (how the model rescales each dimension before it
    unembeds); the norm's division by the residual's RMS or standard deviation is left out (a direction has
    no scale of its own to divide by), and so are the norm's and the unembedding's biases (the same for every
    latent). Returns ``top_ids``, ``top_values``, ``bottom_ids``, ``bottom_values`` [d_sae, n]."""
    w = w_dec.float().to(unembedding.device)
    if norm_weight is not None:
        w = w * norm_weight.float().to(w.device)
    u = unembedding.float()
    names = ("top_ids", "top_values", "bottom_ids", "bottom_values")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for lo in range(0, len(w), BLOCK):
        logits = w[lo:lo + BLOCK] @ u.t()  # [block, vocab]
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        out["top_ids"].append(top.indices.cpu())
        out["top_values"].append(top.values.cpu())
        out["bottom_ids"].append(bottom.indices.cpu())
        out["bottom_values"].append(bottom.values.cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}
