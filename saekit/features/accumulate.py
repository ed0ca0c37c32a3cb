"""The streaming part of a feature analysis: everything it keeps per latent, updated a block of rows at a
time with whole-tensor operations (no Python loop over latents), in memory that does not grow with the
number of tokens.

Per latent: how often it fired, the sum and the maximum of its activations, a histogram of its nonzero
activations (log-spaced bins), its exact top-k activations, and a uniform sample of its activations (a
reservoir: the entries with the smallest random keys), each with a context window - the latent's activation
on every token around the activating one. Ties in the top-k go to the earlier row, so the result is the
same whatever the batch size. Every key is a function of (row, latent), so a resumed pass keeps exactly
what an uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_PER_DECADE = -4.0, 4.0, 8  # bins of log10(activation); the ends catch the rest
HIST_BINS = int((HIST_LOG10_MAX - HIST_LOG10_MIN) * HIST_PER_DECADE) + 2
ROW_BITS = 32  # a top-k key: 31 bits of the float32 value, then 32 of the row (analyses of up to 2**32 tokens)
MAX_ROWS = 2**ROW_BITS
BLOCK_ROW_BITS = 14  # a block (core rows and their context) has fewer than 2**14 rows
MAX_BLOCK_ROWS = 2**BLOCK_ROW_BITS
ORDER_BITS = 31 + BLOCK_ROW_BITS  # a block-local order of one latent's entries; the latent takes the bits above
SAMPLE_KEY_BITS = ORDER_BITS  # the reservoir's random keys
SAMPLE_MASK = (1 << SAMPLE_KEY_BITS) - 1
SAMPLE_HIGH_SHIFT = SAMPLE_KEY_BITS - 31  # a key's high bits as a non-negative int32
DENSE_LOOKUP_LIMIT = 2**26  # block rows x latents up to which a window lookup may build the dense block (256 MB)
LOOKUPS_PER_CELL = 16  # dense lookups once the searches would be more than 1/16 of the block's cells
COOCCURRENCE_PAIRS = 2**24  # ordered latent pairs on the co-occurrence sample's rows, at most
COOCCURRENCE_MATRIX = 2**24  # up to this d_sae**2 the pairs are counted into a dense matrix
PRODUCT_PER_PAIR = 64  # a multiply-add of the 0/1 product costs 1/64 of listing and counting one pair
_MIX1, _MIX2 = -4658895280553007687, -7723592293110705685  # splitmix64's constants, as signed int64


def hist_edges() -> list[float]:
    """The histogram's bin edges (the first bin holds everything below 1e-4, the last everything above 1e4)."""
    inner = [10 ** (HIST_LOG10_MIN + i / HIST_PER_DECADE) for i in range(HIST_BINS - 1)]
    return [0.0, *inner, float("inf")]


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser of int64 ``x`` (a well-mixed int64 per value)."""
    x = x.to(torch.int64)
    x = (x ^ (x >> 30)) * _MIX1
    x = (x ^ (x >> 27)) * _MIX2
    return x ^ (x >> 31)


def row_hashes(first: int, n: int, seed: int, device) -> torch.Tensor:
    """The hashes of stream rows ``first .. first + n`` that a reservoir key XORs with its latent's hash.

    A reservoir key (``SAMPLE_KEY_BITS`` bits) is ``row_hash ^ latent_hash``: for one latent the keys of
    its rows are as random as the row hashes, so its entries with the smallest keys are a uniform sample,
    and a hash per row and per latent (not per entry) keeps it cheap."""
    return _splitmix(torch.arange(first, first + n, device=device) + seed * 0x5851F42D)


def latent_hashes(d_sae: int, device) -> torch.Tensor:
    """The hash of each latent (see ``row_hashes``)."""
    return _splitmix(torch.arange(d_sae, device=device) - (1 << 40))  # apart from any row's number


def top_keys(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """An int64 that orders entries by value (descending), then row (ascending): for activations >= 0 the
    float32 bits (31 of them) order like the values; the row takes the low 32 bits."""
    bits = values.float().clamp_min(0).view(torch.int32).to(torch.int64)
    return (bits << ROW_BITS) | ((1 << ROW_BITS) - 1 - rows.to(torch.int64))


@dataclass
class Block:
    """A block of rows of the stream: the core rows whose activations are counted, and around them the rows
    their context windows reach (``before`` rows ahead, the rest after). Sparse codes of the whole block;
    the source of each row (its token, document and position)."""

    start: int  # the stream row of the core's first row
    core: int  # how many core rows
    before: int  # how many context rows come before the core in the arrays below
    rows: torch.Tensor  # codes: block-local row of each nonzero entry (int64)
    latents: torch.Tensor  # and its latent (int64)
    values: torch.Tensor  # and its activation (float32)
    token_ids: torch.Tensor  # [block rows] int64
    doc_ids: torch.Tensor  # [block rows] int64
    positions: torch.Tensor  # [block rows] int64
    dense: torch.Tensor | None = None  # the codes as a dense matrix (given, or once a lookup built it)
    ordered: bool = False  # the entries are known to be by row, then latent (else ``Accumulator.add`` checks)
    _runs: tuple | None = None
    _code_keys: torch.Tensor | None = None

    def code_keys(self, d_sae: int) -> torch.Tensor:
        """Each entry's ``row * d_sae + latent`` (ascending once the entries are ordered)."""
        if self._code_keys is None:
            self._code_keys = self.rows * d_sae + self.latents
        return self._code_keys

    def runs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row the first and last row of its run: the rows around it that continue its document (same
        document, consecutive positions)."""
        if self._runs is None:
            n = len(self.doc_ids)
            new = torch.ones(n, dtype=torch.bool, device=self.doc_ids.device)
            new[1:] = (self.doc_ids[1:] != self.doc_ids[:-1]) | (self.positions[1:] != self.positions[:-1] + 1)
            run = torch.cumsum(new, 0) - 1
            starts = new.nonzero().squeeze(1)
            ends = torch.cat([starts[1:] - 1, torch.tensor([n - 1], device=starts.device)])
            self._runs = (starts[run], ends[run])
        return self._runs


class Buffer:
    """Per latent the ``size`` best entries by a key (largest first when ``largest``, else smallest), each with
    its value, stream row and context window (activations and tokens). The slots of a latent are kept in no
    order (a new entry takes the slot of the one it displaces: nothing else moves); ``sorted()`` orders them."""

    FIELDS = ("keys", "values", "rows", "window_values", "window_tokens")

    def __init__(self, d_sae: int, size: int, window: int, *, largest: bool, device):
        self.size, self.window, self.largest = size, window, largest
        self.empty = -1 if largest else torch.iinfo(torch.int64).max
        self.keys = torch.full((d_sae, size), self.empty, dtype=torch.int64, device=device)
        self.values = torch.zeros((d_sae, size), dtype=torch.float32, device=device)
        self.rows = torch.full((d_sae, size), -1, dtype=torch.int64, device=device)
        self.window_values = torch.zeros((d_sae, size, window), dtype=torch.float16, device=device)
        self.window_tokens = torch.full((d_sae, size, window), -1, dtype=torch.int32, device=device)
        self.worst = torch.full((d_sae,), self.empty, dtype=torch.int64, device=device)  # each latent's entry to beat
        # the worst kept key's high bits as an int32, enough to test most entries (``_TopKeys``, ``_SampleKeys``):
        # a top key's activation bits (-1 while a slot is empty), a reservoir key's top 31 bits (else the maximum)
        self.worst_high = torch.full((d_sae,), -1 if largest else torch.iinfo(torch.int32).max, dtype=torch.int32,
                                     device=device)

    def beats(self, latents: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Which entries would enter: better than the latent's worst kept one."""
        last = self.worst[latents]
        return keys > last if self.largest else keys < last

    def _update_worst(self, touched: torch.Tensor) -> None:
        changed = self.keys[touched]
        worst = changed.min(dim=1).values if self.largest else changed.max(dim=1).values
        self.worst[touched] = worst
        high = worst >> (ROW_BITS if self.largest else SAMPLE_HIGH_SHIFT)  # an empty top slot's -1 stays -1
        self.worst_high[touched] = high.clamp(-1, torch.iinfo(torch.int32).max).int()

    def merge(self, latents: torch.Tensor, keys: torch.Tensor, order: torch.Tensor, windows) -> None:
        """Keep, per latent, the best ``size`` of what it had and the candidates (``latents``, ``keys``; ``order``
        ranks one latent's candidates, best first, in ``ORDER_BITS`` bits). ``windows(index)`` gives the value,
        stream row and context window of the candidates at ``index`` (asked only for those that are kept)."""
        size, device = self.size, keys.device
        # the block's own best `size` per latent: one sort of (latent, order), two where the latent's bits do not fit
        if len(self.keys) <= 1 << (63 - ORDER_BITS):
            by_latent = torch.argsort((latents << ORDER_BITS) | order, stable=True)
        else:  # d_sae above 2**18: by order, then stably by latent
            by_order = torch.argsort(order, stable=True)
            by_latent = by_order[torch.argsort(latents[by_order], stable=True)]
        touched, counts = torch.unique_consecutive(latents[by_latent], return_counts=True)
        n, m = len(touched), len(by_latent)
        group = torch.repeat_interleave(torch.arange(n, device=device), counts, output_size=m)
        rank = torch.arange(m, device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts,
                                                                        output_size=m)
        # each latent's first `size` candidates into its row of `index`; the rest into a last, dropped slot
        slot = torch.where(rank < size, group * size + rank, n * size)
        index = torch.full((n * size + 1,), -1, dtype=torch.int64, device=device).scatter_(0, slot, by_latent)
        index = index[:-1].view(n, size)
        cand_keys = torch.where(index >= 0, keys[index.clamp_min(0)], torch.full_like(index, self.empty))
        # the best `size` of what each latent had and its candidates (the old ones first among equals, so a
        # padding candidate never displaces anything)
        old_keys = self.keys[touched]
        _, pick = torch.cat([old_keys, cand_keys], dim=1).sort(dim=1, descending=self.largest, stable=True)
        pick = pick[:, :size]
        stays = torch.zeros((n, 2 * size), dtype=torch.bool, device=device).scatter_(1, pick, True)
        evicted = (~stays[:, :size]).nonzero()  # (latent row, slot), by latent: the slots the newcomers take
        entering = stays[:, size:].nonzero()  # (latent row, candidate rank), by latent, as many per latent
        if len(entering) == 0:
            return
        latent_rows = touched[evicted[:, 0]]
        slots = evicted[:, 1]
        chosen = index[entering[:, 0], entering[:, 1]]
        values, rows, window_values, window_tokens = windows(chosen)
        self.keys[latent_rows, slots] = keys[chosen]
        self.values[latent_rows, slots] = values
        self.rows[latent_rows, slots] = rows
        self.window_values[latent_rows, slots] = window_values.half()
        self.window_tokens[latent_rows, slots] = window_tokens.int()
        self._update_worst(touched)

    def sorted(self) -> dict[str, torch.Tensor]:
        """The fields with each latent's entries best first (empty slots last)."""
        order = torch.argsort(self.keys, dim=1, descending=self.largest, stable=True)
        out = {n: getattr(self, n).gather(1, order) for n in ("keys", "values", "rows")}
        wide = order[:, :, None].expand(-1, -1, self.window)
        out.update({n: getattr(self, n).gather(1, wide) for n in ("window_values", "window_tokens")})
        return out

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{n}": getattr(self, n) for n in self.FIELDS}

    def load(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        for n in self.FIELDS:
            getattr(self, n).copy_(state[f"{prefix}.{n}"])
        self._update_worst(torch.arange(len(self.keys), device=self.keys.device))


class Accumulator:
    """What a feature analysis keeps while it streams (see the module docstring)."""

    def __init__(self, d_sae: int, *, top_k: int, reservoir: int, context: tuple[int, int], seed: int = 0,
                 cooccurrence_rows: int = 16384, device: str | torch.device = "cpu"):
        self.d_sae, self.context, self.seed = d_sae, tuple(context), seed
        self.window = context[0] + 1 + context[1]
        self.rows_seen = 0
        self.total = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max = torch.zeros(d_sae, dtype=torch.float32, device=device)
        self.min = torch.full((d_sae,), math.inf, dtype=torch.float32, device=device)  # of the nonzero activations
        self.hist = torch.zeros((d_sae, HIST_BINS), dtype=torch.int64, device=device)
        self.top = Buffer(d_sae, top_k, self.window, largest=True, device=device)
        self.sample = Buffer(d_sae, reservoir, self.window, largest=False, device=device)
        self.latent_hash = latent_hashes(d_sae, device) & SAMPLE_MASK
        self.cooccurrence_rows = cooccurrence_rows
        self.sampled: list[torch.Tensor] = []  # (row, latent) of the first rows: the co-occurrence sample
        self.sampled_pairs = 0  # ordered pairs of latents on the sampled rows (at most COOCCURRENCE_PAIRS)
        self.sample_full = False  # a row did not fit the pair budget: no later row is sampled

    @property
    def count(self) -> torch.Tensor:
        """How often each latent fired: its histogram's sum (every entry falls in one bin)."""
        return self.hist.sum(dim=1)

    # -- one block ------------------------------------------------------------------------------------
    def add(self, block: Block) -> None:
        if len(block.token_ids) > MAX_BLOCK_ROWS:
            raise ValueError(f"a block of {len(block.token_ids)} rows; at most {MAX_BLOCK_ROWS}")
        code_keys = None if block.ordered else block.code_keys(self.d_sae)
        if code_keys is not None and len(code_keys) > 1 and not bool((code_keys[1:] > code_keys[:-1]).all()):
            order = torch.argsort(code_keys)  # encode_sparse gives them by row, then latent; others are sorted here
            block = Block(block.start, block.core, block.before, block.rows[order], block.latents[order],
                          block.values[order], block.token_ids, block.doc_ids, block.positions, block.dense,
                          _code_keys=code_keys[order])
        bounds = torch.tensor([block.before, block.before + block.core], device=block.rows.device)
        lo, hi = torch.searchsorted(block.rows, bounds).tolist()  # the core's entries: rows are ascending
        rows, latents, values = block.rows[lo:hi], block.latents[lo:hi], block.values[lo:hi]
        self.rows_seen += block.core
        self.total.index_add_(0, latents, values.double())
        self.max.scatter_reduce_(0, latents, values, reduce="amax")
        self.min.scatter_reduce_(0, latents, values, reduce="amin")
        self.hist.view(-1).index_add_(0, _hist_cells(values, latents), torch.ones_like(latents))
        self._cooccur(block, rows, latents)
        # which entries would enter each buffer, tested without making their int64 keys (see ``_TopKeys``,
        # ``_SampleKeys``); the keys are made for those offered
        for buffer, keys in ((self.sample, _SampleKeys(self, block)), (self.top, _TopKeys())):
            self._offer(buffer, block, keys.candidates(buffer, rows, latents, values), rows, latents, values, keys)

    def _offer(self, buffer: Buffer, block: Block, take, rows, latents, values, keys) -> None:
        """Offer ``buffer`` the core entries (block-local ``rows``) where ``take``: a superset of those that
        enter. ``keys`` gives the entries' scores (ordered as their keys, ties allowed) and keys."""
        take = take.nonzero().squeeze(1)  # one read-back on a GPU, not one per tensor
        if len(take) == 0:
            return
        if len(take) < len(rows):
            rows, latents, values = rows[take], latents[take], values[take]
        if _many(len(rows), self.d_sae, buffer.size):  # e.g. a dense code's first block: only each latent's best
            best = _block_best(rows - block.before, latents, keys.scores(rows, latents, values), block.core,
                               self.d_sae, buffer).nonzero().squeeze(1)
            rows, latents, values = rows[best], latents[best], values[best]
        stream_rows = rows - block.before + block.start
        entry_keys, ranks = keys.keys(rows, latents, values, stream_rows)

        def windows(index: torch.Tensor):
            acts, tokens = self._windows(block, rows[index], latents[index])
            return values[index], stream_rows[index], acts, tokens

        buffer.merge(latents, entry_keys, ranks, windows)

    def _windows(self, block: Block, rows: torch.Tensor, latents: torch.Tensor):
        """Each entry's context: the latent's activation and the token at rows ``row - before .. row + after``
        of the block, where those rows continue the same document (else 0 and -1)."""
        before, after = self.context
        first, last = block.runs()
        offsets = torch.arange(-before, after + 1, device=rows.device)
        around = rows[:, None] + offsets[None, :]  # [c, W] block-local rows
        same = (around >= first[rows][:, None]) & (around <= last[rows][:, None])  # within the row's own run
        safe = torch.where(same, around, rows[:, None])
        tokens = torch.where(same, block.token_ids[safe], -1)
        n_rows = len(block.token_ids)
        if block.dense is not None or (LOOKUPS_PER_CELL * safe.numel() > n_rows * self.d_sae
                                       and n_rows * self.d_sae <= DENSE_LOOKUP_LIMIT):
            if block.dense is None:  # many lookups: a dense block is cheaper than searches
                block.dense = _densify(block, self.d_sae)
            acts = torch.where(same, block.dense[safe, latents[:, None]], 0.0)
            return acts, tokens
        wanted = safe * self.d_sae + latents[:, None]
        code_keys = block.code_keys(self.d_sae)
        at = torch.searchsorted(code_keys, wanted).clamp_max(len(code_keys) - 1)
        acts = torch.where((code_keys[at] == wanted) & same, block.values[at], 0.0)
        return acts, tokens

    def _cooccur(self, block: Block, rows: torch.Tensor, latents: torch.Tensor) -> None:
        """Keep the active latents of the first rows (the co-occurrence sample): the first ``cooccurrence_rows``
        rows, fewer where their latents make more than ``COOCCURRENCE_PAIRS`` ordered pairs (a dense SAE, e.g.
        a ReLU SAE early in training, has thousands of active latents a row). Which rows are kept depends only
        on the rows before them, so it does not depend on the block size or on a resume. ``rows`` are the
        core entries' block-local rows, ascending."""
        if self.sample_full or block.start >= self.cooccurrence_rows:
            return  # known on the host: no sync once the sample is taken
        end = torch.tensor([block.before + self.cooccurrence_rows - block.start], device=rows.device)
        n = int(torch.searchsorted(rows, end))  # the entries of rows still in the sample's range
        if n == 0:
            return
        rows = (rows[:n] - block.before + block.start).cpu()
        latents = latents[:n].cpu()
        _, per_row = torch.unique_consecutive(rows, return_counts=True)
        pairs = self.sampled_pairs + torch.cumsum(per_row * (per_row - 1), 0)
        fits = int((pairs <= COOCCURRENCE_PAIRS).sum())  # a prefix of the rows: ``pairs`` is non-decreasing
        if fits < len(per_row):
            self.sample_full = True
        if fits:
            self.sampled_pairs = int(pairs[fits - 1])
            kept = int(per_row[:fits].sum())
            self.sampled.append(torch.stack([rows[:kept], latents[:kept]]))

    # -- saving and restoring (a resume continues exactly) ------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        sampled = torch.cat(self.sampled, dim=1) if self.sampled else torch.zeros((2, 0), dtype=torch.int64)
        return {"count": self.count, "total": self.total, "max": self.max, "min": self.min, "hist": self.hist,
                "rows_seen": torch.tensor([self.rows_seen]), "sampled": sampled,
                "sample_full": torch.tensor([int(self.sample_full)]),
                **self.top.state("top"), **self.sample.state("sample")}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("total", "max", "hist"):  # a checkpoint's "count" is the histogram's sum
            getattr(self, name).copy_(state[name])
        if "min" in state:
            self.min.copy_(state["min"])
        else:  # a checkpoint from before the minimum was kept: the sample's, the lowest seen since
            kept = torch.where(state["sample.rows"] >= 0, state["sample.values"], math.inf)
            self.min.copy_(kept.min(dim=1).values if kept.shape[1] else self.min)
        self.rows_seen = int(state["rows_seen"][0])
        sampled = state["sampled"].cpu()
        self.sampled = [sampled] if sampled.shape[1] else []
        self.sampled_pairs, self.sample_full = _pair_count(sampled[0]), bool(state.get("sample_full", torch.zeros(1))[0])
        self.top.load("top", state)
        self.sample.load("sample", state)

    def cooccurrence(self, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Per latent the ``n`` latents that fired with it most often on the sampled rows: ids [d_sae, n] (-1
        where fewer) and the fraction of its firings there that each of them shared. Counted on the
        accumulator's device; returned on the CPU."""
        device = self.hist.device
        ids = torch.full((self.d_sae, n), -1, dtype=torch.int64, device=device)
        share = torch.zeros((self.d_sae, n), dtype=torch.float32, device=device)
        if not self.sampled:
            return ids.cpu(), share.cpu()
        rows, latents = torch.cat(self.sampled, dim=1).to(device)
        fired = torch.bincount(latents, minlength=self.d_sae)
        d = self.d_sae
        if d * d <= COOCCURRENCE_MATRIX:  # count into a [d_sae, d_sae] matrix; the n largest of each row
            together = _pair_matrix(rows, latents, d)
            together.fill_diagonal_(0)
            key = together * d + (d - 1 - torch.arange(d, device=device))  # most shared first, then the lower id
            best = key.topk(min(n, d), dim=1).values
            counts, found = best // d, d - 1 - best % d
            valid = counts > 0
            ids[:, :best.shape[1]] = torch.where(valid, found, -1)
            share[:, :best.shape[1]] = torch.where(valid, counts.float() / fired.clamp_min(1).float()[:, None], 0.0)
            return ids.cpu(), share.cpu()
        chunks = [torch.unique(a * d + b, return_counts=True) for a, b in _pairs(rows, latents)]
        if not chunks:
            return ids.cpu(), share.cpu()
        keys, counts = chunks[0]
        if len(chunks) > 1:  # the same pair counted in several chunks: add them up
            keys, where = torch.unique(torch.cat([k for k, _ in chunks]), return_inverse=True)
            counts = torch.zeros(len(keys), dtype=torch.int64, device=device).index_add_(0, where, torch.cat([c for _, c in chunks]))
        a, b = keys // self.d_sae, keys % self.d_sae
        order = torch.argsort(counts, descending=True, stable=True)
        order = order[torch.argsort(a[order], stable=True)]  # by latent, most shared first
        a, b, counts = a[order], b[order], counts[order]
        rank = torch.arange(len(a), device=device) - torch.searchsorted(a, torch.arange(self.d_sae, device=device))[a]
        keep = rank < n
        ids[a[keep], rank[keep]] = b[keep]
        share[a[keep], rank[keep]] = counts[keep].float() / fired[a[keep]].clamp_min(1).float()
        return ids.cpu(), share.cpu()


class _TopKeys:
    """A top buffer's keys (``top_keys``) for the entries of one block. A key's high 32 bits are the bits of
    the clamped activation, and the worst kept entry is of an earlier row, which wins a tie: an entry enters
    exactly when its activation bits are above the worst's (``Buffer.worst_high``; an activation whose sign bit
    is set, -0.0 or a negative NaN, never does, as its key would not)."""

    def candidates(self, buffer, rows, latents, values):
        return self.scores(rows, latents, values) > buffer.worst_high[latents]

    def scores(self, rows, latents, values):
        return values.float().clamp_min(0).view(torch.int32)

    def keys(self, rows, latents, values, stream_rows):
        """The keys, and the order within a latent (best first: activation descending, then row ascending)."""
        bits = self.scores(rows, latents, values).to(torch.int64)
        ranks = ((1 << ORDER_BITS) - 1) - ((bits << BLOCK_ROW_BITS) | (MAX_BLOCK_ROWS - 1 - rows))
        return top_keys(values, stream_rows), ranks


class _SampleKeys:
    """The reservoir's keys (``row_hashes``) for the entries of one block: an XOR of a row's hash and a latent's.
    Their high 31 bits are an int32 XOR of the hashes' high bits, compared with the worst kept key's
    (``Buffer.worst_high``): a superset of the entries that enter, found with half the memory traffic."""

    def __init__(self, acc: Accumulator, block: Block):
        rows = len(block.token_ids)  # every row of the block: its hashes are indexed by block-local row
        self.row_hash = row_hashes(block.start - block.before, rows, acc.seed, block.rows.device) & SAMPLE_MASK
        self.latent_hash = acc.latent_hash
        self.row_high, self.latent_high = ((h >> SAMPLE_HIGH_SHIFT).int() for h in (self.row_hash, acc.latent_hash))

    def candidates(self, buffer, rows, latents, values):
        return self.scores(rows, latents, values) <= buffer.worst_high[latents]

    def scores(self, rows, latents, values):
        return self.row_high[rows] ^ self.latent_high[latents]

    def keys(self, rows, latents, values, stream_rows):
        keys = self.row_hash[rows] ^ self.latent_hash[latents]  # masked once: (a & m) ^ (b & m) == (a ^ b) & m
        return keys, keys  # its order within a latent is its key


def _many(candidates: int, d_sae: int, size: int) -> bool:
    """Whether a block offers a buffer so many candidates (more than twice what it holds) that finding each
    latent's best of them on a dense matrix beats sorting them all."""
    return candidates > 2 * d_sae * size


def _densify(block: Block, d_sae: int) -> torch.Tensor:
    """The block's codes as a dense ``[block rows, d_sae]`` matrix."""
    dense = torch.zeros((len(block.token_ids), d_sae), dtype=block.values.dtype, device=block.values.device)
    dense[block.rows, block.latents] = block.values
    return dense


def _block_best(rows: torch.Tensor, latents: torch.Tensor, scores: torch.Tensor, n_rows: int, d_sae: int,
                buffer: Buffer, cells: int = 2**24) -> torch.Tensor:
    """Which entries (``rows`` ascending, in ``0..n_rows``) may be among their latent's ``buffer.size`` best
    within a slice of about ``cells / d_sae`` rows: a superset of the latent's best of all rows (the best of
    the whole are the best of their slice). ``scores`` (integers) order the entries as their keys do, ties
    allowed (``_TopKeys.scores``, ``_SampleKeys.scores``). Each slice's scores go into a dense latent-major matrix
    whose per-latent ``size``-th best score (``topk``, O(n)) is the bar; ties with it are kept; nothing is
    sorted."""
    step = max(1, cells // d_sae)
    if n_rows <= buffer.size:
        return torch.ones_like(scores, dtype=torch.bool)
    ends = torch.arange(0, n_rows + step, step, device=rows.device).clamp_max(n_rows)
    bounds = torch.searchsorted(rows, ends).tolist()
    keep = torch.ones_like(scores, dtype=torch.bool)
    empty = torch.iinfo(scores.dtype).min if buffer.largest else torch.iinfo(scores.dtype).max
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        first = i * step
        height = min(step, n_rows - first)
        if height <= buffer.size or hi == lo:
            continue  # every entry of the slice is among its best
        grid = torch.full((d_sae, height), empty, dtype=scores.dtype, device=scores.device)
        grid[latents[lo:hi], rows[lo:hi] - first] = scores[lo:hi]
        edge = grid.topk(buffer.size, dim=1, largest=buffer.largest, sorted=False).values
        bar = (edge.min(1) if buffer.largest else edge.max(1)).values[latents[lo:hi]]
        keep[lo:hi] = scores[lo:hi] >= bar if buffer.largest else scores[lo:hi] <= bar
    return keep


def _hist_cells(values: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Each entry's cell of the flattened ``[d_sae, HIST_BINS]`` histogram (its bin of log10 activation)."""
    # +inf in the last bin, -inf and what is not above 0 in the first (NaN too: its cast is clamped there)
    bins = values.clamp(1e-30, 1e30).log10_().sub_(HIST_LOG10_MIN).mul_(HIST_PER_DECADE).floor_().add_(1)
    return bins.long().clamp_(0, HIST_BINS - 1).add_(latents, alpha=HIST_BINS)


def _pair_matrix(rows: torch.Tensor, latents: torch.Tensor, d_sae: int) -> torch.Tensor:
    """How often each pair of latents fired on the same row, as an int64 ``[d_sae, d_sae]`` matrix: a
    product of the rows' 0/1 codes where the codes are dense (cheaper than listing ~L0**2 pairs a row),
    else a count of the listed pairs."""
    n_rows = int(rows.unique().numel())
    if n_rows * d_sae * d_sae <= PRODUCT_PER_PAIR * _pair_count(rows):
        together = torch.zeros((d_sae, d_sae), dtype=torch.float64, device=rows.device)
        unique_rows, local = torch.unique(rows, return_inverse=True)
        step = max(1, 2**24 // d_sae)
        for lo in range(0, len(unique_rows), step):
            part = (local >= lo) & (local < lo + step)
            fired = torch.zeros((min(step, len(unique_rows) - lo), d_sae), dtype=torch.float32, device=rows.device)
            fired[local[part] - lo, latents[part]] = 1.0
            together += (fired.t() @ fired).double()  # exact: each product sums fewer than 2**24 ones
        return together.round().long()
    together = torch.zeros(d_sae * d_sae, dtype=torch.int64, device=rows.device)
    for a, b in _pairs(rows, latents):
        together += torch.bincount(a * d_sae + b, minlength=d_sae * d_sae)
    return together.view(d_sae, d_sae)


def _pair_count(rows: torch.Tensor) -> int:
    """Ordered pairs of different latents on the same row, over ``rows`` (one entry per active latent)."""
    _, per_row = torch.unique_consecutive(rows, return_counts=True)
    return int((per_row * (per_row - 1)).sum())


def _pairs(rows: torch.Tensor, latents: torch.Tensor, chunk: int = 2**22):
    """Every ordered pair of different latents active on the same row, as (first latents, second latents),
    in chunks of whole rows of about ``chunk`` pairs (memory stays bounded whatever the L0)."""
    order = torch.argsort(rows, stable=True)
    rows, latents = rows[order], latents[order]
    _, counts = torch.unique_consecutive(rows, return_counts=True)
    ends = torch.cumsum(counts, 0)
    pairs = torch.cumsum(counts * counts, 0)  # with each entry paired with itself, dropped below
    lo_row, lo_pairs = 0, 0
    while lo_row < len(counts):
        hi_row = max(lo_row + 1, int(torch.searchsorted(pairs, lo_pairs + chunk, right=True)))
        lo = int(ends[lo_row - 1]) if lo_row else 0
        a, b = _row_pairs(latents[lo:int(ends[hi_row - 1])], counts[lo_row:hi_row])
        if len(a):
            yield a, b
        lo_row, lo_pairs = hi_row, int(pairs[hi_row - 1])


def _row_pairs(latents: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ordered pairs of different entries within each group of ``counts`` consecutive ``latents``."""
    starts = torch.cumsum(counts, 0) - counts
    group_of = torch.repeat_interleave(torch.arange(len(counts), device=latents.device), counts)  # each entry's row group
    size = counts[group_of]  # each entry pairs with every entry of its group
    first = torch.repeat_interleave(torch.arange(len(latents), device=latents.device), size)
    within = torch.arange(len(first), device=latents.device) - torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
    second = starts[group_of[first]] + within
    keep = first != second
    return latents[first[keep]], latents[second[keep]]
