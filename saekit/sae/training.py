"""``sk.train``: train one SAE, or a sweep of them on one read of the data, as a resumable job.

Each step takes a global batch from the source (a prefetch thread reads ahead), normalizes it, and
steps every SAE: loss, backward, the decoder gradient's parallel part removed, Adam (float32 state),
decoder rows renormalized, dead-latent counters updated. Metrics go to the job's event log every
``log_every`` steps (``TrainConfig.log_interval``). Every ``checkpoint_every`` steps (and on cancel) a
checkpoint holds the weights, optimizers, counters, the data position and the RNG, so a new attempt continues exactly where it
stopped. At the end the input scale is folded into the weights, the SAEs are evaluated on held-out
data and saved to ``saes/<job_id>/final/``.

Under ``launcher="torchrun", nproc=N`` each rank steps on its slice of the global batch and gradients
(and the dead-latent counts) are averaged (summed) over the ranks; rank 0 logs and writes. On a model
source a rank runs the model only over the sequences of its slice.
"""

from __future__ import annotations

import inspect
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saekit._checks import is_int
from saekit._fs import download, is_url, publishing, remote_names, remove, upload
from saekit.activations.source import ModelSource, describe_source, open_source, split_pair
from saekit.data.tokens import TokenStore
from saekit.errors import ConfigError, DataError, JobCancelled, NumericsError
from saekit.jobs import job_kind, submit
from saekit.jobs.spec import JobSpec, spec_field
from saekit.models.hookpoints import comes_before
from saekit.models.loading import load_model_from_ref, local_rank, resolve_device
from saekit.sae.arch_registry import arch_class
from saekit.sae.config import SAEConfig, TrainConfig
from saekit.sae.evaluation import downstream_metrics, reconstruction_metrics
from saekit.sae.model import SAE, TrainingState, geometric_median
from saekit.workspace import Workspace, as_workspace

if TYPE_CHECKING:
    from saekit.registry import JobRecord

log = logging.getLogger("saekit.sae")

INIT_SAMPLE_ROWS = 8192  # rows the input scale and the decoder bias are estimated from (at most one batch)
CHECKPOINT_FILE = "trainer.pt"


