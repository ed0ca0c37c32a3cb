"""Rows of activations in stream order, with what each row came from (token, document, position), for the
feature analysis: from an activation store (its rows map back through ``token_ids``/``doc_ids``/
``positions``), or from a model run over a token store (activations computed on the fly, never written).

Both yield ``Rows`` blocks and say where a resumed pass starts again (``position``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from saekit.activations.extraction import tokens_per_batch


@dataclass
class Rows:
    x: torch.Tensor  # [n, d_in]
    token_ids: torch.Tensor  # [n] int64
    doc_ids: torch.Tensor  # [n] int64
    positions: torch.Tensor  # [n] int64
    position: dict  # where the stream continues after these rows (the resume point)

    def __len__(self) -> int:
        return len(self.token_ids)

    def slice(self, lo: int, hi: int) -> "Rows":
        return Rows(self.x[lo:hi], self.token_ids[lo:hi], self.doc_ids[lo:hi], self.positions[lo:hi], self.position)

    def clone(self) -> "Rows":
        """A copy that holds only these rows (a slice keeps its whole parent alive)."""
        return Rows(self.x.clone(), self.token_ids.clone(), self.doc_ids.clone(), self.positions.clone(), self.position)

    @staticmethod
    def join(parts: list["Rows"]) -> "Rows":
        parts = [p for p in parts if len(p)]
        return Rows(torch.cat([p.x for p in parts]), torch.cat([p.token_ids for p in parts]),
                    torch.cat([p.doc_ids for p in parts]), torch.cat([p.positions for p in parts]), parts[-1].position)


class StoreRows:
    """Rows ``0..n_tokens`` of one hook point of an activation store, ``block`` at a time, in order."""

    def __init__(self, store, hook_point: str, n_tokens: int):
        self.store, self.hook_point, self.n_tokens = store, hook_point, n_tokens

    def blocks(self, block: int, position: dict | None) -> Iterator[Rows]:
        start = int(position["row"]) if position else 0
        for lo in range(start, self.n_tokens, block):
            hi = min(lo + block, self.n_tokens)
            sources = self.store.sources(lo, hi)
            x = self.store.read(self.hook_point, lo, hi).float()
            token_ids, doc_ids, positions = (torch.from_numpy(sources[n].astype(np.int64))
                                             for n in ("token_ids", "doc_ids", "positions"))
            yield Rows(x, token_ids, doc_ids, positions, {"row": hi})


class ModelRows:
    """The kept tokens' activations of a model over a token store's sequences, in order, until ``n_tokens``."""

    def __init__(self, lm, tokens, hook_point: str, n_tokens: int, include_bos: bool = False):
        self.lm, self.tokens, self.hook_point, self.n_tokens = lm, tokens, hook_point, n_tokens
        self.bos = tokens.excluded_bos(include_bos)
        self.per_forward = max(1, tokens_per_batch(lm.device) // tokens.context_length)

    def blocks(self, block: int, position: dict | None) -> Iterator[Rows]:
        sequence, emitted = (int(position["sequence"]), int(position["rows"])) if position else (0, 0)
        reader = self.tokens.reader()
        while sequence < self.tokens.n_sequences and emitted < self.n_tokens:
            end = min(sequence + self.per_forward, self.tokens.n_sequences)
            batch = reader.rows(sequence, end)
            cache = self.lm.run_with_cache(batch.input_ids, self.hook_point, attention_mask=batch.mask.astype(np.int64))
            keep = batch.kept(self.bos)
            x = cache[self.hook_point][torch.from_numpy(keep).to(self.lm.device)].float().cpu()
            count = min(len(x), self.n_tokens - emitted)
            sources = batch.sources(keep)
            emitted += count
            sequence = end
            token_ids, doc_ids, positions = (torch.from_numpy(sources[n][:count].astype(np.int64))
                                             for n in ("token_ids", "doc_ids", "positions"))
            yield Rows(x[:count], token_ids, doc_ids, positions, {"sequence": sequence, "rows": emitted})
