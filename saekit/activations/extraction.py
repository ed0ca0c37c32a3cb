"""``sk.extract``: stream a model's activations at hook points into a Zarr ``ActivationStore``, as a job.

Batches of token-store sequences go through the model (stopping after the deepest hook point); the
rows of real tokens (no padding, BOS only if asked) are converted to the storage dtype, their
statistics taken where they live, and handed to the writer thread. Every ``commit_every`` seconds, at a
batch boundary, the writer commits, and the job records the resume point: the next sequence, the
batch size and the statistics. Running out of memory (CUDA's or the host's) halves the batch and goes on.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from saekit.activations.stats import RunningStats, batch_stats
from saekit.activations.store import (
    SOURCE_ARRAYS, STORAGE_DTYPES, TORCH_DTYPES, ActivationStore, exists, is_url, open_group, store_location,
)
from saekit.activations.writer import compressors, create_store
from saekit.data.tokens import TokenStore
from saekit.errors import ConfigError, DataError, JobCancelled, StorageError
from saekit.jobs import job_kind, submit
from saekit.jobs.failures import is_oom
from saekit.models.loading import format_bytes, load_model_from_ref, resolve_device
from saekit.workspace import Workspace, as_workspace

log = logging.getLogger("saekit.activations")

TOKENS_PER_BATCH = {"cpu": 2048, "cuda": 32768}
SOURCE_BYTES = 4 + 8 + 4  # token_ids, doc_ids, positions per row


def _tokens_available(tokens: TokenStore, include_bos: bool) -> int:
    stats = tokens.stats()
    n = int(stats["tokens"])
    bos = tokens.tokenizer_bos_id()
    if not include_bos and bos is not None and "token_counts" in tokens.group:
        n -= int(tokens.group["token_counts"][bos])
    return n


def extract(lm, token_store, hook_points: str | list[str], max_tokens: int | None = None,
            batch_size: int | str = "auto", dtype: str = "bfloat16", include_bos: bool = False,
            device: str = "auto", *, compression: str = "zstd", chunk_bytes: int = 4 * 2**20,
            commit_every: float = 10.0, root: str | None = None, background: bool = True, force: bool = False,
            name: str | None = None, workspace: Workspace | str | None = None, progress: bool = True):
    """Extract activations of ``lm`` at ``hook_points`` over ``token_store`` into an ``ActivationStore``;
    returns the job at once.

    Rows are stored in ``dtype`` (bfloat16 by default; float16 can overflow on large models' outliers,
    float32 on request), without padding, and without BOS tokens unless ``include_bos``. ``max_tokens``
    caps the rows per hook point. ``root`` puts the store elsewhere than the workspace (a folder or an
    fsspec URL such as ``s3://bucket/acts``). Before it starts it logs the disk it needs and refuses
    when the disk does not have it.
    """
    ws = as_workspace(workspace)
    names = [hook_points] if isinstance(hook_points, str) else list(hook_points)
    if not names:
        raise ConfigError("hook_points is empty; name at least one, e.g. 'blocks.6.resid_post'")
    if len(set(names)) != len(names):
        raise ConfigError(f"hook_points {names} names one twice")
    for hook_point in names:
        lm._parse(hook_point)  # HookPointError names the valid ones
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not a storage dtype; use one of {sorted(STORAGE_DTYPES)}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"max_tokens={max_tokens!r} must be a positive integer or None")
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r} must be 'auto' or a positive number of sequences")
    compressors(compression)  # raises on an unknown codec
    resolve_device(device)
    tokens = token_store if isinstance(token_store, TokenStore) else TokenStore.open(token_store, ws)
    if not tokens.complete:
        raise DataError(f"token store {tokens.id} is not complete; wait for its job (sk.job({tokens.id!r}).wait())")
    available = _tokens_available(tokens, include_bos)
    n_rows = available if max_tokens is None else min(max_tokens, available)
    need = n_rows * (lm.d_model * torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size() * len(names) + SOURCE_BYTES)
    where = root or str(ws.path / "activations")
    if not is_url(where):
        folder = Path(where)
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        log.info("extraction of %s tokens x %s at %d hook point(s) in %s needs %s on disk (%s free at %s)",
                 f"{n_rows:,}", lm.d_model, len(names), dtype, format_bytes(need), format_bytes(free), folder)
        if need > free:
            raise StorageError(f"extracting {n_rows:,} tokens needs {format_bytes(need)} but {folder} has "
                               f"{format_bytes(free)} free",
                               suggestion="lower max_tokens, use dtype='bfloat16', or choose another root=")
    else:
        log.info("extraction of %s tokens needs %s at %s", f"{n_rows:,}", format_bytes(need), where)
    spec = {
        "model": lm.ref, "tokens": {"id": tokens.id, "path": str(tokens.path), "corpus": tokens.attrs["corpus"]["fingerprint"],
                                    "tokenizer": tokens.attrs["tokenizer"]["fingerprint"]},
        "hook_points": names, "max_tokens": max_tokens, "dtype": dtype, "include_bos": bool(include_bos), "root": root,
        "batch_size": batch_size, "device": device, "compression": compression, "chunk_bytes": int(chunk_bytes),
        "commit_every": float(commit_every),
    }
    return submit("extract", spec, workspace=ws, background=background, force=force, name=name, progress=progress)


class _BlockReader:
    """Token-store rows read a block of chunks at a time (one Zarr read per array per block, not per batch)."""

    def __init__(self, tokens: TokenStore, block_rows: int | None = None):
        self.tokens = tokens
        self.names = [n for n in ("input_ids", "doc_ids", "positions", "attention_mask") if n in tokens.group]
        self.block_rows = block_rows or max(tokens["input_ids"].chunks[0], 1024)
        self.start, self.block = 0, {}

    def rows(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        if not self.block or lo < self.start or hi > self.start + len(self.block["input_ids"]):
            self.start = lo
            stop = min(lo + max(self.block_rows, hi - lo), self.tokens.n_sequences)
            self.block = {n: np.asarray(self.tokens[n][lo:stop]) for n in self.names}
        return {n: a[lo - self.start:hi - self.start] for n, a in self.block.items()}


def attention_mask(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The real (not padding) positions of a token-store batch, as bools."""
    return batch["attention_mask"].astype(bool) if "attention_mask" in batch else batch["doc_ids"] >= 0


def kept_tokens(batch: dict[str, np.ndarray], mask: np.ndarray, bos: int | None) -> np.ndarray:
    """Which positions of a token-store batch are stored as rows: real tokens, not padding, and not a
    document's leading BOS when ``bos`` is given."""
    keep = mask & (batch["doc_ids"] >= 0)
    if bos is not None:
        keep &= ~((batch["input_ids"] == bos) & (batch["positions"] == 0))
    return keep


def _load_store(ws: Workspace, result: dict) -> ActivationStore:
    return ActivationStore(result["location"], ws)


def _outputs(ws: Workspace, row: dict) -> list[str]:
    import json

    return [store_location(ws, row["id"], json.loads(row["spec"]).get("root"))]


@job_kind("extract", load_result=_load_store, outputs=_outputs,
          volatile=("batch_size", "device", "compression", "chunk_bytes", "commit_every"))
def run_extract(ctx, spec: dict) -> dict:
    """The extract job: token-store sequences -> activation rows in a Zarr store, committed as it goes."""
    from saekit.activations.writer import ChunkWriter

    lm = load_model_from_ref(spec["model"], device=spec["device"])
    if lm.ref.get("fingerprint") != spec["model"].get("fingerprint"):
        raise DataError(f"the model {spec['model']['name_or_path']!r} changed since the job was submitted")
    tokens = TokenStore(spec["tokens"]["path"], ctx.workspace)
    names, dtype = spec["hook_points"], spec["dtype"]
    location = store_location(ctx.workspace, ctx.job_id, spec["root"])
    resume = ctx.resume_point
    if exists(location):
        owner = open_group(location, mode="r").attrs.get("job_id")
        if owner != ctx.job_id:
            raise StorageError(f"{location!r} already holds a store made by {owner or 'something else'}; "
                               "it is never overwritten: delete it or choose another root")
    if resume is None or not exists(location):
        resume = None
        if not is_url(location):
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        group = create_store(location, names, lm.d_model, dtype, spec["chunk_bytes"], compression=spec["compression"],
                             attrs={"job_id": ctx.job_id, "model": spec["model"], "tokens": spec["tokens"],
                                    "include_bos": spec["include_bos"], "max_tokens": spec["max_tokens"]})
    else:
        group = open_group(location, mode="r+")
    device = lm.device
    batch_size = resume["batch_size"] if resume else (
        spec["batch_size"] if spec["batch_size"] != "auto"
        else max(1, TOKENS_PER_BATCH.get(device.type, 2048) // tokens.context_length))
    stats = ({h: RunningStats.from_dict(resume["stats"][h]) for h in names} if resume
             else {h: RunningStats(lm.d_model) for h in names})

    def on_commit(rows: int, state: dict, current: dict) -> None:
        ctx.commit({**state, "rows": rows, "stats": {h: s.to_dict() for h, s in current.items()}})

    sequence, rows = (resume["sequences"], resume["rows"]) if resume else (0, 0)
    target = min(spec["max_tokens"] or np.inf, _tokens_available(tokens, spec["include_bos"]))
    writer = ChunkWriter(group, location, [*names, *SOURCE_ARRAYS], names, rows, stats, on_commit,
                         expected_rows=int(target))
    bos = None if spec["include_bos"] else tokens.tokenizer_bos_id()
    storage = TORCH_DTYPES[dtype]
    if resume:
        ctx.event(f"resuming at sequence {sequence:,} ({rows:,} tokens committed, batch size {batch_size})")
    last_commit = time.monotonic()
    reader = _BlockReader(tokens)
    try:
        ctx.progress(rows, int(target), unit="tokens", phase="extracting")
        while sequence < tokens.n_sequences and rows < target:
            end = min(sequence + batch_size, tokens.n_sequences)
            batch = reader.rows(sequence, end)
            mask = attention_mask(batch)
            try:
                cache = lm.run_with_cache(batch["input_ids"], names, attention_mask=mask.astype(np.int64))
            except Exception as exc:
                if not is_oom(exc) or batch_size == 1:
                    raise
                del exc
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                ctx.event(f"out of memory at batch size {batch_size}; continuing with {batch_size // 2}",
                          level="warning", batch_size=batch_size // 2)
                batch_size //= 2
                continue
            keep = kept_tokens(batch, mask, bos)
            count = int(min(keep.sum(), target - rows))
            keep_t = torch.from_numpy(keep).to(device)
            out, out_stats = {}, {}
            for hook_point in names:
                stored = cache[hook_point][keep_t][:count].to(storage)
                out_stats[hook_point] = batch_stats(stored)
                host = stored.cpu()
                out[hook_point] = (host.view(torch.uint16) if dtype == "bfloat16" else host).numpy()
            for source in SOURCE_ARRAYS:
                key = "input_ids" if source == "token_ids" else source
                out[source] = batch[key][keep][:count].astype(np.int64 if source == "doc_ids" else np.int32)
            writer.put(out, out_stats)
            rows += count
            sequence = end
            if time.monotonic() - last_commit > spec["commit_every"]:
                writer.commit({"sequences": sequence, "batch_size": batch_size})
                last_commit = time.monotonic()
            ctx.progress(rows, int(target), unit="tokens", phase="extracting")
    except JobCancelled:
        writer.close({"sequences": sequence, "batch_size": batch_size})  # keep what was done
        raise
    except BaseException:
        writer.close()  # stop the thread; rows after the last commit are dropped on resume
        raise
    writer.close({"sequences": sequence, "batch_size": batch_size}, trim=True)
    group.attrs.update({"complete": True, "batch_size": batch_size})
    ctx.progress(rows, rows, unit="tokens", phase="done")
    return {"location": location, "n_tokens": rows, "hook_points": names,
            "stats": {h: stats[h].summary() for h in names}}