# -- the public entry ----------------------------------------------------------------------------------
def train(source, hook_point: str, sae_config: SAEConfig | list[SAEConfig] | None = None,
          train_config: TrainConfig | None = None, *, target_hook: str | None = None, template: str | None = None,
          eval_model=None,
          root: str | None = None, background: bool = True, launcher: str | None = None, nproc: int = 1,
          nnodes: int = 1, rdzv_endpoint: str | None = None, force: bool = False, name: str | None = None,
          workspace: Workspace | str | None = None, progress: bool = True):
    """Train SAE(s) on ``hook_point`` activations; returns the job at once (``job.result()`` -> ``SAE``,
    or a list for a sweep).

    ``source`` is an ``ActivationStore`` (or its id), or ``(lm, token_store)`` to train on activations
    computed on the fly. ``sae_config`` may be a list: every SAE trains on the same batches, each with
    its own metrics (``sae{i}/fvu`` ...) and result. ``target_hook="blocks.6.mlp_out"`` trains transcoders:
    each SAE encodes ``hook_point`` (e.g. ``blocks.6.mlp_in``) and predicts the target hook's activation of the
    same token (``transcoder=True`` is implied; add ``skip_connection=True`` for skip-transcoders); FVU is
    measured against the target, and CE recovered splices the prediction in at the target hook. A store
    source must hold both hook points (``sk.extract(lm, tokens, [hook_point, target_hook])``).
    ``template="name"`` takes the configs saved with
    ``sk.templates.save`` (arguments given here win). ``eval_model=lm`` adds the downstream evaluation
    (CE loss recovered, KL) for a store source. ``launcher="torchrun", nproc=N`` trains data-parallel
    (``nnodes=M, rdzv_endpoint="host:port"``: over M machines, each other one joining with ``saekit join JOB_ID``).
    ``root`` keeps the checkpoints and the final SAE(s) under an fsspec URL such as ``s3://bucket/saes``
    (``<root>/<job id>/step_N/``, ``.../final/``) instead of the workspace's ``saes/`` folder.
    """
    ws = as_workspace(workspace)
    if template is not None:
        from saekit.sae.templates import templates

        saved = templates.get(template, workspace=ws)
        sae_config = sae_config if sae_config is not None else saved.sae_config
        train_config = train_config if train_config is not None else saved.train_config
    if sae_config is None:
        raise ConfigError("train needs sae_config (e.g. sk.SAEConfig(arch='topk', k=32)) or template=")
    configs = list(sae_config) if isinstance(sae_config, (list, tuple)) else [sae_config]
    if not configs or not all(isinstance(c, SAEConfig) for c in configs):
        raise ConfigError(f"sae_config must be an SAEConfig or a list of them; got {sae_config!r}")
    train_config = train_config or TrainConfig()
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"train_config must be a TrainConfig; got {type(train_config).__name__}")
    resolve_device(train_config.device)
    if not isinstance(hook_point, str) or not hook_point:
        raise ConfigError(f"hook_point={hook_point!r} must name the activation the SAE reads, e.g. "
                          "'blocks.6.resid_post' (a store's are in store.hook_points)")
    if not is_int(nproc) or nproc < 1:
        raise ConfigError(f"nproc={nproc!r} must be a positive number of processes")
    if train_config.batch_size % (nproc * nnodes if is_int(nnodes) else nproc):
        raise ConfigError(f"batch_size={train_config.batch_size} must divide evenly over nproc={nproc}"
                          + (f" x nnodes={nnodes} ranks" if nnodes != 1 else ""))

    if target_hook is not None:
        if not isinstance(target_hook, str) or target_hook == hook_point:
            raise ConfigError(f"target_hook={target_hook!r} must name another hook point than {hook_point!r}, the "
                              "activation the transcoder predicts (e.g. 'blocks.6.mlp_out' from 'blocks.6.mlp_in')")
        if comes_before(hook_point, target_hook) is False:
            raise ConfigError(f"target_hook={target_hook!r} is computed before {hook_point!r} in the forward pass: a "
                              "transcoder predicts a later activation from an earlier one",
                              suggestion="swap them, e.g. sk.train(acts, 'blocks.6.mlp_in', ..., target_hook='blocks.6.mlp_out')")
        configs = [c if c.transcoder else c.replace(transcoder=True) for c in configs]
        unable = sorted({c.arch for c in configs
                         if "target" not in inspect.signature(arch_class(c.arch).training_forward).parameters})
        if unable:
            raise ConfigError(f"architecture(s) {unable} cannot train as transcoders: their training_forward takes no "
                              "target", suggestion="see docs/adding-an-architecture.md (Transcoders)")
    else:
        plain = [i for i, c in enumerate(configs) if c.transcoder]
        if plain:
            raise ConfigError(f"SAE config(s) {plain} are transcoders (transcoder=True) but no target_hook was given",
                              suggestion="name the activation they predict: sk.train(..., target_hook='blocks.6.mlp_out')")
    spec_source, d_in, train_rows = _describe_source(source, hook_point, train_config, ws, target_hook)
    resolved = [c.resolved(d_in, d_in if target_hook else None) for c in configs]  # ConfigError on a mismatch
    if train_config.batch_size > train_rows:
        raise ConfigError(f"batch_size={train_config.batch_size} is larger than the {train_rows:,} training rows of "
                          "the source", suggestion="lower batch_size, lower eval_tokens or extract more tokens")
    eval_ref = None
    if eval_model is not None:
        eval_model.parse_hook_point(hook_point)
        if target_hook is not None:
            eval_model.parse_hook_point(target_hook)
        eval_ref = eval_model.ref
    spec = {"source": spec_source, "hook_point": hook_point, "saes": [c.to_dict() for c in resolved],
            "train": train_config.to_dict(), "eval_model": eval_ref}
    if target_hook is not None:  # only then: an autoencoder's job key is what it always was
        spec["target_hook"] = target_hook
    if root is not None:  # only then, so that a workspace run's job key is what it always was
        if not isinstance(root, str) or not is_url(root):
            raise ConfigError(f"root={root!r} must be an fsspec URL such as 's3://bucket/saes' (SAEs on a local "
                              "disk live in the workspace)")
        spec["root"] = root.rstrip("/")
    return submit("train", spec, workspace=ws, background=background, launcher=launcher, nproc=nproc, nnodes=nnodes,
                  rdzv_endpoint=rdzv_endpoint, force=force, name=name, progress=progress)


