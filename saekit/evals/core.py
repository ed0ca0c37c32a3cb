"""Core metrics (SAEBench's ``core``): reconstruction and sparsity on held-out rows, and with a model, what the
SAE spliced in does to its next-token loss.

Beside training's own evaluation (FVU, MSE, L0, never-fired latents, CE recovered, KL) it reports what SAEBench's
core reports: the mean cosine of each row and its reconstruction (``cossim``), the ratio of their norms
(``l2_ratio``), the relative reconstruction bias (``relative_reconstruction_bias``, SAEBench's
``E[|x_hat|^2] / E[x_hat.x]``: below 1 when the SAE shrinks its output), the mean L1 of the codes, and KL recovered (``kl_div_score``: 1 - KL with
the SAE / KL with the hook zeroed, from ``downstream_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from saekit.sae.evaluation import downstream_metrics

__all__ = ["downstream_metrics", "held_out", "reconstruction"]


@torch.no_grad()
def reconstruction(sae, batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Reconstruction and sparsity over ``batches`` of raw rows (a transcoder's: ``(input, target)`` pairs)."""
    n, err, sum_x, sum_x2 = 0, 0.0, None, None
    cos = ratio = dot = hat2 = l0 = l1 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.device)
    for batch in batches:
        inputs, x = batch if isinstance(batch, tuple) else (batch, batch)
        inputs = inputs.to(device=sae.device, dtype=torch.float32)
        x = x.to(device=sae.device, dtype=torch.float32)
        z = sae.encode(inputs)
        x_hat = sae.decode(z) + sae.skip_path(inputs)
        fired |= (z != 0).any(0)
        l0 += float((z != 0).sum())
        l1 += float(z.abs().sum())
        err += float((x_hat - x).double().pow(2).sum())
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
    assert sum_x is not None and sum_x2 is not None
    variance = max(float((sum_x2 - sum_x.pow(2) / n).sum()), 1e-12)
    return {"fvu": err / variance, "explained_variance": 1 - err / variance, "mse": err / n, "cossim": cos / n,
            "l2_ratio": ratio / n, "relative_reconstruction_bias": hat2 / dot if dot else float("nan"),
            "l0": l0 / n, "l1": l1 / n, "never_fired_fraction": 1.0 - float(fired.float().mean()),
            "eval_tokens": n}


def held_out(store, hook_point: str, target_hook: str | None, n_tokens: int, batch_size: int = 4096
             ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The last ``n_tokens`` rows of an activation store (at most a tenth of it: the rows training held out)."""
    from saekit.sae.sources import StoreSource

    source = StoreSource(store, hook_point, n_tokens, target_hook=target_hook)
    for batch in source.eval_batches(batch_size):
        yield batch if target_hook is None else (batch[:, :store.d_model], batch[:, store.d_model:])
