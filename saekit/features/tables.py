"""The files of an analysis folder, built from a finished pass with whole-tensor operations:

- ``latents.parquet``: one row per latent (statistics, histogram, quantile edges, top tokens, logit lens,
  neighbours, co-occurring latents, and the text that ``FeatureSet.search`` looks in);
- ``examples.parquet``: one row per kept context (a latent's top-k, then its quantile samples), sorted by
  latent, in row groups of ``EXAMPLES_GROUP`` rows so a card reads only the group(s) its latent is in;
- ``vocab.parquet``: every token id's text, so an analysis is readable without its tokenizer.

Every table is checksummed (``meta.json``'s ``checksums``): ``latents.parquet`` and ``vocab.parquet``, read
whole, by a CRC32C of the file; ``examples.parquet``, read a row group at a time, by the CRC32C that Parquet
keeps in each page header (checked on every read) and one of its footer. A damaged table is a ``DataError``
that says to run the analysis again, never a silently different feature.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saekit._fs import open_file, read_file
from saekit.errors import DataError
from saekit.features.accumulate import Accumulator, hist_edges
from saekit.features.lens import decoder_neighbours, logit_lens

if TYPE_CHECKING:
    from saekit.features.analysis import AnalyzeSpec

EXAMPLES_GROUP = 8192  # rows per Parquet row group of examples.parquet
TOP_TOKENS = 10  # the most frequent activating tokens kept per latent
SEARCH_SEPARATOR = "\x1f"  # between the tokens of a latent's search text (never inside a token's text)


def vocab_strings(tokenizer) -> list[str]:
    """The text of every token id (decoded one id at a time, in one batch call)."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)


def quantile_edges(values: torch.Tensor, valid: torch.Tensor, quantiles: int) -> torch.Tensor:
    """Per row the ``quantiles + 1`` edges of equal-count bins of its valid values, as ``np.quantile`` computes
    them (linear interpolation between the sorted values); NaN for rows without values. [rows, quantiles + 1]."""
    v = torch.where(valid, values.double(), torch.full_like(values, float("inf"), dtype=torch.float64))
    v, _ = v.sort(dim=1)
    n = valid.sum(dim=1)
    q = torch.linspace(0, 1, quantiles + 1, dtype=torch.float64)
    pos = q[None, :] * (n[:, None] - 1).clamp_min(0).double()
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max((n[:, None] - 1).clamp_min(0))
    frac = pos - lo.double()
    a, b = v.gather(1, lo), v.gather(1, hi)
    diff = b - a
    edges = torch.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)  # numpy's _lerp, term for term
    edges = torch.where(frac == 0, a, edges)
    return torch.where(n[:, None] > 0, edges, torch.full_like(edges, float("nan")))


def bin_edges(acc: Accumulator, quantiles: int) -> torch.Tensor:
    """Per latent the ``quantiles + 1`` edges of equal-count bins of all its nonzero activations [d_sae, q + 1],
    on the CPU; NaN for a latent that never fired. While the latent fired no more often than the reservoir
    holds, the sample is every activation and the edges are exact (``quantile_edges``). Beyond, they come from
    the streamed histogram of every activation, by numpy's rule (between the order statistics at
    ``q * (n - 1)``), each order statistic placed within its histogram bin (log-linearly by its rank there,
    the bin clipped to the exact minimum and maximum): the first and last edges are exact, and each other edge
    is off by at most the width of the bins of the two order statistics it lies between (a factor 10**(1/8))."""
    sample_values, sample_valid = acc.sample.values.cpu(), acc.sample.rows.cpu() >= 0
    exact = quantile_edges(sample_values, sample_valid, quantiles)
    count, hist = acc.count.cpu(), acc.hist.cpu().double()
    low, high = acc.min.cpu().double()[:, None], acc.max.cpu().double()[:, None]
    grid = torch.tensor(hist_edges(), dtype=torch.float64)
    cum = torch.cumsum(hist, dim=1)
    n = cum[:, -1:]

    def order_statistic(rank: torch.Tensor) -> torch.Tensor:  # the rank-th smallest (0-indexed), estimated
        b = torch.searchsorted(cum, rank.contiguous(), right=True).clamp_max(hist.shape[1] - 1)
        before = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(rank))
        within = ((rank - before + 0.5) / hist.gather(1, b).clamp_min(1)).clamp(0, 1)
        lo = torch.maximum(grid[b], low).clamp_min(1e-30)
        hi = torch.minimum(grid[b + 1], high).clamp_min(lo)
        value = lo * (hi / lo) ** within
        return torch.where(rank <= 0, low, torch.where(rank >= n - 1, high, value))

    position = torch.linspace(0, 1, quantiles + 1, dtype=torch.float64)[None, :] * (n - 1).clamp_min(0)
    below = position.floor()
    frac = position - below
    a, b = order_statistic(below), order_statistic((below + 1).minimum((n - 1).clamp_min(0)))
    edges = torch.minimum(torch.maximum(a + frac * (b - a), low), high)
    from_histogram = (count > sample_valid.sum(dim=1))[:, None]
    edges = torch.where(from_histogram, edges, exact)
    return torch.where(count[:, None] > 0, edges, torch.full_like(edges, float("nan")))


