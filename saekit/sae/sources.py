"""Where training batches come from: an ``ActivationStore``, or a model run over a token store (no disk).

Both hold out their last rows (or sequences) for evaluation, stream global batches deterministically
for a seed, and can restart exactly at any step: a store from the step number alone, a model stream
from its ``state()`` (the next sequence and the rows left over from the last forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from saekit.activations.extraction import tokens_per_batch
from saekit.activations.store import ActivationStore
from saekit.config import config
from saekit.data.tokens import TokenStore



class StoreSource:
    """Batches of one hook point of an activation store; the last ``eval_rows`` rows are held out."""

    def __init__(self, store: ActivationStore, hook_point: str, eval_tokens: int, buffer_bytes: int = 256 * 2**20,
                 preload: bool | None = False):
        self.store, self.hook_point, self.buffer_bytes, self.preload = store, hook_point, buffer_bytes, preload
        n = store.n_tokens
        self.eval_rows = min(int(eval_tokens), n // 10)
        self.train_rows = n - self.eval_rows
        self.d_in = store.d_model

    def batches(self, batch_size: int, seed: int, start_step: int, device: torch.device,
                state: dict | None = None) -> Iterator[torch.Tensor]:
        return self.store.batches(self.hook_point, batch_size, seed=seed, start_step=start_step, epochs=None,
                                  rows=self.train_rows, buffer_bytes=self.buffer_bytes, device=device,
                                  preload=self._preload(device))

    def _preload(self, device: torch.device) -> bool:
        """``preload=None``: on a GPU whose free memory holds the training rows four times over; on the CPU
        when they take at most 1 GiB and an eighth of the available memory (streaming keeps memory flat
        for anything larger)."""
        if self.preload is not None:
            return self.preload
        need = self.train_rows * self.d_in * self.store.dtype.itemsize
        if device.type == "cuda":  # pragma: gpu
            free, _ = torch.cuda.mem_get_info(device)
            return need * 4 <= free
        if device.type == "cpu":
            import psutil

            return need <= min(config.get("preload_cpu_bytes"), psutil.virtual_memory().available // 8)
        return False

    def state(self) -> dict:
        return {}  # the step number says where the stream is

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for lo in range(self.train_rows, self.store.n_tokens, batch_size):
            yield self.store.read(self.hook_point, lo, lo + batch_size)

    def describe(self) -> str:
        return (f"activation store {self.store.id}: {self.train_rows:,} training rows, "
                f"{self.eval_rows:,} held out")


class ModelSource:
    """Activations computed on the fly: token-store sequences in a seeded order (a new one each pass)
    go through the model in groups, and their rows (no padding, no leading BOS) are cut into batches.
    The last sequences are held out for evaluation."""

    def __init__(self, lm, tokens: TokenStore, hook_point: str, eval_tokens: int, include_bos: bool = False,
                 sequences_per_forward: int | None = None):
        self.lm, self.tokens, self.hook_point = lm, tokens, hook_point
        n = tokens.n_sequences
        self.eval_sequences = min(math.ceil(int(eval_tokens) / tokens.context_length), n // 10)
        self.train_sequences = n - self.eval_sequences
        self.bos = tokens.excluded_bos(include_bos)
        self.per_forward = sequences_per_forward or max(
            1, tokens_per_batch(lm.device) // tokens.context_length)
        self.d_in = lm.d_model
        self.cursor, self.leftover = 0, None

    def _rows(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        batch = self.tokens.take(indices)
        cache = self.lm.run_with_cache(batch.input_ids, self.hook_point, attention_mask=batch.mask.astype(np.int64))
        keep = torch.from_numpy(batch.kept(self.bos)).to(self.lm.device)
        return cache[self.hook_point][keep].to(device=device, dtype=torch.float32)

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        if getattr(self, "_order_key", None) != (seed, epoch):
            self._order_key = (seed, epoch)
            self._order_cache = np.random.default_rng([seed, epoch]).permutation(self.train_sequences)
        return self._order_cache

    def batches(self, batch_size: int, seed: int, start_step: int, device: torch.device,
                state: dict | None = None) -> Iterator[torch.Tensor]:
        """Global batches from the stream position in ``state`` (the start when None)."""
        self.cursor = int(state["cursor"]) if state else 0
        self.leftover = state["leftover"].to(device) if state and state.get("leftover") is not None else None
        pending = [self.leftover] if self.leftover is not None else []
        have = sum(len(p) for p in pending)
        while True:
            while have < batch_size:
                epoch, offset = divmod(self.cursor, self.train_sequences)
                take = self._order(seed, epoch)[offset:offset + self.per_forward]
                rows = self._rows(take, device)
                self.cursor += len(take)
                pending.append(rows)
                have += len(rows)
            joined = torch.cat(pending) if len(pending) > 1 else pending[0]
            batch, rest = joined[:batch_size], joined[batch_size:]
            self.leftover = rest.clone() if len(rest) else None
            pending, have = ([self.leftover] if self.leftover is not None else []), len(rest)
            yield batch

    def state(self) -> dict:
        return {"cursor": self.cursor, "leftover": None if self.leftover is None else self.leftover.cpu()}

    def eval_sequence_range(self) -> tuple[int, int]:
        return self.train_sequences, self.tokens.n_sequences

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        start, stop = self.eval_sequence_range()
        pending, have = [], 0
        for lo in range(start, stop, self.per_forward):
            rows = self._rows(np.arange(lo, min(lo + self.per_forward, stop)), torch.device("cpu"))
            pending.append(rows)
            have += len(rows)
            if have >= batch_size:
                yield torch.cat(pending)
                pending, have = [], 0
        if pending:
            yield torch.cat(pending)

    def describe(self) -> str:
        return (f"{self.lm.name} over token store {self.tokens.id}: {self.train_sequences:,} training sequences, "
                f"{self.eval_sequences:,} held out")