def _describe_source(source, hook_point: str, tc: TrainConfig, ws: Workspace,
                     target_hook: str | None = None) -> tuple[dict, int, int]:
    """The source as a spec reference, its width, and how many rows it can train on."""
    described = describe_source(source, ws, hook_point, target_hook=target_hook)
    if described.store is not None:
        for name in (hook_point, target_hook) if target_hook else (hook_point,):
            nonfinite = described.store.stats(name).get("nonfinite", 0)
            if nonfinite:
                raise DataError(f"activation store {described.store.id} holds {nonfinite:,} rows with NaN or infinity "
                                f"at {name}", suggestion="extract again in float32 (dtype='float32'), or drop those rows")
    return described.ref, described.d_in, described.training_rows(tc.eval_tokens)


# -- the job -------------------------------------------------------------------------------------------
class _Run:
    """One SAE being trained: model, optimizer, dead-latent counter."""

    def __init__(self, index: int, config: SAEConfig, tc: TrainConfig, device: torch.device):
        torch.manual_seed(tc.seed + index)
        self.index, self.config = index, config
        self.sae = SAE.from_config(config, device=device)
        self.lr = tc.lr or self.sae.default_lr()
        options: dict[str, Any] = {"lr": self.lr, "betas": tuple(tc.adam_betas), "eps": tc.adam_eps}
        try:  # one fused kernel (CPU and CUDA in torch >= 2.4): 2.5 ms vs 17 ms per step at 2 x 8192 x 512
            self.optimizer = torch.optim.Adam(self.sae.parameters(), fused=True, **options)
        except (RuntimeError, ValueError, TypeError):
            self.optimizer = torch.optim.Adam(self.sae.parameters(), **options)
        self.since_fired = torch.zeros(self.sae.d_sae, dtype=torch.long, device=device)
        self.none_dead_before = 0  # the step before which no latent can be dead (0: ask the device)

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "since_fired": self.since_fired.cpu(), "lr": self.lr}

    def restore(self, state: dict, tc: TrainConfig) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.since_fired.copy_(state["since_fired"])
        self.none_dead_before = 0
        # the rate the run started with: a checkpoint without it was written when lr=None meant 2e-4 at 2**14 for
        # every architecture, so a run begun then keeps that rate when a later saekit resumes it
        self.lr = float(state.get("lr", tc.lr or 2e-4 / math.sqrt(self.sae.d_sae / 2**14)))


def _expected_norm_scale(rows: torch.Tensor) -> float:
    """The factor that makes the rows' mean squared norm their width."""
    rows = rows.float()
    return float(math.sqrt(rows.shape[1] / rows.pow(2).sum(1).mean().clamp_min(1e-12)))


def _lr_factor(step: int, tc: TrainConfig) -> float:
    total = tc.total_steps
    factor = 1.0
    warmup = tc.steps(tc.lr_warmup)
    if warmup and step < warmup:
        factor = (step + 1) / warmup
    decay_steps = round(tc.lr_decay_fraction * total)
    start = total - decay_steps
    if tc.lr_decay != "none" and decay_steps and step >= start:
        progress = (step - start + 1) / decay_steps
        factor *= (1 - progress) if tc.lr_decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return factor


@dataclass(frozen=True)
class TrainSpec(JobSpec):
    """A train job's spec (``sk.train`` builds it)."""
    source: dict = spec_field(doc="{'store': store reference} or {'model': model reference, 'tokens': token store}")
    hook_point: str = spec_field(doc="the hook point the SAEs read")
    saes: list[dict] = spec_field(doc="one ``SAEConfig.to_dict()`` per SAE of the sweep (d_in resolved)")
    train: dict = spec_field(doc="``TrainConfig.to_dict()``: the settings the sweep shares")
    eval_model: dict | None = spec_field(None, doc="the model's reference for CE/KL evaluation (None: none)")
    root: str | None = spec_field(None, omit_none=True, doc="an fsspec URL for checkpoints and finals "
                                                            "(None: the workspace)")
    target_hook: str | None = spec_field(None, omit_none=True, doc="the hook point transcoders predict (None: "
                                                                   "autoencoders of ``hook_point``)")


def _open_source(spec: TrainSpec, tc: TrainConfig, ws: Workspace, device: torch.device):
    return open_source(spec.source, ws, spec.hook_point, target_hook=spec.target_hook, eval_tokens=tc.eval_tokens,
                       device=tc.device, buffer_bytes=tc.shuffle_buffer_bytes, preload=tc.preload)


