"""Matryoshka BatchTopK (Bussmann et al., 2025; Nabeshima, 2024): nested dictionaries in one SAE.

The latents ``0..w`` of each prefix width ``w`` must reconstruct the input on their own: the loss is the sum of
each prefix's FVU (the last prefix is the whole SAE), so the first latents learn the broad features and the later
ones refine them instead of absorbing them. Selection, AuxK and inference are BatchTopK's; SAELens loads a trained
one as the JumpReLU it is at inference, as SAELens saves its own.

Every prefix's reconstruction comes from the one sparse code of the step: the entries are grouped by the prefix
level their latent first belongs to, each group is decoded once into its own rows (one ``sparse_decode`` over all
entries, rows ``level * B + row``), and the prefix reconstructions are the running sums of the groups. The step
costs about what BatchTopK's does (benchmarks/matryoshka.py), not one decode per level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from saekit._checks import is_int
from saekit.errors import ConfigError
from saekit.sae.archs import BatchTopKSAE, _total_variance
from saekit.sae.config import SparseCodedParams
from saekit.sae.model import register_arch
from saekit.sae.sparse import Codes, sparse_decode


def default_widths(d_sae: int) -> tuple[int, ...]:
    """``d_sae / 16, / 8, / 4, / 2`` and ``d_sae``: Bussmann et al.'s doubling groups."""
    return tuple(sorted({max(1, d_sae >> shift) for shift in (4, 3, 2, 1)} | {d_sae}))


@dataclass(frozen=True)
class MatryoshkaParams(SparseCodedParams):
    """BatchTopK's settings and ``widths``: the sizes of the nested dictionaries (prefixes of the latents), strictly
    increasing; ``d_sae`` is added as the last when it is not. None: ``d_sae / 16, / 8, / 4, / 2, d_sae``."""

    widths: tuple[int, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.widths is None:
            return
        widths = self.widths
        if not (isinstance(widths, (list, tuple)) and widths and all(is_int(w) and w > 0 for w in widths)):
            raise ConfigError(f"widths={widths!r} must be a list of positive numbers of latents, e.g. [512, 2048]")
        if any(b <= a for a, b in zip(widths, widths[1:])):
            raise ConfigError(f"widths={list(widths)} must be strictly increasing (each prefix holds the one before)")
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))

    def check(self, d_in, d_sae):
        super().check(d_in, d_sae)
        if d_sae is not None and self.widths is not None and self.widths[-1] > d_sae:
            raise ConfigError(f"widths={list(self.widths)} reach past d_sae={d_sae}",
                              suggestion=f"end them at {d_sae} or below")

    def prefixes(self, d_sae: int) -> tuple[int, ...]:
        """The prefix widths trained, the last being ``d_sae``."""
        widths = self.widths or default_widths(d_sae)
        return widths if widths[-1] == d_sae else (*widths, d_sae)


@register_arch("matryoshka_batchtopk", MatryoshkaParams)
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK whose loss sums the FVU of every prefix of the latents (``widths``, the last being ``d_sae``); the
    metrics ``fvu_at_<w>`` say how well each prefix reconstructs alone."""

    def __init__(self, config, *, device=None):
        super().__init__(config, device=device)
        self.widths = cast(MatryoshkaParams, self.config.params).prefixes(self.d_sae)
        self._boundaries: dict[torch.device, torch.Tensor] = {}  # where each prefix but the last ends, per device

    def _ends(self, device: torch.device) -> torch.Tensor:
        """The inner prefixes' widths on ``device`` (made once: a copy to a GPU each step would wait for it). Not a
        buffer: ``SAE.load`` builds on the meta device and fills only what the file holds."""
        if device not in self._boundaries:
            self._boundaries[device] = torch.tensor(self.widths[:-1], dtype=torch.long, device=device)
        return self._boundaries[device]

    def _reconstruct(self, y, acts, codes: Codes, base):
        """Every prefix's prediction of ``y`` from the one code: the whole SAE's and the losses."""
        b = codes.n_rows
        levels = len(self.widths)
        level = torch.bucketize(codes.cols, self._ends(codes.cols.device), right=True)  # the first prefix holding it
        order = torch.argsort(level * b + codes.rows, stable=True)  # by level, then row (then latent, as before)
        grouped = Codes(level[order] * b + codes.rows[order], codes.cols[order], levels * b, codes.n_latents)
        parts = sparse_decode(acts[order], self.W_dec, grouped).view(levels, b, -1)
        prefixes = parts.cumsum(0) + base  # [levels, B, d_out]: the prediction of each prefix
        total_variance = _total_variance(y)
        fvus = (prefixes - y).pow(2).sum((1, 2)) / total_variance
        losses = {"fvu": fvus[-1], **{f"fvu_at_{w}": fvu for w, fvu in zip(self.widths[:-1], fvus[:-1])}}
        return prefixes[-1], losses
