"""``sk.analyze``: what every latent of an SAE learned, in one streaming pass, as a resumable job whose
result is a ``FeatureSet`` (an analysis folder, ``<workspace>/analyses/<job id>/``).

The pass reads the source in order, a block of rows at a time; each block is encoded once, with the few
rows around it that its context windows need, and folded into the ``Accumulator`` (counts, sums, maxima,
histograms, exact top-k, a reservoir sample, each with windows). Memory does not grow with the number of
tokens. Every ``commit_every`` seconds the accumulator, the rows read but not yet folded in, and the
source's position are checkpointed, so a killed pass resumes to the same result. At the end the per-latent
tables are written as Parquet, with the decoder's nearest neighbours, the co-occurring latents and, with a
model, the logit lens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saekit._checks import check_positive_int, is_int
from saekit._faults import fault_point
from saekit._fs import is_url, publishing, read_file, remove, upload
from saekit.data.tokens import TokenStore
from saekit.errors import ConfigError, DataError
from saekit.features.accumulate import MAX_ROWS, Accumulator, Block, hist_edges
from saekit.features.featureset import analyses_folder, tables_location
from saekit.activations.source import Rows, describe_source, open_source, sae_hook, store_tokens
from saekit.jobs import job_kind, submit
from saekit.jobs.resumable import ResumableOutput
from saekit.jobs.spec import JobSpec, spec_field
from saekit.models.loading import load_model_from_ref, resolve_device
from saekit.workspace import Workspace, as_workspace

log = logging.getLogger("saekit.features")

STATE_FILE = "analysis_state.safetensors"
FORMAT_VERSION = 2  # 2: meta.json carries the tables' checksums


# -- references to the inputs ----------------------------------------------------------------------

@dataclass(frozen=True)
class AnalyzeSpec(JobSpec):
    """An analyze job's spec (``sk.analyze`` builds it)."""
    sae: dict = spec_field(doc="the SAE's reference (its folder and the job that trained it)")
    source: dict = spec_field(doc="{'store': store reference} or {'model': model reference, 'tokens': token store}")
    hook_point: str = spec_field(doc="the hook point whose activations are analysed")
    n_tokens: int = spec_field(doc="tokens analysed")
    top_k: int = spec_field(doc="top contexts kept per latent")
    quantiles: int = spec_field(doc="equal-count bins of the activations, each shown by samples")
    per_quantile: int = spec_field(doc="contexts shown per bin")
    context: list[int] = spec_field(doc="[tokens before, tokens after] an example")
    reservoir: int = spec_field(doc="the per-latent sample the bins' examples are drawn from")
    neighbours: int = spec_field(doc="nearest latents by decoder cosine, and co-firing latents, kept")
    seed: int = spec_field(doc="the sample's seed")
    model: dict | None = spec_field(doc="the model's reference for the logit lens (None: no lens)")
    lens: str | None = spec_field(doc="the cached unembedding's path (the worker need not load the model)")
    tokens: dict = spec_field(doc="the token store's reference (the contexts' text)")
    batch_size: int | str = spec_field(volatile=True, doc="rows per block, or 'auto'")
    device: str = spec_field(volatile=True, doc="'auto', 'cpu', 'cuda'...")
    commit_every: float = spec_field(volatile=True, doc="seconds between checkpoints")
    allow_other_hook: dict | None = spec_field(None, omit_none=True, doc="{'trained': hook, 'analysed': hook} "
                                               "when the SAE reads another hook point (allow_other_hook=True)")
    root: str | None = spec_field(None, omit_none=True, doc="an fsspec URL for the tables (None: the workspace)")