class _Distributed:
    """Averaging over torchrun ranks (a no-op on one process)."""

    def __init__(self, ctx, device: torch.device):
        self.rank, self.world = ctx.rank, ctx.world_size
        self.active = self.world > 1
        if self.active:
            import torch.distributed as dist

            self.dist = dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        self.reduce_(mean=tensors)

    def reduce_(self, *, mean: Sequence[torch.Tensor] = (), total: Sequence[torch.Tensor] = (),
                flag: bool = False) -> bool:
        """One all-reduce for a whole step: ``mean`` tensors averaged and ``total`` ones summed in place over
        the ranks, and ``flag`` (e.g. "cancelled") true on every rank when it is on any."""
        if not self.active:
            return flag
        parts = [t.reshape(-1).float() for t in (*mean, *total)]
        device = parts[0].device if parts else torch.device("cpu")
        flat = torch.cat([*parts, torch.tensor([1.0 if flag else 0.0], device=device)])
        self.dist.all_reduce(flat)
        offset = 0
        for i, t in enumerate((*mean, *total)):
            n = t.numel()
            piece = flat[offset:offset + n].view(t.shape)
            t.copy_(piece / self.world if i < len(mean) else piece.round())
            offset += n
        return bool(flat[-1] > 0)

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x`` (of one shape) joined in rank order: the global batch from the slices."""
        if not self.active:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self.dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        self.dist.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.active and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _load_saes(ws: Workspace, result: dict):
    saes = [SAE.load(item["path"]) for item in result["saes"]]
    return saes[0] if len(saes) == 1 else saes


def _outputs(ws: Workspace, row: JobRecord) -> list[str]:
    root = row.spec_dict.get("root")
    return [f"{root}/{row.id}" if root else str(ws.path / "saes" / row.id)]


def _disposable(ws: Workspace, row) -> list[Path]:
    """Checkpoints left beside a completed run's final/ (their removal after the end was cut short)."""
    if row.spec_dict.get("root"):
        return []  # on object storage: removed after the end, or with the job
    folder = ws.path / "saes" / row.id
    return sorted(p for p in folder.glob("step_*") if p.is_dir()) if (folder / "final").is_dir() else []


def _runs(spec: dict) -> list[dict]:
    """One spec per SAE of the sweep: the shared settings and that SAE's config under ``sae``."""
    shared = {k: v for k, v in spec.items() if k != "saes"}
    return [{**shared, "sae": config} for config in spec.get("saes") or [{}]]


def _health(metrics: dict, result) -> dict:
    from saekit.sae.health import assess

    saes = (result or {}).get("saes", []) if isinstance(result, dict) else []
    return assess(metrics, [s.get("eval", {}) for s in saes] or None)


@job_kind("train", load_result=_load_saes, outputs=_outputs, output_dirs={"saes": None}, disposable=_disposable,
          runs=_runs, health=_health, tokens_per_step=lambda spec: float(spec.get("train", {}).get("batch_size", 0)),
          bookkeeping=TrainConfig.BOOKKEEPING, spec=TrainSpec)
