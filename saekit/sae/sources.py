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
from saekit.data.tokens import TokenRows, TokenStore


class StoreSource:
    """Batches of one hook point of an activation store; the last ``eval_rows`` rows are held out. With a
    ``target_hook`` (a transcoder's), each row holds the hook point's activation and then the target's."""

    def __init__(self, store: ActivationStore, hook_point: str, eval_tokens: int, buffer_bytes: int = 256 * 2**20,
                 preload: bool | None = False, target_hook: str | None = None):
        self.store, self.hook_point, self.buffer_bytes, self.preload = store, hook_point, buffer_bytes, preload
        self.target_hook = target_hook
        self.columns = [hook_point] if target_hook is None else [hook_point, target_hook]
        n = store.n_tokens
        self.eval_rows = min(int(eval_tokens), n // 10)
        self.train_rows = n - self.eval_rows
        self.d_in = store.d_model

    def batches(self, batch_size: int, seed: int, start_step: int, device: torch.device,
                state: dict | None = None, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
        """Global batches, or rank ``rank``'s slice of each when ``world`` > 1 (every rank reads them whole:
        the shuffle spans the global batch)."""
        stream = self.store.batches(self.columns, batch_size, seed=seed, start_step=start_step, epochs=None,
                                    rows=self.train_rows, buffer_bytes=self.buffer_bytes, device=device,
                                    preload=self._preload(device))
        return stream if world == 1 else _slices(stream, rank * (batch_size // world), batch_size // world)

    def _preload(self, device: torch.device) -> bool:
        """``preload=None``: on a GPU whose free memory holds the training rows four times over; on the CPU
        when they take at most 1 GiB and an eighth of the available memory (streaming keeps memory flat
        for anything larger)."""
        if self.preload is not None:
            return self.preload
        need = self.train_rows * self.d_in * len(self.columns) * self.store.dtype.itemsize
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
            parts = [self.store.read(name, lo, lo + batch_size) for name in self.columns]
            yield torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def describe(self) -> str:
        return (f"activation store {self.store.id}: {self.train_rows:,} training rows, "
                f"{self.eval_rows:,} held out")


def _slices(stream, lo: int, n: int) -> Iterator[torch.Tensor]:
    try:
        for batch in stream:
            yield batch[lo:lo + n]
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()


def _cut(rows: TokenRows, a: int, b: int) -> TokenRows:
    return TokenRows({name: array[a:b] for name, array in rows.arrays.items()})


def _joined(first: TokenRows, second: TokenRows) -> TokenRows:
    return TokenRows({name: np.concatenate([array, second[name]]) for name, array in first.arrays.items()})


class ModelSource:
    """Activations computed on the fly: token-store sequences in a seeded order (a new one each pass)
    go through the model in groups, and their rows (no padding, no leading BOS) are cut into batches.
    The last sequences are held out for evaluation.

    The stream's position is ``(cursor, skip)``: the next sequence in that order and how many of its rows
    earlier batches took. Under torchrun each rank reads the token rows of the whole global batch (to know
    where its slice starts) but runs the model only over the sequences its slice of rows overlaps."""

    def __init__(self, lm, tokens: TokenStore, hook_point: str, eval_tokens: int, include_bos: bool = False,
                 sequences_per_forward: int | None = None, target_hook: str | None = None):
        self.lm, self.tokens, self.hook_point, self.target_hook = lm, tokens, hook_point, target_hook
        self.columns = [hook_point] if target_hook is None else [hook_point, target_hook]
        n = tokens.n_sequences
        self.eval_sequences = min(math.ceil(int(eval_tokens) / tokens.context_length), n // 10)
        self.train_sequences = n - self.eval_sequences
        self.bos = tokens.excluded_bos(include_bos)
        self.per_forward = sequences_per_forward or max(
            1, tokens_per_batch(lm.device) // tokens.context_length)
        self.d_in = lm.d_model
        self.cursor, self.skip = 0, 0
        self.rows_computed = 0  # activation rows this process ran the model for (a rank: about its share)

    def _rows(self, batch, device: torch.device) -> torch.Tensor:
        cache = self.lm.run_with_cache(batch.input_ids, self.columns, attention_mask=batch.mask.astype(np.int64))
        keep = torch.from_numpy(batch.kept(self.bos)).to(self.lm.device)
        acts = cache[self.hook_point] if self.target_hook is None else torch.cat([cache[c] for c in self.columns], -1)
        rows = acts[keep].to(device=device, dtype=torch.float32)
        self.rows_computed += len(rows)
        return rows

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        if getattr(self, "_order_key", None) != (seed, epoch):
            self._order_key = (seed, epoch)
            self._order_cache = np.random.default_rng([seed, epoch]).permutation(self.train_sequences)
        return self._order_cache

    def _indices(self, seed: int, start: int, stop: int) -> np.ndarray:
        """Token-store rows of stream positions ``start..stop-1`` (a position counts across passes)."""
        parts = []
        while start < stop:
            epoch, offset = divmod(start, self.train_sequences)
            part = self._order(seed, epoch)[offset:offset + stop - start]
            parts.append(part)
            start += len(part)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _counts(self, seed: int, start: int, stop: int) -> np.ndarray:
        return self.tokens.take(self._indices(seed, start, stop)).kept(self.bos).sum(1)

    def _position(self, seed: int, state: dict | None) -> tuple[int, int]:
        if not state:
            return 0, 0
        if "skip" in state:
            return int(state["cursor"]), int(state["skip"])
        # a checkpoint of saekit before positions: the rows left over from the last forward pass, whose
        # sequences end just before the cursor
        cursor, left = int(state["cursor"]), 0 if state.get("leftover") is None else len(state["leftover"])
        while left > 0:
            cursor -= 1
            n = int(self._counts(seed, cursor, cursor + 1)[0])
            if n >= left:
                return cursor, n - left
            left -= n
        return cursor, 0

    def batches(self, batch_size: int, seed: int, start_step: int, device: torch.device,
                state: dict | None = None, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
        """Batches from the stream position in ``state`` (the start when None): whole global batches, or
        rank ``rank``'s slice of each (``batch_size // world`` rows) when ``world`` > 1."""
        self.cursor, self.skip = self._position(seed, state)
        local = batch_size // world
        lo, hi = rank * local, (rank + 1) * local
        ahead, counts = None, np.zeros(0, dtype=np.int64)  # token rows read from the cursor on, and their row counts
        # (position, rows) of the last sequence computed: the next batch may start in it
        kept: tuple[int, torch.Tensor] | None = None
        while True:
            while counts.sum() - self.skip < batch_size:
                at = self.cursor + len(counts)
                more = self.tokens.take(self._indices(seed, at, at + self.per_forward))
                ahead = more if ahead is None else _joined(ahead, more)
                counts = np.concatenate([counts, more.kept(self.bos).sum(1)])
            assert ahead is not None  # the first pass reads (skip < batch_size)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) - self.skip  # each one's first row in the batch
            ends = starts + counts
            need = np.flatnonzero((starts < hi) & (ends > lo) & (counts > 0))  # the sequences this slice overlaps
            first, last = int(need[0]), int(need[-1])
            pieces = []
            if kept is not None and kept[0] == self.cursor + first:
                pieces.append(kept[1])
                first += 1
            for a in range(first, last + 1, self.per_forward):
                pieces.append(self._rows(_cut(ahead, a, min(a + self.per_forward, last + 1)), device))
            rows = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            offset = lo - int(starts[need[0]])
            batch = rows[offset:offset + local]
            kept = (self.cursor + last, rows[len(rows) - int(counts[last]):])
            open_ = np.flatnonzero(ends > batch_size)  # the first sequence this batch does not use up
            used = int(open_[0]) if len(open_) else len(counts)
            self.skip = batch_size - int(starts[used]) if len(open_) else 0
            self.cursor += used
            ahead, counts = _cut(ahead, used, len(counts)), counts[used:]
            yield batch

    def state(self) -> dict:
        return {"cursor": self.cursor, "skip": self.skip}

    def eval_sequence_range(self) -> tuple[int, int]:
        return self.train_sequences, self.tokens.n_sequences

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        start, stop = self.eval_sequence_range()
        pending, have = [], 0
        for lo in range(start, stop, self.per_forward):
            rows = self._rows(self.tokens.take(np.arange(lo, min(lo + self.per_forward, stop))), torch.device("cpu"))
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
