"""Where activations come from: an ``ActivationStore``, or a model run over a token store (never written).

Every job that reads activations - extraction, training, feature analysis, evaluation - goes through here:

- ``describe_source(source, ...)`` at submit: checks what the caller gave (a store, a store id, or
  ``(lm, token_store)``) and returns its spec reference, the hook point, its width and rows;
- ``open_source(ref, ...)`` in the worker: rebuilds the source from that reference;
- ``forward_rows(lm, batch, hook_points, bos)``: the one step that runs the model over token-store sequences
  (stopping after the deepest hook point) and keeps the rows of their real tokens.

A source gives training batches (``batches``: shuffled for a seed, restartable at any step, the last rows held
out and read by ``eval_batches``) and rows in order with what each came from (``blocks``: token, document and
position, for the feature analysis). A *paired* source (``target_hook``, a transcoder's) gives each row as the
input hook's activation followed by the target's; ``split_pair`` cuts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from saekit.activations.store import ActivationStore, Prefetcher
from saekit.config import config
from saekit.data.tokens import TokenRows, TokenStore
from saekit.errors import ConfigError, DataError
from saekit.models.hookpoints import saelens_hook

if TYPE_CHECKING:
    from saekit.workspace import Workspace


def tokens_per_batch(device) -> int:
    """Tokens per forward pass when ``batch_size="auto"`` (settings ``extract_tokens_per_batch_cpu|cuda``)."""
    return config.get("extract_tokens_per_batch_cuda" if device.type == "cuda" else "extract_tokens_per_batch_cpu")


def sae_hook(sae, key: str = "hook_point") -> str | None:
    """The hook point an SAE's files say it reads (``hook_point``) or, for a transcoder, writes (``target_hook``)."""
    return saelens_hook((getattr(sae, "metadata", None) or {}).get(key))


def split_pair(batch: torch.Tensor, d_in: int, paired: bool):
    """A paired source's row ``[input | target]`` as ``(input, target)``; an unpaired row as it is."""
    return (batch[:, :d_in], batch[:, d_in:]) if paired else batch


def forward_rows(lm, batch: TokenRows, hook_points: list[str], bos: int | None, lo: int = 0,
                 hi: int | None = None) -> dict[str, torch.Tensor]:
    """The activations of ``batch``'s kept tokens (no padding; no leading BOS unless ``bos`` is None) at each hook
    point, rows ``lo..hi`` of them, on the model's device in its dtype. The rows to keep are sent to the device
    before the forward pass (from pinned memory on a GPU), so the host never waits to learn them."""
    positions = torch.from_numpy(np.flatnonzero(batch.kept(bos))[lo:hi])
    if lm.device.type == "cuda":  # pragma: gpu
        index = positions.pin_memory().to(lm.device, non_blocking=True)
    else:
        index = positions.to(lm.device)
    cache = lm.run_with_cache(batch.input_ids, hook_points, attention_mask=batch.mask.astype(np.int64))
    return {h: cache[h].reshape(-1, cache[h].shape[-1]).index_select(0, index) for h in hook_points}


@dataclass
class Rows:
    """Activation rows in stream order, with the token, document and position each came from."""
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


def _rows(x: torch.Tensor, sources: dict[str, np.ndarray], position: dict, count: int | None = None) -> Rows:
    """``Rows`` of ``x`` with the provenance arrays of a store or a token batch (their first ``count``)."""
    token_ids, doc_ids, positions = (torch.from_numpy(sources[n][:count].astype(np.int64))
                                     for n in ("token_ids", "doc_ids", "positions"))
    return Rows(x, token_ids, doc_ids, positions, position)