def run_train(ctx, spec: TrainSpec) -> dict | None:
    tc = TrainConfig.from_dict(spec.train)
    configs = [SAEConfig.from_dict(c) for c in spec.saes]
    device = resolve_device(tc.device)
    if device.type == "cuda" and ctx.world_size > 1:  # pragma: gpu
        device = torch.device("cuda", local_rank(ctx.rank) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    group = _Distributed(ctx, device)
    try:
        with _matmul_precision(device, tc.tf32):
            return _Trainer(ctx, spec, tc, configs, device, group).run()
    finally:
        group.close()


@contextmanager
def _matmul_precision(device: torch.device, tf32: bool):
    """TF32 for float32 matmuls on a CUDA device while the job runs (restored after: a foreground job runs in
    the caller's process)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class _Trainer:
    def __init__(self, ctx, spec: TrainSpec, tc: TrainConfig, configs: list[SAEConfig], device, group: _Distributed):
        self.ctx, self.spec, self.tc, self.device, self.group = ctx, spec, tc, device, group
        self.source, self.lm = _open_source(spec, tc, ctx.workspace, device)
        if self.source.d_in != configs[0].d_in:
            raise ConfigError(f"the source's width {self.source.d_in} does not match d_in={configs[0].d_in}")
        self.runs = [_Run(i, c, tc, device) for i, c in enumerate(configs)]
        root = spec.root
        self.remote = f"{root}/{ctx.job_id}" if root else None  # checkpoints and finals on object storage
        self.folder = None if self.remote else ctx.workspace.dir("saes") / ctx.job_id
        if self.remote and self.group.rank == 0:  # uploads a killed attempt left half made (this worker holds the lease)
            for stale in ctx.dir.glob("checkpoint-*"):
                remove(stale)
        self.scale = 1.0
        self.output_scale = 1.0  # a transcoder's targets' (autoencoders: the input's)
        self.step = 0

    # -- metric names ---------------------------------------------------------------------------------
    def _name(self, run: _Run, metric: str) -> str:
        return metric if len(self.runs) == 1 else f"sae{run.index}/{metric}"

    # -- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        """Write step_N/ (aside, then renamed in), record it as the resume point, keep the last few."""
        broken = [run.index for run in self.runs if self.group.rank == 0
                  and not all(bool(torch.isfinite(p).all()) for p in run.sae.parameters())]
        if self.group.any(bool(broken)):  # every rank raises at the same step
            raise NumericsError(f"SAE(s) {broken} have non-finite weights at step {self.step}; no checkpoint was "
                                "written", suggestion="lower lr and train again (force=True)")
        if self.group.rank == 0:
            name = f"step_{self.step:08d}"
            if self.remote:  # written here, uploaded with trainer.pt last, then committed
                with tempfile.TemporaryDirectory(prefix="checkpoint-", dir=self.ctx.dir) as tmp:
                    self._write_checkpoint(Path(tmp))
                    upload(tmp, f"{self.remote}/{name}", last=CHECKPOINT_FILE)
            else:
                assert self.folder is not None  # not on object storage
                with publishing(self.folder / name, replace=True) as tmp:
                    self._write_checkpoint(tmp)
            self.ctx.commit({"step": self.step, "checkpoint": name})
            for old in self._checkpoints()[:-self.tc.keep_checkpoints]:
                remove(old)
        self.group.barrier()

    def _write_checkpoint(self, folder: Path) -> None:
        for run in self.runs:
            run.sae.save(folder / f"sae{run.index}")
        torch.save({"step": self.step, "scale": self.scale, "output_scale": self.output_scale,
                    "runs": [r.state() for r in self.runs],
                    "source": self.source.state(), "rng": torch.get_rng_state()}, folder / CHECKPOINT_FILE)

    def _checkpoints(self) -> list[str]:
        """This run's step_N checkpoints, oldest first (paths or URLs)."""
        if self.remote:
            return [f"{self.remote}/{n}" for n in remote_names(self.remote) if n.startswith("step_")]
        assert self.folder is not None  # not on object storage
        return [str(p) for p in sorted(self.folder.glob("step_*")) if p.is_dir()]

    @contextmanager
    def _local_checkpoint(self, name: str):
        """The checkpoint ``name`` as a local folder (a downloaded copy when it is on object storage)."""
        if not self.remote:
            assert self.folder is not None  # not on object storage
            yield self.folder / name
            return
        with tempfile.TemporaryDirectory(prefix="saekit-checkpoint-") as tmp:  # this machine's, per rank
            try:
                download(f"{self.remote}/{name}", tmp)
            except FileNotFoundError:
                pass  # reported as gone below
            yield Path(tmp)

    def _restore(self, point: dict) -> dict:
        from safetensors.torch import load_file

        with self._local_checkpoint(point["checkpoint"]) as path:
            if not (path / CHECKPOINT_FILE).exists():
                where = f"{self.remote}/{point['checkpoint']}" if self.remote else str(path)
                raise DataError(f"the checkpoint {where!r} this job would resume from is gone",
                                suggestion="train again with force=True")
            state = torch.load(path / CHECKPOINT_FILE, weights_only=True, map_location="cpu")
            for run, run_state in zip(self.runs, state["runs"]):
                run.sae.load_state_dict(load_file(path / f"sae{run.index}" / "sae.safetensors", device=str(self.device)))
                run.restore(run_state, self.tc)
        torch.set_rng_state(state["rng"])
        self.step, self.scale = int(state["step"]), float(state["scale"])
        self.output_scale = float(state.get("output_scale", self.scale))
        self.ctx.event(f"resuming from the checkpoint at step {self.step:,}")
        return state["source"]

    # -- the loop -------------------------------------------------------------------------------------
    def _initialise(self, sample: torch.Tensor, target: torch.Tensor | None) -> None:
        """Input scale (mean squared norm -> d_in) and each decoder bias, from the first rows. A transcoder's targets
        get their own scale and the decoder bias is theirs; as it encodes its input uncentred, its encoder bias
        starts by centring the pre-activations (``-W_enc @ mean``, as sparsify does)."""
        sample = sample[:INIT_SAMPLE_ROWS].float()
        if self.tc.normalize_activations == "expected_norm":
            self.scale = _expected_norm_scale(sample)
            self.output_scale = self.scale if target is None else _expected_norm_scale(target[:INIT_SAMPLE_ROWS])
        inputs = sample * self.scale
        outputs = inputs if target is None else target[:INIT_SAMPLE_ROWS].float() * self.output_scale
        for run in self.runs:
            init = run.config.b_dec_init
            with torch.no_grad():
                if init != "zeros":
                    center = geometric_median(outputs.cpu()) if init == "geometric_median" else outputs.mean(0)
                    run.sae.b_dec.copy_(center.to(self.device))
                if run.sae.is_transcoder:
                    run.sae.b_enc.copy_(-(run.sae.W_enc @ inputs.mean(0).to(self.device)))

    def run(self) -> dict | None:
        tc, ctx, group = self.tc, self.ctx, self.group
        total = tc.total_steps
        source_state = self._restore(ctx.resume_point) if ctx.resume_point else None
        if group.rank == 0:
            passes = tc.total_tokens / max(1, getattr(self.source, "train_rows", 0) or tc.total_tokens)
            what = (f"transcoder(s) {self.spec.hook_point} -> {self.spec.target_hook}" if self.spec.target_hook
                    else "SAE(s)")
            ctx.event(f"training {len(self.runs)} {what} on {self.source.describe()}: {total:,} steps of "
                      f"{tc.batch_size:,} tokens" + (f" ({passes:.1f} passes over the data)" if passes > 1.01 else ""))
        batches = self.source.batches(tc.batch_size, tc.seed, self.step, self.device, source_state,
                                      rank=group.rank, world=group.world)  # this rank's slice of each global batch
        started, interval_start, interval_tokens, waited = time.monotonic(), time.monotonic(), 0, 0.0
        first_step = self.step
        iterator = iter(batches)
        try:
            while self.step < total:
                asked = time.monotonic()
                batch = next(iterator, None)  # blocks only when the reader has not kept ahead
                if batch is None:
                    break
                waited += time.monotonic() - asked
                x, y = self._split(batch.to(device=self.device, dtype=torch.float32))
                if self.step == 0 and not ctx.resume_point:  # from the whole first batch, the same on every rank
                    self._initialise(group.gathered(x), None if y is None else group.gathered(y))
                x = x * self.scale
                if y is not None:
                    y = y * self.output_scale
                log_now = (self.step + 1) % tc.log_interval == 0 or self.step + 1 == total
                outputs = [self._forward_backward(run, x, y, log_now) for run in self.runs]
                fired = [out.fired.clone() if group.active else out.fired for out in outputs]  # summed in place
                grads = [p.grad for run in self.runs for p in run.sae.parameters() if p.grad is not None]
                # gradients (mean), fired counts (sum) and the cancel flag in one all-reduce: every rank stops together
                cancelled = group.reduce_(mean=grads, total=fired, flag=group.rank == 0 and ctx.cancelled)
                for run, count in zip(self.runs, fired):
                    self._apply(run, count)
                self.step += 1
                interval_tokens += tc.batch_size
                if log_now:
                    now = time.monotonic()
                    elapsed = max(now - interval_start, 1e-9)
                    self._log(outputs, x if y is None else y, interval_tokens / elapsed, waited / elapsed, inputs=x)
                    interval_start, interval_tokens, waited = now, 0, 0.0
                if cancelled:
                    raise JobCancelled(f"job {ctx.job_id} was cancelled")
                if group.rank == 0:
                    ctx.progress(self.step, total, unit="steps", phase="training", tokens=self.step * tc.batch_size,
                                 check_cancel=False)
                if self.step % tc.checkpoint_every == 0 and self.step < total:
                    self._checkpoint()
        except JobCancelled:
            self._checkpoint()  # keep what was done
            raise
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()
        log.debug("trained %d steps in %.1f s", self.step, time.monotonic() - started)
        if isinstance(self.source, ModelSource) and group.world > 1 and group.rank == 0:
            ctx.event(f"model rows computed on rank 0 this attempt: {self.source.rows_computed:,} "
                      f"(its slices: {(self.step - first_step) * (tc.batch_size // group.world):,})")
        return self._finish()

    def _forward_backward(self, run: _Run, x: torch.Tensor, y: torch.Tensor | None, log_now: bool):
        tc = self.tc
        warmup = tc.steps(tc.l1_warmup)
        state = TrainingState(dead=self._dead(run), sparsity_scale=min(1.0, (self.step + 1) / warmup) if warmup else 1.0,
                              metrics=log_now)
        # an autoencoder's call is what it was before transcoders (a plug-in's training_forward may not take target)
        out = run.sae.training_forward(x, state) if y is None else run.sae.training_forward(x, state, target=y)
        out.loss.backward()
        return out

    def _dead(self, run: _Run) -> torch.Tensor | None:
        """The latents dead at this step (not fired for ``dead_after`` tokens), or None when none is. A latent's
        silence grows by one batch a step at most, so one read of the longest silence tells the host the step
        before which none can be dead; until then no step waits for the device to ask (``.any()`` on a GPU). An
        architecture that does not use them (``uses_dead_latents`` False) gets the mask unread, as before."""
        tc = self.tc
        if not run.sae.uses_dead_latents:  # the mask as it is, never read on the host (ReLU, JumpReLU)
            return run.since_fired >= tc.dead_after if self.step * tc.batch_size >= tc.dead_after else None
        if self.step < run.none_dead_before:
            return None
        longest = int(run.since_fired.max()) if self.step else 0
        if longest < tc.dead_after:
            run.none_dead_before = self.step + -(-(tc.dead_after - longest) // tc.batch_size)
            return None
        return run.since_fired >= tc.dead_after

    def _apply(self, run: _Run, fired: torch.Tensor) -> None:
        """The optimizer step of one SAE once its gradients (and fired counts) are those of the global batch."""
        factor = _lr_factor(self.step, self.tc)
        for group in run.optimizer.param_groups:
            group["lr"] = run.lr * factor
        run.sae.remove_parallel_decoder_grad()
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.sae.normalize_decoder()
        run.since_fired.add_(self.tc.batch_size).masked_fill_(fired > 0, 0)

    def _log(self, outputs, x: torch.Tensor, tokens_per_s: float, data_wait: float,
             inputs: torch.Tensor | None = None) -> None:
        """The interval's metrics (``x``: what the SAEs predict, the input or a transcoder's target); ``data_wait``
        is the fraction of its wall time spent waiting for batches."""
        values = {}
        for run, out in zip(self.runs, outputs):
            err = (out.x_hat - x).pow(2)
            more = sorted(set(out.extra) - {"l1", "auxk"})  # an architecture's own metrics (Matryoshka: fvu_at_<w>)
            numbers = torch.stack([out.loss.detach(), err.sum(-1).mean(), err.sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12),
                                   out.l0.float(), out.extra.get("l1", torch.tensor(0.0, device=x.device)).float(),
                                   out.extra.get("auxk", torch.tensor(0.0, device=x.device)).float(),
                                   *(out.extra[name].float() for name in more)]).float()
            self.group.mean_([numbers])
            loss, mse, fvu, l0, l1, auxk, *own = numbers.tolist()
            if not math.isfinite(loss):
                last = self.ctx.resume_point["step"] if self.ctx.resume_point else None
                kept = (f"the last good checkpoint (step {last:,}) is kept" if last is not None
                        else "no checkpoint was written yet")
                rows = x if inputs is None or inputs is x else torch.cat([x, inputs], 1)  # a transcoder's both halves
                bad_rows = int((~torch.isfinite(rows).all(dim=1)).sum())
                if bad_rows:  # the data, not the optimisation
                    raise DataError(
                        f"the activations hold NaN or infinity ({bad_rows:,} of the {len(x):,} rows of the batch at "
                        f"step {self.step:,}), so the loss of SAE {run.index} became {loss}; {kept}",
                        suggestion="the source is the cause, not the learning rate: check the store "
                                   "(acts.stats(hook_point)['nonfinite']) or extract again in float32")
                raise NumericsError(
                    f"the loss of SAE {run.index} became {loss} at step {self.step:,} on finite activations: the "
                    f"training diverged; {kept}",
                    suggestion=f"lower lr (it was {run.lr:g}), then train again (force=True)")
            dead = float((run.since_fired >= self.tc.dead_after).float().mean())
            named = {"loss": loss, "mse": mse, "fvu": fvu, "l0": l0, "l1": l1, "dead_fraction": dead,
                     "lr": run.optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_per_s,
                     "data_wait_fraction": data_wait}
            if "auxk" in out.extra:
                named["auxk"] = auxk
            named.update(zip(more, own))
            values.update({self._name(run, k): v for k, v in named.items()})
        if self.group.rank == 0:
            self.ctx.metrics(self.step, **values)

    # -- the end --------------------------------------------------------------------------------------
    def _finish(self) -> dict | None:
        if self.group.rank != 0:
            return None
        ctx, tc = self.ctx, self.tc
        ctx.progress(self.step, tc.total_steps, unit="steps", phase="evaluating")
        lm, tokens, include_bos = self._downstream_model()
        results: list[dict] = []
        for run in self.runs:
            sae = run.sae.eval()
            sae.fold_input_scale(self.scale, self.output_scale)
            evaluation = reconstruction_metrics(sae, self._eval_batches())
            evaluation["dead_fraction"] = float((run.since_fired >= tc.dead_after).float().mean())
            if lm is not None and tc.ce_eval_tokens:
                evaluation.update(downstream_metrics(sae, lm, tokens, self.spec.hook_point, self._ce_sequences(tokens),
                                                     include_bos=include_bos, target_hook=self.spec.target_hook))
            sub = f"sae{run.index}" if len(self.runs) > 1 else ""
            if self.remote:
                path: str | Path = f"{self.remote}/final" + (f"/{sub}" if sub else "")
            else:
                assert self.folder is not None  # not on object storage
                path = self.folder / "final" / sub
            target = {"target_hook": self.spec.target_hook} if self.spec.target_hook else {}
            sae.save(path, extra={"hook_point": self.spec.hook_point, **target, "job_id": ctx.job_id, "lr": run.lr,
                                  "input_scale_folded": self.scale,
                                  "trained_tokens": self.step * tc.batch_size, "source": self.spec.source,
                                  "eval": evaluation})
            results.append({"path": str(path), "eval": evaluation})
            numbers = {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
            ctx.event(f"SAE {run.index}: held-out " + ", ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
            for warning in evaluation.get("warnings", []):
                ctx.event(f"SAE {run.index}: {warning}", level="warning")
        ctx.metrics(self.step, **{self._name(r, k if k.startswith("eval_") else f"eval_{k}"): v  # eval_tokens stays
                                  for r, item in zip(self.runs, results) for k, v in item["eval"].items()
                                  if isinstance(v, (int, float))})

        def remove_checkpoints() -> None:
            for old in self._checkpoints():
                remove(old)

        ctx.after_end(remove_checkpoints)
        ctx.progress(self.step, tc.total_steps, unit="steps", phase="done")
        return {"saes": results, "steps": self.step, "tokens": self.step * tc.batch_size,
                "hook_point": self.spec.hook_point, **({"target_hook": self.spec.target_hook}
                                                       if self.spec.target_hook else {})}

    def _split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input, target) of a batch: a transcoder's rows hold its input, then its target; an autoencoder's target
        is its input (None)."""
        return split_pair(batch, self.source.d_in, True) if self.spec.target_hook else (batch, None)

    def _eval_batches(self):
        """Held-out raw rows: tensors, or (input, target) pairs for transcoders."""
        for batch in self.source.eval_batches(self.tc.batch_size):
            yield split_pair(batch, self.source.d_in, self.spec.target_hook is not None)

    def _downstream_model(self):
        """(model, token store, include_bos) for the CE evaluation, or Nones when there is no model."""
        if isinstance(self.source, ModelSource):
            return self.source.lm, self.source.tokens, self.source.bos is None
        ref = self.spec.eval_model
        if ref is None:
            return None, None, False
        attrs = self.source.store.attrs
        tokens_ref = attrs.get("tokens")
        if not tokens_ref:
            self.ctx.event("the store records no token store; downstream evaluation skipped", level="warning")
            return None, None, False
        lm = load_model_from_ref(ref, device=self.tc.device)
        return lm, TokenStore(tokens_ref["path"], self.ctx.workspace), bool(attrs.get("include_bos", False))

    def _ce_sequences(self, tokens: TokenStore) -> range:
        n_seq = max(1, math.ceil(self.tc.ce_eval_tokens / tokens.context_length))
        if isinstance(self.source, ModelSource):
            start, stop = self.source.eval_sequence_range()
            return range(start, min(stop, start + n_seq))
        return range(max(0, tokens.n_sequences - n_seq), tokens.n_sequences)

