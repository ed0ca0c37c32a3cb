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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from saekit.activations.source import forward_rows, tokens_per_batch
from saekit.activations.stats import RunningStats, batch_stats_later, to_host
from saekit.activations.store import (
    SOURCE_ARRAYS, STORAGE_DTYPES, TORCH_DTYPES, ActivationStore, exists, is_url, open_group, store_location,
)
from saekit.activations.writer import compressors, create_store
from saekit.data.tokens import TokenStore
from saekit.errors import ConfigError, DataError, StorageError
from saekit.jobs import job_kind, submit
from saekit.jobs.spec import JobSpec, spec_field
from saekit.jobs.failures import is_oom
from saekit.jobs.resumable import ResumableOutput
from saekit._checks import check_positive_int, is_int, is_number
from saekit._fs import format_bytes
from saekit.models.loading import load_model_from_ref, local_rank, resolve_device
from saekit.workspace import Workspace, as_workspace

if TYPE_CHECKING:
    from saekit.registry import JobRecord

log = logging.getLogger("saekit.activations")



@dataclass(frozen=True)
class ExtractSpec(JobSpec):
    """An extract job's spec (``sk.extract`` builds it)."""
    model: dict = spec_field(doc="the model's reference (``lm.ref``: name or path, revision, fingerprint)")
    tokens: dict = spec_field(doc="the token store's reference (``TokenStore.reference()``)")
    hook_points: list[str] = spec_field(doc="the hook points whose activations are stored")
    max_tokens: int | None = spec_field(doc="rows per hook point at most (None: every token)")
    dtype: str = spec_field(doc="the storage dtype: bfloat16, float16 or float32")
    include_bos: bool = spec_field(doc="whether BOS tokens' rows are kept")
    root: str | None = spec_field(doc="a folder or fsspec URL for the store (None: the workspace)")
    batch_size: int | str = spec_field(volatile=True, doc="sequences per forward pass, or 'auto'")
    device: str = spec_field(volatile=True, doc="'auto', 'cpu', 'cuda', 'cuda:1'...")
    compression: str = spec_field(volatile=True, doc="the chunks' codec: zstd, lz4 or none")
    chunk_bytes: int = spec_field(volatile=True, doc="bytes per stored chunk")
    commit_every: float = spec_field(volatile=True, doc="seconds between resume points")
    disk_bytes: int = spec_field(0, volatile=True, doc="the disk the store needs (checked at submit)")


SOURCE_BYTES = 4 + 8 + 4  # token_ids, doc_ids, positions per row


def extract(lm, token_store, hook_points: str | list[str], max_tokens: int | None = None,
            batch_size: int | str = "auto", dtype: str = "bfloat16", include_bos: bool = False,
            device: str = "auto", *, compression: str = "zstd", chunk_bytes: int = 4 * 2**20,
            commit_every: float = 10.0, root: str | None = None, background: bool = True, force: bool = False,
            launcher: str | None = None, nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None,
            name: str | None = None, workspace: Workspace | str | None = None, progress: bool = True):
    """Extract activations of ``lm`` at ``hook_points`` over ``token_store`` into an ``ActivationStore``;
    returns the job at once.

    Rows are stored in ``dtype`` (bfloat16 by default; float16 can overflow on large models' outliers,
    float32 on request), without padding, and without BOS tokens unless ``include_bos``. ``max_tokens``
    caps the rows per hook point. ``root`` puts the store elsewhere than the workspace (a folder or an
    fsspec URL such as ``s3://bucket/acts``). Before it starts it logs the disk it needs and refuses
    when the disk does not have it. ``launcher="torchrun", nproc=N`` runs N ranks, each extracting its own
    chunk-aligned range of the rows (the same rows, bitwise, as one process; see ``saekit.activations.ranked``);
    ``nnodes=M, rdzv_endpoint="host:port"`` spreads the ranks over M machines, each other machine joining with
    ``saekit join JOB_ID`` (docs/scaling.md).
    """
    ws = as_workspace(workspace)
    names = [hook_points] if isinstance(hook_points, str) else list(hook_points)
    if not names:
        raise ConfigError("hook_points is empty; name at least one, e.g. 'blocks.6.resid_post'")
    if len(set(names)) != len(names):
        raise ConfigError(f"hook_points {names} names one twice")
    for hook_point in names:
        lm.parse_hook_point(hook_point)  # HookPointError names the valid ones
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not a storage dtype; use one of {sorted(STORAGE_DTYPES)}")
    check_positive_int("max_tokens", max_tokens, allow_none=True)
    if batch_size != "auto" and not (is_int(batch_size) and int(batch_size) >= 1):
        raise ConfigError(f"batch_size={batch_size!r} must be 'auto' or a positive number of sequences")
    check_positive_int("chunk_bytes", chunk_bytes)
    if not is_number(commit_every) or commit_every <= 0:
        raise ConfigError(f"commit_every={commit_every!r} must be a positive number of seconds")
    compressors(compression)  # raises on an unknown codec
    resolve_device(device)
    tokens = token_store if isinstance(token_store, TokenStore) else TokenStore.open(token_store, ws)
    if not tokens.complete:
        raise DataError(f"token store {tokens.id} is not complete; wait for its job (sk.job({tokens.id!r}).wait())")
    lm.check_token_store(tokens)
    available = tokens.tokens_available(include_bos)
    n_rows = available if max_tokens is None else min(max_tokens, available)
    need = n_rows * (lm.d_model * torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size() * len(names) + SOURCE_BYTES)
    where = root or str(ws.path / "activations")
    if not is_url(where):
        folder = Path(where)
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        log.debug("extraction of %s tokens x %s at %d hook point(s) in %s needs %s on disk (%s free at %s)",
                  f"{n_rows:,}", lm.d_model, len(names), dtype, format_bytes(need), format_bytes(free), folder)
        if need > free:
            raise StorageError(f"extracting {n_rows:,} tokens needs {format_bytes(need)} but {folder} has "
                               f"{format_bytes(free)} free",
                               suggestion="lower max_tokens, use dtype='bfloat16', or choose another root=")
    else:
        log.debug("extraction of %s tokens needs %s at %s", f"{n_rows:,}", format_bytes(need), where)
    spec = {
        "model": lm.ref, "tokens": tokens.reference(),
        "hook_points": names, "max_tokens": max_tokens, "dtype": dtype, "include_bos": bool(include_bos), "root": root,
        "batch_size": batch_size, "device": device, "compression": compression, "chunk_bytes": int(chunk_bytes),
        "commit_every": float(commit_every), "disk_bytes": int(need),
    }
    return submit("extract", spec, workspace=ws, background=background, force=force, name=name, progress=progress,
                  launcher=launcher, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)


