"""Extraction across torchrun ranks: each rank owns a disjoint, chunk-aligned range of the store's rows.

Every rank computes the same plan from the token store alone (no model): the rows each sequence gives (its
real tokens, a leading BOS left out unless kept), the rows of each batch of ``batch_size`` sequences on the
same grid a single process uses, and so the row offset of every batch. The target rows are split into whole
chunks, one contiguous run of chunks per rank. Rank 0 creates the store with its arrays sized to the target
(a zarr array's metadata is then never written by two ranks); each rank runs the batches that overlap its
range through the model - the same batches, so the same activations, as one process - and writes only its own
rows, through the same writer thread as a single process. A batch that straddles two ranges is computed by both.

Each rank commits its position (and the statistics of the rows before it) to ``jobs/<id>/extract-rank-R-of-N.json``
after the rows are written; a new attempt resumes every rank from its file, so a killed rank loses only what it
had not committed. Rank 0 alone writes the event log and the store's attributes: the committed row count it
records is the prefix of rows every rank before has written, so a reader never sees a row that is not there.
At the end rank 0 merges the ranks' statistics in rank order (equal to one process's up to float rounding;
the rows are bitwise equal). Out-of-memory is not recovered from here: halving one rank's batch would leave the
shared grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from saekit._faults import fault_point
from saekit._fs import write_atomic
from saekit.activations.source import forward_rows, tokens_per_batch
from saekit.activations.stats import RunningStats, batch_stats
from saekit.activations.store import SOURCE_ARRAYS, TORCH_DTYPES, exists, open_group
from saekit.activations.writer import ChunkWriter, create_store
from saekit.errors import ConfigError, JobCancelled, StorageError

if TYPE_CHECKING:
    from saekit.activations.extraction import ExtractSpec


def batch_offsets(tokens, bos: int | None, batch_size: int, block: int = 4096) -> np.ndarray:
    """Row offset of each batch of ``batch_size`` sequences (and the total at the end), from the token store."""
    per_sequence = []
    for lo in range(0, tokens.n_sequences, block):
        per_sequence.append(tokens.rows(lo, lo + block).kept(bos).sum(axis=1))
    counts = np.concatenate(per_sequence) if per_sequence else np.zeros(0, dtype=np.int64)
    per_batch = np.add.reduceat(counts, np.arange(0, len(counts), batch_size)) if len(counts) else counts
    return np.concatenate([[0], np.cumsum(per_batch)]).astype(np.int64)


def rank_ranges(target: int, chunk_rows: int, world: int) -> list[tuple[int, int]]:
    """``world`` contiguous row ranges covering ``[0, target)``, each a whole number of chunks (the last one ends
    at ``target``)."""
    chunks = -(-target // chunk_rows)
    edges = [min(target, (chunks * r // world) * chunk_rows) for r in range(world + 1)]
    return [(edges[r], edges[r + 1]) for r in range(world)]


def _rank_file(ctx, rank: int) -> Path:
    return ctx.dir / f"extract-rank-{rank}-of-{ctx.world_size}.json"


def _read_rank(ctx, rank: int) -> dict | None:
    try:
        return json.loads(_rank_file(ctx, rank).read_text())
    except FileNotFoundError:
        return None


def _write_rank(ctx, state: dict) -> None:
    write_atomic(_rank_file(ctx, ctx.rank), json.dumps(state), durable=True)


def committed_prefix(ranges: list[tuple[int, int]], positions: list[int]) -> int:
    """Rows ``[0, n)`` that every rank has written: ranks in order, up to the first that has not finished."""
    done = 0
    for (_lo, hi), pos in zip(ranges, positions):
        done = pos
        if pos < hi:
            break
    return done


def run_ranked(ctx, spec: ExtractSpec, lm, tokens, location: str, group_of, dist) -> dict | None:
    """Rank ``ctx.rank``'s share of an extraction (see the module docstring); rank 0 returns the job's result."""
    names, dtype = spec.hook_points, spec.dtype
    bos = tokens.excluded_bos(spec.include_bos)
    batch_size = spec.batch_size
    if batch_size == "auto":
        batch_size = max(1, tokens_per_batch(lm.device) // tokens.context_length)
    batch_size = int(batch_size)  # extract() allows an int or "auto"
    offsets = batch_offsets(tokens, bos, batch_size)
    target = int(min(spec.max_tokens or offsets[-1], offsets[-1]))
    if ctx.rank == 0:
        if exists(location) and open_group(location, mode="r").attrs.get("job_id") != ctx.job_id:
            raise StorageError(f"{location!r} already holds output made by something else; it is never overwritten")
        if not exists(location):
            for stale in ctx.dir.glob("extract-rank-*"):  # positions in a store that is gone: none of them holds
                stale.unlink()
            group = create_store(location, names, lm.d_model, dtype, spec.chunk_bytes, compression=spec.compression,
                                 attrs={"job_id": ctx.job_id, "model": spec.model, "tokens": spec.tokens,
                                        "include_bos": spec.include_bos, "max_tokens": spec.max_tokens,
                                        "ranks": ctx.world_size, "batch_size": batch_size})
            for name in [*names, *SOURCE_ARRAYS]:
                group[name].resize((target, *group[name].shape[1:]))
        elif open_group(location, mode="r").attrs.get("ranks") != ctx.world_size:
            raise ConfigError(f"the extraction into {location!r} ran on {open_group(location, mode='r').attrs.get('ranks')} "
                              f"rank(s); resume it with the same nproc, not {ctx.world_size}")
    dist.barrier()  # the store exists, sized, before any rank writes
    group = group_of(location)
    ranges = rank_ranges(target, int(group.attrs["chunk_rows"]), ctx.world_size)
    lo, hi = ranges[ctx.rank]
    state = _read_rank(ctx, ctx.rank)
    pos = state["pos"] if state else lo
    stats = ({h: RunningStats.from_dict(state["stats"][h]) for h in names} if state
             else {h: RunningStats(lm.d_model) for h in names})

    commits = [0]

    def on_commit(rows: int, _state: dict, current: dict) -> None:
        _write_rank(ctx, {"pos": rows, "stats": {h: s.to_dict() for h, s in current.items()}})
        commits[0] += 1
        fault_point(f"extract_rank{ctx.rank}_commit{commits[0]}", ctx.attempt)  # the reliability tests kill here

    writer = ChunkWriter(group, location, [*names, *SOURCE_ARRAYS], names, pos, stats, on_commit,
                         expected_rows=hi, record=False)
    storage = TORCH_DTYPES[dtype]
    reader = tokens.reader()
    batch = int(np.searchsorted(offsets, pos, side="right") - 1) if pos < hi else len(offsets) - 1
    last_commit, written, others = time.monotonic(), pos, 0  # others: rows the other ranks had committed
    try:
        while written < hi:
            ctx.check_cancelled()
            start_row = int(offsets[batch])
            rows = reader.rows(batch * batch_size, min((batch + 1) * batch_size, tokens.n_sequences))
            take_lo, take_hi = max(written, start_row) - start_row, min(hi, int(offsets[batch + 1])) - start_row
            acts = forward_rows(lm, rows, names, bos, take_lo, take_hi)
            out, out_stats = {}, {}
            for hook_point in names:
                stored = acts[hook_point].to(storage)
                out_stats[hook_point] = batch_stats(stored)
                host = stored.cpu()
                out[hook_point] = (host.view(torch.uint16) if dtype == "bfloat16" else host).numpy()
            out.update({name: values[take_lo:take_hi] for name, values in rows.sources(rows.kept(bos)).items()})
            writer.put(out, out_stats)
            written = start_row + take_hi
            batch += 1
            if ctx.rank == 0:
                ctx.progress(written - lo + others, target, unit="tokens", phase="extracting", check_cancel=False)
            if time.monotonic() - last_commit > spec.commit_every:
                writer.commit({})
                last_commit = time.monotonic()
                if ctx.rank == 0:
                    positions = _record(ctx, group, ranges)
                    others = sum(p - r[0] for p, r in zip(positions[1:], ranges[1:]))
    except JobCancelled:
        writer.close({})  # what was done is kept
        if ctx.rank == 0:
            _record(ctx, group, ranges)
        raise
    except BaseException:
        writer.close()  # rows after the last commit are rewritten on resume
        raise
    writer.close({})
    dist.barrier()  # every rank's rows are written and committed
    if ctx.rank != 0:
        return None
    states = [_read_rank(ctx, r) for r in range(ctx.world_size)]
    if [s["pos"] if s else None for s in states] != [h for _, h in ranges]:
        raise StorageError(f"ranks ended at rows {[s and s['pos'] for s in states]}, not at {[h for _, h in ranges]}")
    merged = {h: RunningStats(lm.d_model) for h in names}
    for s in states:
        assert s is not None  # every rank's state was read: checked above
        for h in names:
            part = s["stats"][h]
            merged[h].merge({**part, "mean": np.asarray(part["mean"]), "m2": np.asarray(part["m2"])})
    group.attrs.update({"n_tokens": target, "stats": {h: m.to_dict() for h, m in merged.items()}, "complete": True})
    ctx.progress(target, target, unit="tokens", phase="done")
    return {"location": location, "n_tokens": target, "hook_points": names,
            "stats": {h: merged[h].summary() for h in names}}


def _record(ctx, group, ranges) -> list[int]:
    """Rank 0, at each commit: the committed prefix into the store's attributes and a commit record into the event
    log (its resume point says the job is under way); returns every rank's committed position."""
    positions = [(_read_rank(ctx, r) or {"pos": ranges[r][0]})["pos"] for r in range(ctx.world_size)]
    done = committed_prefix(ranges, positions)
    group.attrs.update({"n_tokens": done})
    ctx.commit({"ranks": ctx.world_size, "positions": positions, "rows": done})
    return positions
