"""``SAEConfig`` (what an SAE is) and ``TrainConfig`` (how it is trained): frozen, validated, JSON-safe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from saekit.errors import ConfigError

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
LR_DECAYS = ("none", "linear", "cosine")
NORMALIZATIONS = ("expected_norm", "none")


class _Config:
    """``to_dict()`` / ``from_dict()`` shared by the configs; unknown keys are refused by name."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; its fields are {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a number >= 0")


@dataclass(frozen=True)
class SAEConfig(_Config):
    """What an SAE is.

    ``arch``: ``relu`` (L1 penalty weighted by decoder norms), ``topk``, ``batchtopk`` (top ``k * batch``
    over the whole batch while training, a learned threshold at inference) or ``jumprelu`` (per-latent
    thresholds learned with straight-through gradients and an L0 penalty). ``d_in`` may be left out:
    training takes it from the data. Width is ``d_sae``, or ``expansion_factor * d_in`` (16 when
    neither is given). Parameters are float32 whatever the activations' dtype;
    ``encoder_dtype="bfloat16"`` runs the TopK encoder's matmul in bfloat16 (about 2x faster on CPUs
    with AVX512-BF16; check held-out FVU before relying on it).
    """

    arch: str = "topk"
    d_in: int | None = None
    d_sae: int | None = None
    expansion_factor: int | None = None
    k: int | None = None
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    aux_k: int | None = None
    aux_k_coefficient: float = 1 / 32
    normalize_decoder: bool = True
    b_dec_init: str = "geometric_median"
    encoder_dtype: str = "float32"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"arch={self.arch!r} is not an SAE architecture; use one of {list(ARCHS)}")
        _positive_int("d_in", self.d_in, allow_none=True)
        _positive_int("d_sae", self.d_sae, allow_none=True)
        _positive_int("expansion_factor", self.expansion_factor, allow_none=True)
        if self.d_sae is not None and self.expansion_factor is not None and self.d_in is not None \
                and self.d_sae != self.d_in * self.expansion_factor:
            raise ConfigError(f"d_sae={self.d_sae} and expansion_factor={self.expansion_factor} disagree for "
                              f"d_in={self.d_in}; give one of them")
        if self.arch in ("topk", "batchtopk"):
            if self.k is None:
                raise ConfigError(f"arch={self.arch!r} needs k (latents active per token), e.g. k=32")
            _positive_int("k", self.k)
        elif self.k is not None:
            raise ConfigError(f"k={self.k} only applies to topk and batchtopk, not arch={self.arch!r}")
        if self.d_sae is not None and self.k is not None and self.k >= self.d_sae:
            raise ConfigError(f"k={self.k} must be smaller than d_sae={self.d_sae}")
        _positive_int("aux_k", self.aux_k, allow_none=True)
        for name in ("l1_coefficient", "l0_coefficient", "aux_k_coefficient", "jumprelu_init_threshold"):
            _non_negative(name, getattr(self, name))
        if not self.jumprelu_bandwidth > 0:
            raise ConfigError(f"jumprelu_bandwidth={self.jumprelu_bandwidth!r} must be > 0")
        if self.b_dec_init not in B_DEC_INITS:
            raise ConfigError(f"b_dec_init={self.b_dec_init!r}; use one of {list(B_DEC_INITS)}")
        if self.encoder_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"encoder_dtype={self.encoder_dtype!r}; use 'float32' or 'bfloat16'")

    def resolved(self, d_in: int) -> SAEConfig:
        """This config for inputs of width ``d_in``: ``d_in`` and ``d_sae`` filled in and checked."""
        if self.d_in is not None and self.d_in != d_in:
            raise ConfigError(f"SAEConfig.d_in={self.d_in} does not match the data's width {d_in}",
                              suggestion=f"use d_in={d_in} or leave d_in out")
        d_sae = self.d_sae if self.d_sae is not None else d_in * (self.expansion_factor or 16)
        return self.replace(d_in=d_in, d_sae=d_sae, expansion_factor=None)


@dataclass(frozen=True)
class TrainConfig(_Config):
    """How an SAE is trained.

    ``lr=None`` picks ``2e-4 / sqrt(d_sae / 16384)``. ``lr_warmup`` and ``l1_warmup`` (the sparsity
    penalty's ramp) are steps, or a fraction of the run when below 1; ``lr_decay`` runs over the last
    ``lr_decay_fraction`` of the run. ``log_every`` and ``checkpoint_every`` count steps. A latent is dead
    once it has not fired for ``dead_after_tokens`` tokens. ``normalize_activations="expected_norm"``
    scales inputs so their mean squared norm is ``d_in`` (the scale is folded into the saved weights).
    ``eval_tokens`` rows are held out of training and evaluated at the end; with a model, the
    downstream evaluation (CE loss, KL) runs the whole model three times over ``ce_eval_tokens`` tokens.
    ``preload`` reads a store's training rows onto the device once and gathers batches there (the same
    batches): ``None`` does it on a GPU whose free memory holds them four times over, and on the CPU for
    stores of at most 1 GiB (and an eighth of the available memory).
    """

    total_tokens: int = 10_000_000
    batch_size: int = 4096
    lr: float | None = None
    lr_warmup: float = 0.01
    lr_decay: str = "linear"
    lr_decay_fraction: float = 0.2
    l1_warmup: float = 0.05
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    dead_after_tokens: int = 10_000_000
    normalize_activations: str = "expected_norm"
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    eval_tokens: int = 65_536
    ce_eval_tokens: int = 8192
    seed: int = 0
    device: str = "auto"
    shuffle_buffer_bytes: int = field(default=256 * 2**20)
    preload: bool | None = None

    def __post_init__(self):
        for name in ("total_tokens", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "dead_after_tokens", "shuffle_buffer_bytes"):
            _positive_int(name, getattr(self, name))
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr={self.lr!r} must be a positive number or None (automatic)")
        for name in ("lr_warmup", "l1_warmup", "eval_tokens", "ce_eval_tokens", "adam_eps"):
            _non_negative(name, getattr(self, name))
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"lr_decay={self.lr_decay!r}; use one of {list(LR_DECAYS)}")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ConfigError(f"lr_decay_fraction={self.lr_decay_fraction!r} must be within [0, 1]")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas={self.adam_betas!r} must be two numbers in [0, 1)")
        if self.preload not in (None, True, False):
            raise ConfigError(f"preload={self.preload!r}; use None (automatic), True or False")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ConfigError(f"normalize_activations={self.normalize_activations!r}; use one of {list(NORMALIZATIONS)}")
        if self.batch_size > self.total_tokens:
            raise ConfigError(f"batch_size={self.batch_size} is larger than total_tokens={self.total_tokens}")

    @property
    def total_steps(self) -> int:
        return -(-self.total_tokens // self.batch_size)

    def steps(self, value: float) -> int:
        """``value`` as a number of steps: steps when >= 1, a fraction of the run below 1."""
        return int(value) if value >= 1 else round(value * self.total_steps)