def _load_store(ws: Workspace, result: dict) -> ActivationStore:
    return ActivationStore(result["location"], ws)


def _outputs(ws: Workspace, row: JobRecord) -> list[str]:

    return [store_location(ws, row.id, row.spec_dict.get("root"))]


@job_kind("extract", load_result=_load_store, outputs=_outputs, output_dirs={"activations": "array-*"},
          spec=ExtractSpec)
def run_extract(ctx, spec: ExtractSpec) -> dict | None:
    """The extract job: token-store sequences -> activation rows in a Zarr store, committed as it goes."""
    from saekit.activations.writer import ChunkWriter

    names, dtype = spec.hook_points, spec.dtype
    location = store_location(ctx.workspace, ctx.job_id, spec.root)
    out = ResumableOutput(ctx, location=location, exists=lambda: exists(location),
                          owner=lambda: open_group(location, mode="r").attrs.get("job_id"),
                          commit_every=spec.commit_every)
    if not out.fresh and open_group(location, mode="r").attrs.get("complete"):
        return _result(open_group(location, mode="r"), location, names)  # it ended, but the end was not recorded
    ctx.progress(0, None, unit="tokens", phase="loading the model")
    load_device = spec.device
    if ctx.world_size > 1 and resolve_device(load_device).type == "cuda":  # pragma: gpu - one GPU per rank of a node
        load_device = f"cuda:{local_rank(ctx.rank) % torch.cuda.device_count()}"
    lm = load_model_from_ref(spec.model, device=load_device)
    if lm.ref.get("fingerprint") != spec.model.get("fingerprint"):
        raise DataError(f"the model {spec.model['name_or_path']!r} changed since the job was submitted")
    tokens = TokenStore(spec.tokens["path"], ctx.workspace)
    if ctx.world_size > 1:  # torchrun: this rank's range of the rows (saekit.activations.ranked)
        return _run_ranked(ctx, spec, lm, tokens, location)
    resume = out.resume
    if out.fresh:
        if not is_url(location):
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        group = create_store(location, names, lm.d_model, dtype, spec.chunk_bytes, compression=spec.compression,
                             attrs={"job_id": ctx.job_id, "model": spec.model, "tokens": spec.tokens,
                                    "include_bos": spec.include_bos, "max_tokens": spec.max_tokens})
    else:
        group = open_group(location, mode="r+")
    device = lm.device
    batch_size = int(resume["batch_size"] if resume else (
        spec.batch_size if spec.batch_size != "auto"
        else max(1, tokens_per_batch(device) // tokens.context_length)))  # extract() allows an int or "auto"
    stats = ({h: RunningStats.from_dict(resume["stats"][h]) for h in names} if resume
             else {h: RunningStats(lm.d_model) for h in names})

    def on_commit(rows: int, state: dict, current: dict) -> None:
        ctx.commit({**state, "rows": rows, "stats": {h: s.to_dict() for h, s in current.items()}})

    sequence, rows = (resume["sequences"], resume["rows"]) if resume else (0, 0)
    target = min(spec.max_tokens or np.inf, tokens.tokens_available(spec.include_bos))
    writer = ChunkWriter(group, location, [*names, *SOURCE_ARRAYS], names, rows, stats, on_commit,
                         expected_rows=int(target))
    bos = tokens.excluded_bos(spec.include_bos)
    storage = TORCH_DTYPES[dtype]
    if resume:
        ctx.event(f"resuming at sequence {sequence:,} ({rows:,} tokens committed, batch size {batch_size})")
    else:
        ctx.event(f"extracting {int(target):,} tokens at {len(names)} hook point(s) in {dtype}: about "
                  f"{format_bytes(spec.disk_bytes)} on disk at {location}")
    reader = tokens.reader()
    pending = None  # the last batch's rows, on their way to the host: handed to the writer after the next forward
    written = sequence  # the sequences whose rows the writer has: what a commit records
    try:
        with out.committing(lambda: writer.commit({"sequences": written, "batch_size": batch_size})):
            ctx.progress(rows, int(target), unit="tokens", phase="extracting")
            while sequence < tokens.n_sequences and rows < target:
                end = min(sequence + batch_size, tokens.n_sequences)
                batch = reader.rows(sequence, end)
                keep = batch.kept(bos)
                count = int(min(keep.sum(), target - rows))
                try:
                    acts = forward_rows(lm, batch, names, bos, 0, count)
                except Exception as exc:
                    if not is_oom(exc) or batch_size == 1:
                        raise
                    del exc
                    if device.type == "cuda":  # pragma: gpu
                        torch.cuda.empty_cache()
                    ctx.event(f"out of memory at batch size {batch_size}; continuing with {batch_size // 2}",
                              level="warning", batch_size=batch_size // 2)
                    batch_size //= 2
                    continue
                copies, stats_later = {}, {}
                for hook_point in names:
                    stored = acts[hook_point].to(storage)
                    stats_later[hook_point] = batch_stats_later(stored)
                    copies[hook_point] = to_host(stored)
                del acts
                sources = {name: values[:count] for name, values in batch.sources(keep).items()}
                if pending is not None:
                    written = _hand_over(writer, pending, dtype)
                pending = (copies, stats_later, sources, end)
                rows += count
                sequence = end
                out.tick()
                ctx.progress(rows, int(target), unit="tokens", phase="extracting")
            if pending is not None:
                written = _hand_over(writer, pending, dtype)
                pending = None
    except BaseException:
        writer.close()  # stop the thread (after a cancel's commit); rows after the last commit are dropped on resume
        raise
    writer.close({"sequences": sequence, "batch_size": batch_size}, trim=True)
    nonfinite = {h: stats[h].nonfinite for h in names if stats[h].nonfinite}
    if nonfinite:
        ctx.event(f"the model produced NaN or infinite activations in {nonfinite} row(s); they are stored as they "
                  "are and left out of the statistics", level="warning", nonfinite=nonfinite)
    group.attrs.update({"complete": True, "batch_size": batch_size})
    ctx.progress(rows, rows, unit="tokens", phase="done")
    return _result(group, location, names)


def _hand_over(writer, pending, dtype: str) -> int:
    """Wait for a batch's copies to reach the host, give its rows to the writer; the sequence it ends at."""
    copies, stats_later, sources, end = pending
    rows_out = {}
    for hook_point, (host, ready) in copies.items():
        if ready is not None:  # pragma: gpu
            ready.synchronize()
        rows_out[hook_point] = (host.view(torch.uint16) if dtype == "bfloat16" else host).numpy()
    writer.put({**rows_out, **sources}, {h: finish() for h, finish in stats_later.items()})
    return end


def _run_ranked(ctx, spec: ExtractSpec, lm, tokens, location: str) -> dict | None:
    import torch.distributed as dist

    from saekit.activations.ranked import run_ranked

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # barriers only: the rows go to the store, not over the network
    try:
        return run_ranked(ctx, spec, lm, tokens, location, lambda where: open_group(where, mode="r+"), dist)
    finally:
        dist.destroy_process_group()


def _result(group, location: str, names: list[str]) -> dict:
    stats = {h: RunningStats.from_dict(group.attrs["stats"][h]).summary() for h in names}
    return {"location": location, "n_tokens": int(group.attrs["n_tokens"]), "hook_points": names, "stats": stats}
