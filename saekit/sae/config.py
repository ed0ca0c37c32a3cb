"""``SAEConfig`` (what an SAE is) and ``TrainConfig`` (how it is trained): frozen, validated, JSON-safe.

An ``SAEConfig`` holds what every architecture shares (widths, decoder constraint, decoder-bias init)
and ``params``, the settings of its architecture: a frozen dataclass that the architecture registered
with ``register_arch(name, params_cls)`` and that validates itself. ``SAEConfig(arch="topk", k=32)``
builds the params from the keyword arguments; ``config.k`` reads them back; ``to_dict()`` is flat.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from saekit._checks import check_choice, check_finite, check_non_negative, check_positive_int
from saekit.errors import ConfigError

B_DEC_INITS = ("geometric_median", "mean", "zeros")
TRANSCODER_FIELDS = ("transcoder", "d_out", "skip_connection")
LR_DECAYS = ("none", "linear", "cosine")
NORMALIZATIONS = ("expected_norm", "none")

# settings of the built-in architectures that configs written by saekit <= 0.1 held for every architecture
# (a flat config): when such a config is read, those that do not belong to its architecture are dropped
LEGACY_FIELDS = frozenset({"k", "l1_coefficient", "l0_coefficient", "jumprelu_bandwidth", "jumprelu_init_threshold",
                           "aux_k", "aux_k_coefficient", "encoder_dtype"})


class _Config:
    """``to_dict()`` / ``from_dict()`` shared by the configs; unknown keys are refused by name."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}.from_dict takes a dict; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; its fields are {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ArchParams(_Config):
    """Base of an architecture's own settings. ``check(d_in, d_sae)`` validates them against the widths
    once these are known (``__post_init__`` validates each field alone)."""

    def check(self, d_in: int | None, d_sae: int | None) -> None:
        """Raise ``ConfigError`` when a setting does not fit the widths (called with None while unknown)."""


