"""Matching the features of two SAEs by their decoder directions (``FeatureSet.match``): for each latent of one,
the latent of the other whose decoder row is closest by cosine, and whether the match is mutual (each is the
other's best). Once matched, each analysis' cards show the match in the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saekit.errors import ConfigError

CELLS = 2**26  # similarities computed at a time (256 MB of float32)


def best_matches(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``a`` the row of ``b`` with the highest cosine: (ids, cosines), on the CPU."""
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.float().to(a.device), dim=1)
    ids, cos = torch.empty(len(a), dtype=torch.int64), torch.empty(len(a), dtype=torch.float32)
    step = max(1, CELLS // len(b))  # rows of ``a`` a step: the similarity block stays at CELLS entries
    for lo in range(0, len(a), step):
        values, index = (a[lo:lo + step] @ b.t()).max(dim=1)
        ids[lo:lo + len(values)], cos[lo:lo + len(values)] = index.cpu(), values.cpu()
    return ids, cos


@dataclass
class FeatureMatch:
    """Each latent of analysis ``a`` matched to its closest latent of analysis ``b`` by decoder cosine, and back."""

    a: Any  # FeatureSet (not imported: featureset imports this module)
    b: Any
    a_to_b: tuple[torch.Tensor, torch.Tensor]  # (ids in b, cosines) per latent of a
    b_to_a: tuple[torch.Tensor, torch.Tensor]

    def mutual(self) -> torch.Tensor:
        """Per latent of ``a``: whether its match in ``b`` has it as its own match."""
        ids = self.a_to_b[0]
        return self.b_to_a[0][ids] == torch.arange(len(ids))

    def to_pandas(self):
        """One row per latent of ``a``: its match in ``b``, the cosine, whether it is mutual."""
        import pandas as pd

        ids, cos = self.a_to_b
        return pd.DataFrame({"latent": range(len(ids)), "match": ids.numpy(), "cosine": cos.numpy(),
                             "mutual": self.mutual().numpy()})

    def share(self, threshold: float = 0.9) -> float:
        """The fraction of ``a``'s latents with a match above ``threshold`` cosine."""
        return float((self.a_to_b[1] > threshold).float().mean())

    def __repr__(self) -> str:
        ids, cos = self.a_to_b
        return (f"FeatureMatch {self.a.id} -> {self.b.id}: {len(ids):,} latents, median best cosine "
                f"{float(cos.median()):.3f}, {self.share(0.9):.1%} above 0.9, {int(self.mutual().sum()):,} mutual")


def match(a, b) -> FeatureMatch:
    """Match ``a``'s latents to ``b``'s (both ``FeatureSet``s) by decoder cosine, both ways."""
    if a.id == b.id:
        raise ConfigError(f"analysis {a.id} matched with itself; give another analysis (of another SAE)")
    wa, wb = a.sae().W_dec.detach(), b.sae().W_dec.detach()
    if wa.shape[1] != wb.shape[1]:
        raise ConfigError(f"the SAEs write to different spaces ({wa.shape[1]} and {wb.shape[1]} wide): their "
                          "decoder directions cannot be compared", suggestion="match SAEs of the same model and hook point")
    if a.meta.get("hook_point") != b.meta.get("hook_point"):
        import logging

        logging.getLogger("saekit.features").warning("matching features of %s and %s, which read different hook "
                                                     "points", a.meta.get("hook_point"), b.meta.get("hook_point"))
    return FeatureMatch(a, b, best_matches(wa, wb), best_matches(wb, wa))
