"""Held-out evaluation of an SAE: reconstruction (FVU, MSE, L0, latents never active) and, with a model,
next-token loss with the SAE spliced in vs clean vs zero-ablated, and the KL divergence to clean."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def reconstruction_metrics(sae, batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """FVU (1 - explained variance, over all held-out rows), MSE (summed over the output's width, mean over
    tokens), L0, and the fraction of latents that never fired, for raw activations ``batches`` (a transcoder's:
    ``(input, target)`` pairs, scored against the target); and SAEBench's core measures beside them: the mean
    cosine of each row and its reconstruction (``cossim``), the mean ratio of their norms (``l2_ratio``), the
    relative reconstruction bias (``E[|x_hat|^2] / E[x_hat.x]``: below 1 when the SAE shrinks its output) and the
    mean L1 of the codes."""
    n, sum_x, sum_x2, sum_err, l0 = 0, None, None, 0.0, 0.0
    cos = ratio = dot = hat2 = l1 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.device)
    for batch in batches:
        inputs, x = batch if isinstance(batch, tuple) else (batch, batch)
        inputs = inputs.to(device=sae.device, dtype=torch.float32)
        x = x.to(device=sae.device, dtype=torch.float32)
        z = sae.encode(inputs)
        x_hat = sae.decode(z) + sae.skip_path(inputs)
        active = z != 0
        fired |= active.any(0)
        l0 += float(active.sum())
        l1 += float(z.abs().sum())
        sum_err += float((x_hat - x).double().pow(2).sum())
        cos += float(torch.nn.functional.cosine_similarity(x_hat, x, dim=1).sum())
        ratio += float((x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).sum())
        dot += float((x_hat.double() * x.double()).sum())
        hat2 += float(x_hat.double().pow(2).sum())
        xd = x.double()
        sum_x = xd.sum(0) if sum_x is None else sum_x + xd.sum(0)
        sum_x2 = xd.pow(2).sum(0) if sum_x2 is None else sum_x2 + xd.pow(2).sum(0)
        n += len(x)
    if n == 0:
        return {}
    assert sum_x is not None and sum_x2 is not None  # the loop ran
    fvu = sum_err / max(float((sum_x2 - sum_x.pow(2) / n).sum()), 1e-12)
    return {"fvu": fvu, "explained_variance": 1 - fvu, "mse": sum_err / n, "cossim": cos / n, "l2_ratio": ratio / n,
            "relative_reconstruction_bias": hat2 / dot if dot else float("nan"), "l0": l0 / n, "l1": l1 / n,
            "never_fired_fraction": 1.0 - float(fired.float().mean()), "eval_tokens": n}


@torch.no_grad()
def downstream_metrics(sae, lm, tokens, hook_point: str, sequences: range, *, batch_sequences: int = 8,
                       include_bos: bool = False, target_hook: str | None = None) -> dict:
    """Next-token cross-entropy over ``sequences`` of a token store: clean, with the SAE's reconstruction
    spliced in at ``hook_point``, and with that activation zeroed; ``ce_recovered`` =
    (zero - sae) / (zero - clean); ``kl`` = mean KL(clean || spliced) per token, ``kl_zero`` the same with the
    activation zeroed, ``kl_recovered`` = 1 - kl / kl_zero (SAEBench's ``kl_div_score``). A document's leading
    BOS keeps its activation when the SAE was trained without BOS rows. A transcoder's prediction from
    ``hook_point`` replaces ``target_hook`` (and the zero ablation is of the target)."""
    spliced = target_hook or hook_point
    seen: dict[str, torch.Tensor] = {}  # a transcoder's input at this forward pass
    bos = tokens.excluded_bos(include_bos)
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0, "kl_zero": 0.0}
    count = 0
    for lo in range(sequences.start, sequences.stop, batch_sequences):
        hi = min(lo + batch_sequences, sequences.stop)
        batch = tokens.rows(lo, hi)
        mask = batch.mask
        ids = torch.from_numpy(batch.input_ids.astype(np.int64)).to(lm.device)
        attn = torch.from_numpy(mask.astype(np.int64)).to(lm.device)
        # the SAE replaces what it was trained on; a document's leading BOS (not trained on) keeps its activation
        keep = torch.from_numpy(batch.kept(bos) | ~mask).to(lm.device)
        # a position predicts the next one when both are real tokens of the same document
        same_doc = (batch["doc_ids"][:, 1:] == batch["doc_ids"][:, :-1]) & mask[:, 1:] & mask[:, :-1]
        target_mask = torch.from_numpy(same_doc).to(lm.device)
        if not bool(target_mask.any()):
            continue

        def splice(x, fn, keep=keep):
            replaced = fn(x)
            return torch.where(keep[..., None], replaced.to(x.dtype), x)

        logits = {
            "clean": lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits,
        }
        if target_hook is None:
            replace = {hook_point: lambda x: splice(x, lambda a: sae(a.float()))}
        else:  # the input is read on the way (it comes first in the forward pass), the target replaced
            replace = {hook_point: lambda x: seen.__setitem__("input", x),
                       target_hook: lambda x: splice(x, lambda a: sae(seen["input"].float()))}
        with lm.hooks(replace):
            logits["sae"] = lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        with lm.hooks({spliced: lambda x: splice(x, torch.zeros_like)}):
            logits["zero"] = lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        targets = ids[:, 1:][target_mask]
        logp = {k: F.log_softmax(v[:, :-1][target_mask].float(), dim=-1) for k, v in logits.items()}
        for name in ("clean", "sae", "zero"):
            totals[name] += float(F.nll_loss(logp[name], targets, reduction="sum"))
        totals["kl"] += float(F.kl_div(logp["sae"], logp["clean"], log_target=True, reduction="sum"))
        totals["kl_zero"] += float(F.kl_div(logp["zero"], logp["clean"], log_target=True, reduction="sum"))
        count += int(target_mask.sum())
    if count == 0:
        return {}
    ce = {k: v / count for k, v in totals.items()}
    gap = ce["zero"] - ce["clean"]
    out: dict[str, object] = {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"], "kl": ce["kl"],
           "ce_recovered": (ce["zero"] - ce["sae"]) / gap if abs(gap) > 1e-9 else float("nan"),
           "kl_zero": ce["kl_zero"],
           "kl_recovered": 1 - ce["kl"] / ce["kl_zero"] if ce["kl_zero"] > 1e-12 else float("nan"),
           "ce_tokens": count}
    warnings = ce_warnings(out)
    if warnings:
        out["warnings"] = warnings
    return out


def ce_warnings(evaluation: dict) -> list[str]:
    """Why the CE figures of an evaluation should not be read at face value (an empty list when they can)."""
    out = []
    gap = evaluation["ce_zero"] - evaluation["ce_clean"]
    if gap <= 1e-9:
        out.append(f"zero-ablating the hook point does not raise the loss (clean {evaluation['ce_clean']:.4g}, "
                   f"zero-ablated {evaluation['ce_zero']:.4g}): ce_recovered has no meaning here; read ce_sae and kl")
    elif not 0.0 <= evaluation["ce_recovered"] <= 1.0:
        out.append(f"ce_recovered={evaluation['ce_recovered']:.4g} is outside [0, 1]: the SAE's loss "
                   f"({evaluation['ce_sae']:.4g}) is " + ("below the clean loss" if evaluation["ce_recovered"] > 1
                                                          else "above the zero-ablated loss"))
    return out