def quantile_samples(acc: Accumulator, edges: torch.Tensor, per_quantile: int):
    """From each latent's reservoir, ``per_quantile`` entries of each quantile bin (those with the smallest
    random keys, so a uniform draw): (latent, bin, slot in the reservoir) of each, sorted by latent, bin, key."""
    sample = acc.sample  # on the pass' device: read once onto the CPU, where the edges and the tables are
    rows, sample_values, sample_keys = sample.rows.cpu(), sample.values.cpu(), sample.keys.cpu()
    edges = edges.cpu()
    valid = rows >= 0
    latents, slots = valid.nonzero(as_tuple=True)
    if len(latents) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty
    values = sample_values[latents, slots].double()
    inner = edges[latents, 1:-1]  # a value v is in bin q when edges[q] <= v < edges[q + 1]; the last bin is closed
    bins = (values[:, None] >= inner).sum(dim=1)
    keys = sample_keys[latents, slots]
    order = torch.argsort(keys, stable=True)
    group = latents * edges.shape[1] + bins
    order = order[torch.argsort(group[order], stable=True)]
    grouped = group[order]
    starts = torch.searchsorted(grouped, grouped, side="left")
    rank = torch.arange(len(grouped)) - starts
    keep = order[rank < per_quantile]
    return latents[keep], bins[keep], slots[keep]