def held_out_sequences(tokens: TokenStore, eval_tokens: int) -> int:
    """The last sequences of a token store that a model source holds out for ``eval_tokens`` (at most a tenth)."""
    return min(math.ceil(int(eval_tokens) / tokens.context_length), tokens.n_sequences // 10)


# -- describing a source at submit, rebuilding it in the worker ------------------------------------------------

@dataclass(frozen=True)
class Described:
    """What ``describe_source`` found: the spec reference and what the caller checks against."""
    ref: dict  # {'store': {id, location}} or {'model': lm.ref, 'tokens': token store reference}
    hook_point: str
    d_in: int
    store: ActivationStore | None = None
    lm: object | None = None
    tokens: TokenStore | None = None  # a model source's token store (a store's: ``store_tokens``)

    def training_rows(self, eval_tokens: int) -> int:
        """The rows left to train on once ``eval_tokens`` are held out."""
        if self.store is not None:
            return StoreSource(self.store, self.hook_point, eval_tokens).train_rows
        assert self.tokens is not None
        n = self.tokens.n_sequences
        return max(int(self.tokens.stats()["tokens"] * (n - held_out_sequences(self.tokens, eval_tokens)) / max(n, 1)), 1)

    def rows(self) -> int:
        """Every row the source can give (a model source: its token store's tokens, BOS left out)."""
        if self.store is not None:
            return self.store.n_tokens
        assert self.tokens is not None
        return self.tokens.tokens_available(False)


def describe_source(source, ws: Workspace, hook_point: str | None = None, *, target_hook: str | None = None,
                    default_hook: str | None = None) -> Described:
    """Check ``source`` (an ``ActivationStore``, a store id, or ``(lm, token_store)``) and describe it.

    The hook point is ``hook_point``; else ``default_hook`` (the one an SAE was trained on) where the source has
    it; else a store's only one. A ``target_hook`` (a transcoder's) must be in the source too."""
    if isinstance(source, str):
        source = ActivationStore.open(source, ws)
    if isinstance(source, ActivationStore):
        hook = _store_hook(source, hook_point, default_hook)
        if target_hook is not None and target_hook not in source.hook_points:
            raise ConfigError(f"target_hook={target_hook!r} is not in activation store {source.id}; it holds "
                              f"{source.hook_points}", suggestion="extract both hook points in one pass: "
                              f"sk.extract(lm, tokens, [{hook!r}, {target_hook!r}])")
        if not source.complete:
            raise DataError(f"activation store {source.id} is not complete; wait for its job first")
        return Described({"store": {"id": source.id, "location": source.location}}, hook, source.d_model, store=source)
    if isinstance(source, tuple) and len(source) == 2:
        lm, tokens = source
        tokens = tokens if isinstance(tokens, TokenStore) else TokenStore.open(tokens, ws)
        chosen = hook_point or default_hook
        if chosen is None:
            raise ConfigError("which hook point does the SAE read? pass hook_point=, e.g. 'blocks.6.resid_post'")
        lm.parse_hook_point(chosen)  # HookPointError names the valid ones
        if target_hook is not None:
            lm.parse_hook_point(target_hook)
        if not tokens.complete:
            raise DataError(f"token store {tokens.id} is not complete; wait for its job (sk.job({tokens.id!r}).wait())")
        lm.check_token_store(tokens)
        return Described({"model": lm.ref, "tokens": tokens.reference()}, chosen, lm.d_model, lm=lm, tokens=tokens)
    raise ConfigError(f"source must be an ActivationStore, a store id, or (lm, token_store); got {type(source).__name__}")


def _store_hook(store: ActivationStore, hook_point: str | None, default_hook: str | None) -> str:
    if hook_point is not None:
        store.check_hook_point(hook_point)
        return hook_point
    if default_hook in store.hook_points:
        return default_hook
    if len(store.hook_points) == 1:
        return store.hook_points[0]
    if default_hook is not None:
        raise ConfigError(f"activation store {store.id} holds no {default_hook} (it holds {store.hook_points})",
                          suggestion=f"use a store extracted at {default_hook}, or pass one of {store.hook_points} "
                                     "as hook_point=")
    raise ConfigError(f"which hook point of activation store {store.id} does the SAE read? it holds "
                      f"{store.hook_points}; pass hook_point=", suggestion="e.g. hook_point='blocks.6.resid_post'")


def store_tokens(store: ActivationStore, ws: Workspace) -> TokenStore:
    """The token store an extracted store's rows came from (its rows map back to text through it)."""
    if "token_ids" not in store.group or not (store.attrs.get("tokens") or {}).get("path"):
        raise DataError(f"activation store {store.id} has no token ids (made by from_array?): its rows cannot be "
                        "traced back to text", suggestion="use a store made by sk.extract(lm, tokens, ...)")
    return TokenStore(store.attrs["tokens"]["path"], ws)


def open_source(ref: dict, ws: Workspace, hook_point: str, *, target_hook: str | None = None, eval_tokens: int = 0,
                lm=None, device: str = "auto", buffer_bytes: int = 256 * 2**20, preload: bool | None = False):
    """Rebuild a source in a worker from its spec reference: ``(source, lm)``, the model loaded (on ``device``)
    for a model source unless ``lm`` is given, None for a store."""
    if "store" in ref:
        store = ActivationStore(ref["store"]["location"], ws)
        return StoreSource(store, hook_point, eval_tokens, buffer_bytes, preload, target_hook=target_hook), None
    if lm is None:
        from saekit.models.loading import load_model_from_ref

        lm = load_model_from_ref(ref["model"], device=device)
    tokens = TokenStore(ref["tokens"]["path"], ws)
    return ModelSource(lm, tokens, hook_point, eval_tokens, target_hook=target_hook), lm


# -- the two sources ----------------------------------------------------------------------------------------

class StoreSource:
    """One hook point of an activation store; the last ``eval_rows`` rows are held out for training's evaluation.
    With a ``target_hook`` (a transcoder's), each row holds the hook point's activation and then the target's."""

    def __init__(self, store: ActivationStore, hook_point: str, eval_tokens: int = 0, buffer_bytes: int = 256 * 2**20,
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
        """The held-out rows, in order."""
        for lo in range(self.train_rows, self.store.n_tokens, batch_size):
            parts = [self.store.read(name, lo, lo + batch_size) for name in self.columns]
            yield torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def blocks(self, block: int, position: dict | None, n_tokens: int, *, read_ahead: bool = False
               ) -> Iterator[Rows]:
        """Rows ``0..n_tokens`` of the hook point in order, ``block`` at a time, each with its provenance. With
        ``read_ahead``, the next block is read (decompressed, on a thread) while the caller works on this one:
        what a GPU consumer wants; on a CPU the thread competes with the consumer's own (2 cores: 2% slower)."""
        start = int(position["row"]) if position else 0

        def read() -> Iterator[Rows]:
            for lo in range(start, n_tokens, block):
                hi = min(lo + block, n_tokens)
                x = self.store.read(self.hook_point, lo, hi).float()
                yield _rows(x, self.store.sources(lo, hi), {"row": hi})

        if not read_ahead:
            yield from read()
            return
        ahead = Prefetcher(read(), depth=1)
        try:
            yield from ahead
        finally:
            ahead.close()

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
    """Activations computed on the fly from token-store sequences, never written.

    For training (``batches``), the sequences go through the model in a seeded order (a new one each pass) and
    their rows (no padding, no leading BOS) are cut into batches; the last sequences are held out. The stream's
    position is ``(cursor, skip)``: the next sequence in that order and how many of its rows earlier batches
    took. Under torchrun each rank reads the token rows of the whole global batch (to know where its slice
    starts) but runs the model only over the sequences its slice of rows overlaps. For the feature analysis
    (``blocks``), the sequences go through in order."""

    def __init__(self, lm, tokens: TokenStore, hook_point: str, eval_tokens: int = 0, include_bos: bool = False,
                 sequences_per_forward: int | None = None, target_hook: str | None = None):
        self.lm, self.tokens, self.hook_point, self.target_hook = lm, tokens, hook_point, target_hook
        self.columns = [hook_point] if target_hook is None else [hook_point, target_hook]
        self.eval_sequences = held_out_sequences(tokens, eval_tokens)
        self.train_sequences = tokens.n_sequences - self.eval_sequences
        self.bos = tokens.excluded_bos(include_bos)
        self.per_forward = sequences_per_forward or max(
            1, tokens_per_batch(lm.device) // tokens.context_length)
        self.d_in = lm.d_model
        self.cursor, self.skip = 0, 0
        self.rows_computed = 0  # activation rows this process ran the model for (a rank: about its share)

    def _rows(self, batch: TokenRows, device: torch.device) -> torch.Tensor:
        acts = forward_rows(self.lm, batch, self.columns, self.bos)
        rows = (acts[self.hook_point] if self.target_hook is None else torch.cat([acts[c] for c in self.columns], -1))
        rows = rows.to(device=device, dtype=torch.float32)
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
        """The held-out sequences' rows, in order."""
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

    def blocks(self, block: int, position: dict | None, n_tokens: int, *, read_ahead: bool = False
               ) -> Iterator[Rows]:
        """The kept tokens' rows of the sequences in order until ``n_tokens``, a forward pass at a time (``block``
        is the caller's to cut), each with its provenance. (``read_ahead`` is ``StoreSource``'s: the model's rows
        are computed on its device, there is nothing to read ahead.)"""
        sequence, emitted = (int(position["sequence"]), int(position["rows"])) if position else (0, 0)
        reader = self.tokens.reader()
        while sequence < self.tokens.n_sequences and emitted < n_tokens:
            end = min(sequence + self.per_forward, self.tokens.n_sequences)
            batch = reader.rows(sequence, end)
            kept = batch.kept(self.bos)
            count = int(min(kept.sum(), n_tokens - emitted))
            x = forward_rows(self.lm, batch, [self.hook_point], self.bos, 0, count)[self.hook_point].float().cpu()
            emitted += count
            sequence = end
            yield _rows(x, batch.sources(kept), {"sequence": sequence, "rows": emitted}, count)

    def describe(self) -> str:
        return (f"{self.lm.name} over token store {self.tokens.id}: {self.train_sequences:,} training sequences, "
                f"{self.eval_sequences:,} held out")