@dataclass(frozen=True, init=False)
class SAEConfig(_Config):
    """What an SAE is.

    ``arch`` names a registered architecture: built in are ``relu`` (L1 penalty weighted by decoder norms),
    ``topk``, ``batchtopk`` (top ``k * batch`` over the whole batch while training, a learned threshold at
    inference), ``matryoshka_batchtopk`` (BatchTopK whose every prefix of ``widths`` latents must reconstruct
    alone) and ``jumprelu`` (per-latent thresholds learned with straight-through gradients and an L0
    penalty); ``saekit.sae.register_arch`` adds more. ``d_in`` may be left out: training takes it from the
    data. Width is ``d_sae``, or ``expansion_factor * d_in`` (16 when neither is given). Every other keyword
    is a setting of the architecture (``k``, ``l1_coefficient``, ...), validated by its parameter class.
    Parameters are float32 whatever the activations' dtype.

    ``transcoder=True`` makes any architecture a transcoder: it encodes one hook point and predicts another
    (``d_out`` wide, taken from the target when training: ``sk.train(..., target_hook=...)``), without
    subtracting the decoder bias from its input; ``skip_connection=True`` adds a learned linear path
    ``W_skip [d_out, d_in]`` from the input to the prediction (a skip-transcoder).
    """

    arch: str = "topk"
    d_in: int | None = None
    d_sae: int | None = None
    expansion_factor: int | None = None
    normalize_decoder: bool = True
    b_dec_init: str = "geometric_median"
    transcoder: bool = False
    d_out: int | None = None
    skip_connection: bool = False
    params: ArchParams = field(default=cast(ArchParams, None))  # always set by __init__

    def __init__(self, arch: str = "topk", *, d_in: int | None = None, d_sae: int | None = None,
                 expansion_factor: int | None = None, normalize_decoder: bool = True,
                 b_dec_init: str = "geometric_median", transcoder: bool = False, d_out: int | None = None,
                 skip_connection: bool = False, params: ArchParams | None = None, **arch_params):
        from saekit.sae.arch_registry import arch_class

        cls = arch_class(arch)
        if params is None:
            params = _params_from(cls, arch_params)
        elif arch_params:
            raise ConfigError(f"give the settings of arch={arch!r} either as params= or as keywords, not both "
                              f"({sorted(arch_params)})")
        elif not isinstance(params, cls.params_cls):
            raise ConfigError(f"params of arch={arch!r} must be a {cls.params_cls.__name__}; got {type(params).__name__}")
        for name, value in (("arch", arch), ("d_in", d_in), ("d_sae", d_sae), ("expansion_factor", expansion_factor),
                            ("normalize_decoder", normalize_decoder), ("b_dec_init", b_dec_init),
                            ("transcoder", transcoder), ("d_out", d_out), ("skip_connection", skip_connection),
                            ("params", params)):
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        check_positive_int("d_in", self.d_in, allow_none=True)
        check_positive_int("d_sae", self.d_sae, allow_none=True)
        check_positive_int("expansion_factor", self.expansion_factor, allow_none=True)
        if self.d_sae is not None and self.expansion_factor is not None and self.d_in is not None \
                and self.d_sae != self.d_in * self.expansion_factor:
            raise ConfigError(f"d_sae={self.d_sae} and expansion_factor={self.expansion_factor} disagree for "
                              f"d_in={self.d_in}; give one of them")
        if not isinstance(self.normalize_decoder, bool):
            raise ConfigError(f"normalize_decoder={self.normalize_decoder!r} must be True or False")
        check_choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        for name in ("transcoder", "skip_connection"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        check_positive_int("d_out", self.d_out, allow_none=True)
        if not self.transcoder and (self.skip_connection or self.d_out is not None):
            given = "skip_connection=True" if self.skip_connection else f"d_out={self.d_out}"
            raise ConfigError(f"{given} is a setting of transcoders; this config is an autoencoder",
                              suggestion="add transcoder=True (and train with target_hook=...)")
        self.params.check(self.d_in, self.d_sae)

    def __getattr__(self, name: str):
        """The architecture's settings read as attributes: ``config.k``, ``config.l1_coefficient``."""
        params = self.__dict__.get("params")
        if params is not None and name in {f.name for f in dataclasses.fields(params)}:
            return getattr(params, name)
        raise AttributeError(f"SAEConfig(arch={self.__dict__.get('arch')!r}) has no setting {name!r}")

    def to_dict(self) -> dict:
        """Flat: the shared fields and the architecture's settings side by side. The transcoder fields appear
        only in a transcoder's (an autoencoder's dict, and so its job key, is what it was before them)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"
                  and (self.transcoder or f.name not in TRANSCODER_FIELDS)}
        return {**shared, **self.params.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "SAEConfig":
        from saekit.sae.arch_registry import arch_class

        if not isinstance(data, dict):
            raise ConfigError(f"SAEConfig.from_dict takes a dict; got {type(data).__name__}")
        arch = data.get("arch", "topk")
        own = {f.name for f in dataclasses.fields(arch_class(arch).params_cls)}
        shared = {f.name for f in dataclasses.fields(cls)} - {"params"}
        kept = {k: v for k, v in data.items() if k in shared or k in own or k not in LEGACY_FIELDS}
        return cls(**kept)

    def replace(self, **changes) -> "SAEConfig":
        """A copy with ``changes`` applied (shared fields or settings of the architecture), validated again."""
        return SAEConfig.from_dict({**self.to_dict(), **changes})

    def resolved(self, d_in: int, d_out: int | None = None) -> "SAEConfig":
        """This config for inputs of width ``d_in`` (and a transcoder's targets of width ``d_out``, by default
        ``d_in``): ``d_in``, ``d_sae`` and ``d_out`` filled in and checked."""
        if self.d_in is not None and self.d_in != d_in:
            raise ConfigError(f"SAEConfig.d_in={self.d_in} does not match the data's width {d_in}",
                              suggestion=f"use d_in={d_in} or leave d_in out")
        d_sae = self.d_sae if self.d_sae is not None else d_in * (self.expansion_factor or 16)
        if not self.transcoder:
            return self.replace(d_in=d_in, d_sae=d_sae, expansion_factor=None)
        if d_out is not None and self.d_out is not None and self.d_out != d_out:
            raise ConfigError(f"SAEConfig.d_out={self.d_out} does not match the target's width {d_out}",
                              suggestion=f"use d_out={d_out} or leave d_out out")
        return self.replace(d_in=d_in, d_sae=d_sae, expansion_factor=None, d_out=d_out or self.d_out or d_in)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"SAEConfig({items})"


def _params_from(cls, values: dict) -> ArchParams:
    names = {f.name for f in dataclasses.fields(cls.params_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        elsewhere = [k for k in unknown if k in LEGACY_FIELDS]
        hint = (f"; {', '.join(f'{k}={values[k]!r}' for k in elsewhere)} only applies to other architectures"
                if elsewhere else "")
        raise ConfigError(f"arch={cls.arch!r} has no setting(s) {unknown}; its settings are {sorted(names)}{hint}")
    return cls.params_cls(**values)


# -- the built-in architectures' settings ---------------------------------------------------------------

@dataclass(frozen=True)
class SparseCodedParams(ArchParams):
    """TopK and BatchTopK: ``k`` latents per token (on average over the batch for BatchTopK); AuxK
    reconstructs the residual from the top ``aux_k`` dead latents (default ``d_in // 2``), weighted by
    ``aux_k_coefficient``. ``encoder_dtype`` is the dtype of the encoder's dense matmul, which only *selects*
    the active latents: their values and every gradient stay float32. ``"auto"`` (the default) is
    ``"bfloat16"`` on a GPU when ``d_in * d_sae >= 2**24`` (there the matmul is the step's largest cost; see
    docs/gpu.md) and ``"float32"`` otherwise (TF32 on a GPU, see ``TrainConfig.tf32``)."""

    k: int | None = None
    aux_k: int | None = None
    aux_k_coefficient: float = 1 / 32
    encoder_dtype: str = "auto"

    def __post_init__(self):
        if self.k is None:
            raise ConfigError("this architecture needs k (latents active per token), e.g. k=32")
        check_positive_int("k", self.k)
        check_positive_int("aux_k", self.aux_k, allow_none=True)
        check_non_negative("aux_k_coefficient", self.aux_k_coefficient)
        check_choice("encoder_dtype", self.encoder_dtype, ("auto", "float32", "bfloat16"))

    def check(self, d_in, d_sae):
        if d_sae is not None and self.k >= d_sae:
            raise ConfigError(f"k={self.k} must be smaller than d_sae={d_sae}")


@dataclass(frozen=True)
class ReLUParams(ArchParams):
    """ReLU: the L1 penalty's weight (on activations times decoder-row norms)."""

    l1_coefficient: float = 5.0

    def __post_init__(self):
        check_non_negative("l1_coefficient", self.l1_coefficient)


@dataclass(frozen=True)
class JumpReLUParams(ArchParams):
    """JumpReLU: the L0 penalty's weight, the straight-through kernel's width and the initial threshold."""

    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001

    def __post_init__(self):
        check_non_negative("l0_coefficient", self.l0_coefficient)
        check_non_negative("jumprelu_init_threshold", self.jumprelu_init_threshold)
        check_finite("jumprelu_bandwidth", self.jumprelu_bandwidth)
        if not self.jumprelu_bandwidth > 0:
            raise ConfigError(f"jumprelu_bandwidth={self.jumprelu_bandwidth!r} must be > 0")


@dataclass(frozen=True)
class TrainConfig(_Config):
    """How an SAE is trained.

    ``lr=None`` picks the architecture's rate, scaled by ``1 / sqrt(d_sae / 16384)``: ``8e-4`` at 16384 for TopK,
    BatchTopK and Matryoshka, ``2e-4`` for the others (``sae.default_lr()``). ``lr_warmup`` and ``l1_warmup`` (the
    sparsity penalty's ramp) are steps, or a fraction of the run when below 1; ``lr_decay`` runs over the last
    ``lr_decay_fraction`` of the run. ``log_every`` and ``checkpoint_every`` count steps; ``log_every=None``
    logs about 100 points of any run (every step of one under 200 steps, at most every 50: ``log_interval``).
    A latent is dead once it has not fired for ``dead_after_tokens`` tokens (its auxiliary loss then revives it);
    ``None`` is a twentieth of the run, at least four batches and at most 10M tokens (``dead_after``).
    ``normalize_activations="expected_norm"`` scales inputs so their mean squared norm is ``d_in`` (the scale is
    folded into the saved weights).
    ``eval_tokens`` rows are held out of training and evaluated at the end; with a model, the
    downstream evaluation (CE loss, KL) runs the whole model three times over ``ce_eval_tokens`` tokens.
    ``preload`` reads a store's training rows onto the device once and gathers batches there (the same
    batches): ``None`` does it on a GPU whose free memory holds them four times over, and on the CPU for
    stores of at most 1 GiB (and an eighth of the available memory). ``tf32`` lets float32 matmuls on a
    CUDA GPU run in TF32 during the job (the dense encoder and decoder of ReLU and JumpReLU: about 8x faster
    on an H100/H200; sparsify's trainer does the same); ``False`` keeps them in full float32.
    """

    # settings that do not change what the run learns (comparisons of runs leave them out of their labels)
    BOOKKEEPING: ClassVar[tuple[str, ...]] = ("log_every", "checkpoint_every", "keep_checkpoints", "ce_eval_tokens",
                                              "device", "preload")

    total_tokens: int = 10_000_000
    batch_size: int = 4096
    lr: float | None = None
    lr_warmup: float = 0.01
    lr_decay: str = "linear"
    lr_decay_fraction: float = 0.2
    l1_warmup: float = 0.05
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    dead_after_tokens: int | None = None
    normalize_activations: str = "expected_norm"
    log_every: int | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    eval_tokens: int = 65_536
    ce_eval_tokens: int = 8192
    seed: int = 0
    device: str = "auto"
    shuffle_buffer_bytes: int = field(default=256 * 2**20)
    preload: bool | None = None
    tf32: bool = True

    def __post_init__(self):
        for name in ("total_tokens", "batch_size", "checkpoint_every", "keep_checkpoints", "shuffle_buffer_bytes"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("log_every", self.log_every, allow_none=True)
        check_positive_int("dead_after_tokens", self.dead_after_tokens, allow_none=True)
        if self.lr is not None:
            check_finite("lr", self.lr)
            if not self.lr > 0:
                raise ConfigError(f"lr={self.lr!r} must be a positive number or None (automatic)")
        for name in ("lr_warmup", "l1_warmup", "adam_eps"):
            check_non_negative(name, getattr(self, name))
        for name in ("eval_tokens", "ce_eval_tokens"):
            check_positive_int(name, getattr(self, name), allow_zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r} must be an integer")
        check_choice("lr_decay", self.lr_decay, LR_DECAYS)
        check_finite("lr_decay_fraction", self.lr_decay_fraction)
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ConfigError(f"lr_decay_fraction={self.lr_decay_fraction!r} must be within [0, 1]")
        if (not isinstance(self.adam_betas, tuple) or len(self.adam_betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 <= b < 1
                           for b in self.adam_betas)):
            raise ConfigError(f"adam_betas={self.adam_betas!r} must be two numbers in [0, 1)")
        if not isinstance(self.tf32, bool):
            raise ConfigError(f"tf32={self.tf32!r} must be True or False")
        if self.preload not in (None, True, False):
            raise ConfigError(f"preload={self.preload!r}; use None (automatic), True or False")
        check_choice("normalize_activations", self.normalize_activations, NORMALIZATIONS)
        if self.batch_size > self.total_tokens:
            raise ConfigError(f"batch_size={self.batch_size} is larger than total_tokens={self.total_tokens}")

    @property
    def dead_after(self) -> int:
        """Tokens without firing after which a latent counts as dead: ``dead_after_tokens``, or when None a twentieth
        of the run (at least four batches, at most 10M tokens: Gao et al.'s figure for runs of billions of tokens,
        which a short run would never reach, leaving its dead latents without the auxiliary loss)."""
        if self.dead_after_tokens is not None:
            return self.dead_after_tokens
        return min(10_000_000, max(4 * self.batch_size, self.total_tokens // 20))

    @property
    def log_interval(self) -> int:
        """Steps between logged metrics: ``log_every``, or when None about a hundredth of the run, between 1 and 50 (a
        short run in a notebook gets a curve, not the 0-2 points a fixed 50 gave a 98-step run)."""
        if self.log_every is not None:
            return self.log_every
        return min(50, max(1, self.total_steps // 100))

    @property
    def total_steps(self) -> int:
        return -(-self.total_tokens // self.batch_size)

    def steps(self, value: float) -> int:
        """``value`` as a number of steps: steps when >= 1, a fraction of the run below 1."""
        return int(value) if value >= 1 else round(value * self.total_steps)
