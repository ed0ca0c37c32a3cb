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

from saekit.activations.source import split_pair
from saekit.sae.evaluation import downstream_metrics, reconstruction_metrics

__all__ = ["downstream_metrics", "held_out", "reconstruction_metrics"]


def held_out(source, paired: bool, batch_size: int = 4096) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The rows an activation source holds out (``saekit.activations.source``: a store's last rows, a model
    source's last sequences), as training's evaluation reads them; ``(input, target)`` pairs for a transcoder."""
    for batch in source.eval_batches(batch_size):
        yield split_pair(batch, source.d_in, paired)