def top_tokens(acc: Accumulator, n: int = TOP_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent the ``n`` tokens most often at the activating position of its top-k contexts, most often
    first (ties: the token of the higher activation): ids [d_sae, n] (-1 where fewer) and counts."""
    before = acc.context[0]
    top = acc.top.sorted()
    tokens = top["window_tokens"][:, :, before].long().cpu()  # [d_sae, k], best first
    valid = top["rows"].cpu() >= 0
    d_sae, k = tokens.shape
    ids = torch.full((d_sae, n), -1, dtype=torch.int64)
    counts = torch.zeros((d_sae, n), dtype=torch.int64)
    latents, slots = valid.nonzero(as_tuple=True)
    if len(latents) == 0:
        return ids, counts
    vocab = int(tokens.max()) + 1
    keys = latents * vocab + tokens[latents, slots]
    unique, inverse, count = torch.unique(keys, return_inverse=True, return_counts=True)
    first = torch.full((len(unique),), k, dtype=torch.int64).scatter_reduce(0, inverse, slots, reduce="amin")
    lat, tok = unique // vocab, unique % vocab
    order = torch.argsort(first, stable=True)
    order = order[torch.argsort(-count[order], stable=True)]
    order = order[torch.argsort(lat[order], stable=True)]
    lat, tok, count = lat[order], tok[order], count[order]
    rank = torch.arange(len(lat)) - torch.searchsorted(lat, lat, side="left")
    keep = rank < n
    ids[lat[keep], rank[keep]] = tok[keep]
    counts[lat[keep], rank[keep]] = count[keep]
    return ids, counts


def _strings(ids: torch.Tensor, vocab: list[str]) -> list[list[str]]:
    return [[vocab[i] for i in row if 0 <= i < len(vocab)] for row in ids.tolist()]


def _lists(t: torch.Tensor, valid: torch.Tensor | None = None) -> list[list]:
    rows = t.tolist()
    if valid is None:
        return rows
    return [[v for v, ok in zip(row, oks) if ok] for row, oks in zip(rows, valid.tolist())]


def latents_table(spec: AnalyzeSpec, sae, acc: Accumulator, lens, vocab: list[str]) -> pa.Table:
    """One row per latent (see the module docstring); ``lens`` is (unembedding, final-norm scale) or None."""
    n_tokens = max(acc.rows_seen, 1)
    count = acc.count.cpu()
    frequency = count.double() / n_tokens
    mean = torch.where(count > 0, acc.total.cpu() / count.clamp_min(1).double(), torch.zeros((), dtype=torch.float64))
    edges = bin_edges(acc, spec.quantiles)
    tok_ids, tok_counts = top_tokens(acc)
    columns = {
        "latent": pa.array(np.arange(sae.d_sae, dtype=np.int32)),
        "count": pa.array(count.numpy()),
        "frequency": pa.array(frequency.numpy()),
        "log10_frequency": pa.array(np.where(count.numpy() > 0, np.log10(np.maximum(frequency.numpy(), 1e-300)), -np.inf)),
        "mean": pa.array(mean.float().numpy()),
        "max": pa.array(acc.max.cpu().numpy()),
        "histogram": pa.array(list(acc.hist.cpu().numpy()), type=pa.list_(pa.int64())),
        "quantile_edges": pa.array(list(edges.float().numpy()), type=pa.list_(pa.float32())),
        "top_token_ids": pa.array(_lists(tok_ids, tok_ids >= 0), type=pa.list_(pa.int32())),
        "top_token_counts": pa.array(_lists(tok_counts, tok_ids >= 0), type=pa.list_(pa.int32())),
        "top_tokens": pa.array(_strings(tok_ids, vocab), type=pa.list_(pa.string())),
    }
    search = [SEARCH_SEPARATOR.join(t) for t in columns["top_tokens"].to_pylist()]
    w_dec = sae.W_dec.detach()
    if spec.neighbours:
        ids, cos = decoder_neighbours(w_dec, spec.neighbours)
        columns["neighbour_ids"] = pa.array(list(ids.int().numpy()), type=pa.list_(pa.int32()))
        columns["neighbour_cosines"] = pa.array(list(cos.numpy()), type=pa.list_(pa.float32()))
        co_ids, share = acc.cooccurrence(spec.neighbours)
        columns["cooccurring_ids"] = pa.array(_lists(co_ids, co_ids >= 0), type=pa.list_(pa.int32()))
        columns["cooccurring_shares"] = pa.array(_lists(share, co_ids >= 0), type=pa.list_(pa.float32()))
    if lens is not None:
        unembedding, norm_weight = lens
        lens = logit_lens(w_dec.to(unembedding.device), unembedding, norm_weight, n=10)
        for side in ("top", "bottom"):
            names = _strings(lens[f"{side}_ids"], vocab)
            columns[f"logit_{side}_ids"] = pa.array(list(lens[f"{side}_ids"].int().numpy()), type=pa.list_(pa.int32()))
            columns[f"logit_{side}"] = pa.array(names, type=pa.list_(pa.string()))
            columns[f"logit_{side}_values"] = pa.array(list(lens[f"{side}_values"].numpy()), type=pa.list_(pa.float32()))
        search = [s + SEARCH_SEPARATOR + SEARCH_SEPARATOR.join(t) for s, t in zip(search, columns["logit_top"].to_pylist())]
    columns["search_text"] = pa.array([SEARCH_SEPARATOR + s.lower() + SEARCH_SEPARATOR for s in search])
    return pa.table(columns)


def examples_table(spec: AnalyzeSpec, acc: Accumulator) -> pa.Table:
    """One row per kept context, sorted by latent: its top-k (``quantile`` = -1, best first), then its quantile
    samples (``quantile`` = the bin, lowest first). ``tokens``/``values`` are the window; ``center`` is where
    in the window the activating token is; a token of -1 is outside the document."""
    edges = bin_edges(acc, spec.quantiles)
    top, sample = acc.top.sorted(), acc.sample
    t_lat, t_slot = (top["rows"].cpu() >= 0).nonzero(as_tuple=True)  # row-major: by latent, then rank
    q_lat, q_bin, q_slot = quantile_samples(acc, edges, spec.per_quantile)
    latent = torch.cat([t_lat, q_lat])
    quantile = torch.cat([torch.full_like(t_lat, -1), q_bin])
    # stable sort by latent keeps each latent's top-k before its quantile samples, each in its own order
    order = torch.argsort(latent, stable=True)

    def gather(name: str) -> torch.Tensor:
        a, b = top[name].cpu(), getattr(sample, name).cpu()
        return torch.cat([a[t_lat, t_slot], b[q_lat, q_slot]])[order]

    window = acc.window
    tokens, values = gather("window_tokens").int().numpy(), gather("window_values").float().numpy()
    n = len(order)
    rank = torch.cat([t_slot, torch.zeros_like(q_slot)])[order]
    qs = quantile[order]
    # the rank of a quantile sample within its bin: position in its (latent, bin) run
    run = latent[order] * (spec.quantiles + 2) + (qs + 1)
    starts = torch.searchsorted(run, run, side="left")
    rank = torch.where(qs >= 0, torch.arange(n) - starts, rank)
    offsets = pa.array(np.arange(0, (n + 1) * window, window, dtype=np.int32))
    return pa.table({
        "latent": pa.array(latent[order].int().numpy()),
        "quantile": pa.array(qs.to(torch.int16).numpy()),
        "rank": pa.array(rank.to(torch.int16).numpy()),
        "value": pa.array(gather("values").float().numpy()),
        "row": pa.array(gather("rows").numpy()),
        "tokens": pa.ListArray.from_arrays(offsets, pa.array(tokens.reshape(-1))),
        "values": pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1))),
        "center": pa.array(np.full(n, acc.context[0], dtype=np.int16)),
    })


TABLES = ("latents.parquet", "examples.parquet", "vocab.parquet")
_FOOTER_TAIL = 8  # a Parquet file ends with the footer's length (4 bytes) and "PAR1"


def write_tables(folder: Path, latents: pa.Table, examples: pa.Table, vocab: list[str]) -> dict:
    """Write the three tables into ``folder``; returns their checksums (for ``meta.json``)."""
    options = {"compression": "zstd", "write_page_checksum": True}
    pq.write_table(latents, folder / "latents.parquet", **options)
    pq.write_table(examples, folder / "examples.parquet", row_group_size=EXAMPLES_GROUP, **options)
    pq.write_table(pa.table({"token": pa.array(vocab)}), folder / "vocab.parquet", **options)
    sums = {}
    for name in TABLES:
        data = (folder / name).read_bytes()
        sums[name] = {"size": len(data), "crc32c": _crc(data), "footer_crc32c": _crc(_footer(data))}
    return sums


def _crc(data: bytes) -> str:
    return f"{google_crc32c.value(data):08x}"


def _footer(data: bytes) -> bytes:
    """The footer of a Parquet file's bytes (its metadata) with the 8-byte tail."""
    if len(data) < 2 * _FOOTER_TAIL or data[-4:] != b"PAR1":
        return data[-_FOOTER_TAIL:]
    length = int.from_bytes(data[-8:-4], "little")
    return data[-(length + _FOOTER_TAIL):] if length + _FOOTER_TAIL <= len(data) else data[-_FOOTER_TAIL:]


def _damaged(folder, name: str, why: str) -> DataError:
    return DataError(f"the analysis table {name} in {str(folder)!r} is damaged ({why})",
                     suggestion="run the analysis again: sk.analyze(..., force=True) (labels stay in the registry)")


def read_checked(folder, name: str, meta: dict) -> pa.Table:
    """A whole table, its checksum verified (analyses written before checksums are read as they are)."""
    data = read_file(folder, name)
    if data is None:
        raise _damaged(folder, name, "the file is missing")
    expected = (meta.get("checksums") or {}).get(name)
    if expected is not None and (len(data) != expected["size"] or _crc(data) != expected["crc32c"]):
        raise _damaged(folder, name, "its checksum does not match")
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _damaged(folder, name, f"{type(exc).__name__}: {exc}") from None


def open_checked(folder, name: str, meta: dict) -> pq.ParquetFile:
    """A table to read a row group at a time: its size and footer checked now, each page as it is read."""
    expected = (meta.get("checksums") or {}).get(name)
    try:
        f = open_file(folder, name)
    except (FileNotFoundError, NotADirectoryError):
        raise _damaged(folder, name, "the file is missing") from None
    try:
        if expected is not None:
            size = f.seek(0, io.SEEK_END)
            f.seek(max(0, size - _FOOTER_TAIL))
            length = int.from_bytes(f.read(_FOOTER_TAIL)[:4], "little")
            f.seek(max(0, size - min(size, length + _FOOTER_TAIL)))
            tail = f.read()
            f.seek(0)
            if size != expected["size"] or _crc(_footer(tail)) != expected["footer_crc32c"]:
                raise _damaged(folder, name, "its size or footer checksum does not match")
        return pq.ParquetFile(f, page_checksum_verification=expected is not None)
    except DataError:
        f.close()
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        f.close()
        raise _damaged(folder, name, f"{type(exc).__name__}: {exc}") from None


def reading(folder, name: str):
    """A context that turns a failed read of a table (a damaged page) into the ``DataError`` above."""
    return _Reading(folder, name)


class _Reading:
    def __init__(self, folder, name: str):
        self.folder, self.name = folder, name

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and isinstance(exc, (pa.ArrowException, OSError)) and not isinstance(exc, DataError):
            raise _damaged(self.folder, self.name, f"{type(exc).__name__}: {exc}") from None
        return False
