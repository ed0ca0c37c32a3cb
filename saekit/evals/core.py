"""Core metrics (SAEBench's ``core``): reconstruction and sparsity on held-out rows, and with a model, what the
SAE spliced in does to its next-token loss.

Both come from training's own evaluation (``saekit.sae.evaluation``), which measures what SAEBench's core
reports: FVU and explained variance, MSE, cosine, L2 ratio, relative reconstruction bias, L0, L1, never-fired
latents, CE recovered and KL recovered (SAEBench's ``kl_div_score``). Here they are read from the rows training
held out.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from saekit.sae.evaluation import downstream_metrics, reconstruction_metrics

__all__ = ["downstream_metrics", "held_out", "reconstruction_metrics"]


def held_out(store, hook_point: str, target_hook: str | None, n_tokens: int, batch_size: int = 4096
             ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The last ``n_tokens`` rows of an activation store (at most a tenth of it: the rows training held out)."""
    from saekit.sae.sources import StoreSource

    source = StoreSource(store, hook_point, n_tokens, target_hook=target_hook)
    for batch in source.eval_batches(batch_size):
        yield batch if target_hook is None else (batch[:, :store.d_model], batch[:, store.d_model:])