def sae_reference(sae, ws: Workspace) -> tuple[dict, object]:
    """The SAE as a spec reference (a saekit folder and a fingerprint) and the SAE itself. A finished training
    job's SAE is its ``final/`` folder; an SAE loaded from a saekit folder is that folder; any other (imported
    from SAELens or sparsify, or built in memory) is saved into the workspace by content, once."""
    from saekit.jobs.job import Job
    from saekit.sae.model import SAE

    if isinstance(sae, Job):
        record = sae.record()
        if record.kind != "train":
            raise ConfigError(f"job {sae.id} is a {record.kind} job, not a training job; give an SAE or a train job")
        if record.status != "completed":
            raise ConfigError(f"job {sae.id} is {record.status}: it has no trained SAE",
                              suggestion=f"wait for it, or resume it (sk.job({sae.id!r}).resume())")
        saes = record.result_value["saes"]
        if len(saes) != 1:
            raise ConfigError(f"job {sae.id} trained {len(saes)} SAEs; analyse one of them: sk.analyze(job.result()[i], ...)")
        path = saes[0]["path"]
        return {"path": path, "fingerprint": f"job:{sae.id}"}, SAE.load(path)
    if not isinstance(sae, SAE):
        raise ConfigError(f"sae must be an sk.SAE or a finished training job; got {type(sae).__name__}")
    folder = sae.saved_folder()
    if folder and (Path(folder) / "sae.safetensors").exists():
        st = (Path(folder) / "sae.safetensors").stat()
        return {"path": str(folder), "fingerprint": f"file:{st.st_size}:{int(st.st_mtime)}"}, sae
    fingerprint = sae_digest(sae)
    target = ws.path / "saes" / "imported" / fingerprint
    if not (target / "sae.safetensors").exists():
        ws.dir("saes", "imported")
        with publishing(target) as tmp:  # the same SAE analysed twice at once: one save wins
            sae.save(tmp, extra={k: v for k, v in sae.metadata.items() if isinstance(v, (str, int, float, bool))})
    return {"path": str(target), "fingerprint": f"content:{fingerprint}"}, sae


def sae_digest(sae) -> str:
    """A hash of the SAE's weights (16 hex digits): the same SAE has it wherever its files are."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _describe_source(source, sae, model, hook_point: str | None, ws: Workspace):
    """(spec reference, hook point, rows available, the token store, the model for the logit lens)."""
    described = describe_source(source, ws, hook_point, default_hook=sae_hook(sae))
    if described.d_in != sae.d_in:
        raise ConfigError(f"the SAE reads {sae.d_in}-wide activations but {described.hook_point} of the source is "
                          f"{described.d_in}-wide", suggestion="analyse it on the hook point it was trained on")
    store = described.store
    if store is not None:
        tokens = store_tokens(store, ws)
        if model is not None and (store.attrs.get("model") or {}).get("fingerprint") != model.ref.get("fingerprint"):
            raise DataError(f"activation store {store.id} was extracted from {store.attrs['model'].get('name_or_path')!r}, "
                            f"not from the model given ({model.name})",
                            suggestion="give the model the store came from, or model=None (no logit lens)")
        return described.ref, described.hook_point, described.rows(), tokens, model
    if model is not None and model is not described.lm:
        raise ConfigError("give the model once: as the source (lm, token_store), or as model=")
    return described.ref, described.hook_point, described.rows(), described.tokens, described.lm


# -- the public function -------------------------------------------------------------------------------

def analyze(sae, source, *, n_tokens: int | None = None, top_k: int = 20, quantiles: int = 10, per_quantile: int = 5,
            context: tuple[int, int] = (16, 4), model=None, hook_point: str | None = None, batch_size="auto",
            reservoir: int | None = None, neighbours: int = 10, device: str = "auto", seed: int = 0,
            commit_every: float = 60.0, root: str | None = None, allow_other_hook: bool = False,
            background: bool = True, force: bool = False,
            name: str | None = None, workspace: Workspace | str | None = None, progress: bool = True):
    """Analyse every latent of ``sae`` over ``source`` in one streaming pass; returns the job at once
    (``job.result()`` -> ``FeatureSet``).

    ``sae`` is an ``sk.SAE`` (trained here, or from ``sk.SAE.from_pretrained``) or a finished training job;
    ``source`` an ``ActivationStore`` of the SAE's hook point (its rows map back to their tokens) or
    ``(lm, token_store)`` (activations computed on the fly). ``model`` (or the source's ``lm``) adds the logit
    lens. Per latent it keeps frequency, mean and max, a log-spaced histogram, the exact ``top_k`` activations
    and a ``reservoir`` sample (``2 * quantiles * per_quantile`` by default), each with ``context`` tokens
    before and after; ``quantiles`` equal-count bins of all its activations (edges from the histogram once it
    fired more often than the sample holds) with ``per_quantile`` contexts each, drawn from the sample; the
    ``neighbours`` nearest latents by decoder cosine and the latents that fire with it. Memory is about
    ``d_sae * (top_k + reservoir) * (context + 1) * 6`` bytes, whatever ``n_tokens``. ``root`` (an fsspec URL
    such as ``s3://bucket/analyses``) puts the tables under ``<root>/<job id>/`` instead of the workspace's
    ``analyses/``; the labels journal, appended to as labels come in, stays in the workspace either way.
    Activations of another hook point than the one the SAE was trained on are refused, unless
    ``allow_other_hook=True`` (which the job's spec and events then record).
    """
    from saekit.sae.model import SAE  # noqa: F401 (an import error here is clearer than later)

    ws = as_workspace(workspace)
    check_positive_int("top_k", top_k)
    check_positive_int("quantiles", quantiles)
    check_positive_int("per_quantile", per_quantile)
    check_positive_int("neighbours", neighbours, allow_zero=True)
    check_positive_int("n_tokens", n_tokens, allow_none=True)
    check_positive_int("reservoir", reservoir, allow_none=True)
    if not (isinstance(context, (tuple, list)) and len(context) == 2 and all(is_int(c) and c >= 0 for c in context)):
        raise ConfigError(f"context={context!r} must be (tokens before, tokens after), e.g. (16, 4)")
    if batch_size != "auto":
        check_positive_int("batch_size", batch_size)
    if not isinstance(commit_every, (int, float)) or isinstance(commit_every, bool) or not commit_every > 0:
        raise ConfigError(f"commit_every={commit_every!r} must be a positive number of seconds")
    resolve_device(device)
    sae_ref, sae_obj = sae_reference(sae, ws)
    source_ref, hook, available, tokens, lens_model = _describe_source(source, sae_obj, model, hook_point, ws)
    trained = sae_hook(sae_obj)
    if trained is not None and hook != trained:
        if not allow_other_hook:
            raise ConfigError(f"the SAE was trained on {trained}, but the activations given are of {hook}: its "
                              "features would be read off another layer's activations",
                              suggestion=f"analyse activations of {trained} (extract that hook point, or pass "
                                         f"hook_point={trained!r}); allow_other_hook=True analyses them anyway")
        log.warning("analysing an SAE trained on %s on activations of %s (allow_other_hook=True)", trained, hook)
    if available == 0:
        raise DataError("the source has no rows to analyse")
    if n_tokens is not None and n_tokens > available:
        raise ConfigError(f"n_tokens={n_tokens:,} is more than the source's {available:,} rows",
                          suggestion=f"use n_tokens <= {available:,} (or None for all)")
    if (n_tokens or available) > MAX_ROWS:
        raise ConfigError(f"one analysis reads at most {MAX_ROWS:,} tokens; got {n_tokens or available:,}",
                          suggestion=f"pass n_tokens <= {MAX_ROWS:,} (a few million tokens show most features)")
    if top_k > (n_tokens or available):
        raise ConfigError(f"top_k={top_k} is more than the {n_tokens or available:,} tokens analysed: a latent cannot have "
                          "more top contexts than there are tokens", suggestion="give a smaller top_k (20 is usual)")
    spec = {
        "sae": sae_ref, "source": source_ref, "hook_point": hook, "n_tokens": n_tokens or available,
        "top_k": top_k, "quantiles": quantiles, "per_quantile": per_quantile, "context": list(context),
        "reservoir": reservoir or max(2 * quantiles * per_quantile, 32), "neighbours": neighbours, "seed": seed,
        "model": lens_model.ref if lens_model is not None else None,
        "lens": str(_save_unembedding(lens_model, ws)) if lens_model is not None else None, "tokens": tokens.reference(),
        "batch_size": batch_size, "device": device, "commit_every": float(commit_every),
    }
    if trained is not None and hook != trained:  # only then (the key of every other analysis is unchanged)
        spec["allow_other_hook"] = {"trained": trained, "analysed": hook}
    if root is not None:  # only then, so that a workspace analysis' job key is what it always was
        if not isinstance(root, str) or not is_url(root):
            raise ConfigError(f"root={root!r} must be an fsspec URL such as 's3://bucket/analyses' (analyses on a "
                              "local disk live in the workspace)")
        spec["root"] = root.rstrip("/")
    return submit("analyze", spec, workspace=ws, background=background, force=force, name=name, progress=progress)


# -- the job ---------------------------------------------------------------------------------------------

def _load_result(ws: Workspace, result: dict):
    from saekit.features.featureset import FeatureSet

    folder = result["folder"]
    if not is_url(folder):  # this workspace's own folder, also when the workspace was copied or moved
        folder = analyses_folder(ws, Path(folder).name)
    return FeatureSet(folder, workspace=ws)


def _outputs(ws: Workspace, row) -> list[Path | str]:
    local = analyses_folder(ws, row.id)
    root = row.spec_dict.get("root")
    remote = tables_location(ws, row.id, root) if root else None
    return [remote, local] if remote else [local]


def _block_rows(sae, batch_size) -> int:
    """Rows per block: ``batch_size``, or what keeps the block's dense codes near 256 MiB."""
    if batch_size != "auto":
        return int(batch_size)
    return int(max(256, min(8192, 2**28 // (4 * sae.d_sae))))


def _codes(sae, x: torch.Tensor):
    """The SAE's sparse codes of ``x`` as ``encode_sparse`` gives them, and the dense codes where the SAE's rule
    makes them anyway (an SAE without its own ``encode_sparse``, such as ReLU): the context windows read
    activations off them, and their nonzeros come by row, then latent."""
    from saekit.sae.model import SAE

    if type(sae).encode_sparse is not SAE.encode_sparse:
        return (*sae.encode_sparse(x), None)
    z = sae.encode(x).add_(0.0)  # -0.0 (JumpReLU's pre * (pre > threshold)) as 0.0, as windows of listed codes hold
    rows, latents = z.nonzero(as_tuple=True)
    return rows, latents, z[rows, latents], z


class _Pass:
    """The streaming pass: blocks of core rows with their context, folded into the accumulator."""

    def __init__(self, sae, accumulator: Accumulator, before: int, after: int, block: int, device):
        self.sae, self.acc, self.before, self.after, self.block, self.device = sae, accumulator, before, after, block, device
        self.context: Rows | None = None  # the last `before` rows already folded in (context for the next block)
        self.pending: list[Rows] = []  # rows read, not yet folded in

    def _pending_rows(self) -> int:
        return sum(len(r) for r in self.pending)

    def feed(self, rows: Rows) -> bool:
        """Take rows from the source; fold in what has its lookahead. True when something was folded in."""
        self.pending.append(rows)
        folded = False
        while self._pending_rows() >= self.block + self.after:
            self._fold(self.block)
            folded = True
        return folded

    def finish(self) -> None:
        while self._pending_rows():
            self._fold(min(self.block, self._pending_rows()))

    def _fold(self, core: int) -> None:
        joined = Rows.join(self.pending) if len(self.pending) > 1 else self.pending[0]
        lookahead = min(self.after, len(joined) - core)
        head = joined.slice(0, core + lookahead)
        ext = Rows.join([self.context, head]) if self.context is not None else head
        before = len(self.context) if self.context is not None else 0
        with torch.no_grad():
            rows, latents, values, dense = _codes(self.sae, ext.x.to(self.device))
        self.acc.add(Block(start=self.acc.rows_seen, core=core, before=before, rows=rows, latents=latents, values=values,
                           token_ids=ext.token_ids.to(self.device), doc_ids=ext.doc_ids.to(self.device),
                           positions=ext.positions.to(self.device), dense=dense, ordered=dense is not None))
        end = before + core  # the context of the next block: the last `before` rows folded in
        self.context = ext.slice(max(0, end - self.before), end).clone() if self.before else None
        rest = joined.slice(core, len(joined))
        self.pending = [rest] if len(rest) else []

    # -- checkpoints -------------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = dict(self.acc.state())
        for name, rows in (("context", self.context), ("pending", Rows.join(self.pending) if self.pending else None)):
            if rows is not None and len(rows):
                out.update({f"{name}.x": rows.x.contiguous(), f"{name}.token_ids": rows.token_ids,
                            f"{name}.doc_ids": rows.doc_ids, f"{name}.positions": rows.positions})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load(self, state: dict[str, torch.Tensor], position: dict) -> None:
        self.acc.load({k: v.to(self.acc.hist.device) for k, v in state.items()})
        for name in ("context", "pending"):
            if f"{name}.x" in state:
                rows = Rows(state[f"{name}.x"], state[f"{name}.token_ids"], state[f"{name}.doc_ids"],
                            state[f"{name}.positions"], position)
                if name == "context":
                    self.context = rows
                else:
                    self.pending = [rows]


@job_kind("analyze", load_result=_load_result, outputs=_outputs, output_dirs={"analyses": None},
          spec=AnalyzeSpec)
def run_analyze(ctx, spec: AnalyzeSpec) -> dict:
    """The analyze job: one ordered pass over the source, checkpointed, then the per-latent tables."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from saekit.sae.model import SAE

    location = tables_location(ctx.workspace, ctx.job_id, spec.root)
    meta = read_file(location, "meta.json")
    if meta is not None:  # it ended, but the end was not recorded
        return {"folder": location, **json.loads(meta)["summary"]}
    for stale in ctx.dir.glob("tables-*"):  # a killed attempt's tables, written here for upload
        remove(stale)
    state_path = ctx.dir / STATE_FILE  # the pass' checkpoint, in the job's own folder until the tables are written
    out = ResumableOutput(ctx, location=str(state_path), exists=state_path.exists, owner=lambda: ctx.job_id,
                          commit_every=spec.commit_every)
    device = resolve_device(spec.device)
    if spec.allow_other_hook:
        other = spec.allow_other_hook
        ctx.event(f"the SAE was trained on {other['trained']}; these are activations of {other['analysed']} "
                  "(allow_other_hook=True)", level="warning")
    ctx.progress(0, None, unit="tokens", phase="loading the SAE")
    sae = SAE.load(spec.sae["path"], device=str(device)).eval()
    if "model" in spec.source:
        ctx.progress(0, None, unit="tokens", phase="loading the model")
    source, lm = open_source(spec.source, ctx.workspace, spec.hook_point, device=spec.device)
    before, after = spec.context
    acc = Accumulator(sae.d_sae, top_k=spec.top_k, reservoir=spec.reservoir, context=(before, after),
                      seed=spec.seed, device=device)
    stream = _Pass(sae, acc, before, after, _block_rows(sae, spec.batch_size), device)
    position = None
    if not out.fresh:
        with safe_open(state_path, "pt") as f:  # the checkpoint holds its own position: one file, one rename
            position = json.loads(f.metadata()["position"])
        stream.load(load_file(state_path), position)
        ctx.event(f"resuming after {acc.rows_seen:,} of {spec.n_tokens:,} tokens")

    commits = 0

    def commit() -> None:
        nonlocal commits
        with publishing(state_path, replace=True) as tmp:
            save_file(stream.state(), tmp, metadata={"position": json.dumps(position)})
        commits += 1
        fault_point(f"analyze_saved_{commits}", ctx.attempt)  # checkpoint n on disk, not yet recorded
        ctx.commit({"position": position, "rows": acc.rows_seen})
        fault_point(f"analyze_committed_{commits}", ctx.attempt)

    total = spec.n_tokens
    ctx.progress(acc.rows_seen, total, unit="tokens", phase="analysing")
    with out.committing(commit):
        for rows in source.blocks(stream.block, position, spec.n_tokens, read_ahead=device.type == "cuda"):
            position = rows.position
            if stream.feed(rows):
                out.tick()
            ctx.progress(acc.rows_seen, total, unit="tokens", phase="analysing")
        stream.finish()
    ctx.progress(acc.rows_seen, total, unit="tokens", phase="writing the tables")
    lens = None
    if lm is not None:
        lens = lm.unembedding()
    elif spec.model is not None:  # saved by analyze(): the worker need not load the model for the logit lens
        lens = _load_unembedding(spec, device)
    fault_point("analyze_before_tables", ctx.attempt)
    summary = _write(ctx, spec, sae, acc, lens, location)
    ctx.after_end(lambda: remove(state_path))
    ctx.progress(total, total, unit="tokens", phase="done")
    return {"folder": location, **summary}


def _save_unembedding(lm, ws: Workspace) -> Path:
    """The model's unembedding and final-norm scale in the workspace cache (once per model)."""
    from safetensors.torch import save_file

    digest = hashlib.sha256(json.dumps(lm.ref, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = ws.dir("cache", "unembedding") / f"{digest}.safetensors"
    if not path.exists():
        unembedding, scale = lm.unembedding()
        tensors = {"unembedding": unembedding.float().cpu().contiguous()}
        if scale is not None:
            tensors["scale"] = scale.float().cpu().contiguous()
        with publishing(path, replace=True) as tmp:
            save_file(tensors, tmp)
    return path


def _load_unembedding(spec: AnalyzeSpec, device):
    from safetensors.torch import load_file

    path = Path(spec.lens or "")
    if not path.exists():  # the cache was cleared: load the model
        assert spec.model is not None  # run_analyze calls this only with a model
        return load_model_from_ref(spec.model, device=spec.device).unembedding()
    tensors = load_file(path, device=str(device))
    return tensors["unembedding"], tensors.get("scale")


def _write(ctx, spec: AnalyzeSpec, sae, acc: Accumulator, lens, location: str) -> dict:
    """The analysis folder: latents.parquet, examples.parquet, meta.json (published in one rename; under a
    root URL, uploaded with meta.json last)."""
    from saekit.features.tables import examples_table, latents_table, vocab_strings, write_tables

    tokens = TokenStore(spec.tokens["path"], ctx.workspace)
    started = time.monotonic()
    vocab = vocab_strings(tokens.tokenizer())
    latents = latents_table(spec, sae, acc, lens, vocab)
    examples = examples_table(spec, acc)
    alive = int((acc.count > 0).sum())
    summary = {"n_latents": sae.d_sae, "n_tokens": acc.rows_seen, "alive": alive,
               "dead": sae.d_sae - alive, "examples": int(examples.num_rows)}
    meta = {"format_version": FORMAT_VERSION, "job_id": ctx.job_id, "sae": {**spec.sae, "digest": sae_digest(sae)},
            "source": spec.source,
            "hook_point": spec.hook_point, "tokens": spec.tokens, "tokenizer": tokens.attrs["tokenizer"]["path"],
            "settings": {k: getattr(spec, k) for k in ("top_k", "quantiles", "per_quantile", "context", "reservoir", "neighbours",
                                              "seed", "n_tokens")},
            "hist_edges": [e if math.isfinite(e) else None for e in hist_edges()], "logit_lens": lens is not None,
            "summary": summary}
    ctx.workspace.dir("analyses")
    if is_url(location):
        analyses_folder(ctx.workspace, ctx.job_id).mkdir(exist_ok=True)  # for the labels journal
        with tempfile.TemporaryDirectory(prefix="tables-", dir=ctx.dir) as tmp:
            meta["checksums"] = write_tables(Path(tmp), latents, examples, vocab)
            (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2))
            upload(tmp, location, last="meta.json")
    else:
        with publishing(location) as tmp:
            tmp.mkdir()
            meta["checksums"] = write_tables(tmp, latents, examples, vocab)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    ctx.event(f"{alive:,} of {sae.d_sae:,} latents fired on {acc.rows_seen:,} tokens; tables written in "
              f"{time.monotonic() - started:.1f} s")
    return summary


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
