"""``SAE``: a sparse autoencoder (``torch.nn.Module``) whose architecture is a plug-in chosen by ``arch``.

Every architecture has ``W_enc [d_sae, d_in]``, ``b_enc``, ``W_dec [d_sae, d_in]`` and ``b_dec``, encodes
``x - b_dec`` and decodes ``z @ W_dec + b_dec``. Each subclass (see ``archs.py``) registers itself with
``@register_arch(name)`` and owns its activation and its training loss (``training_forward``), so
``SAE(config)`` builds the class that ``config.arch`` names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from saekit.errors import ConfigError, DataError
from saekit.sae.config import SAEConfig

_ARCHS: dict[str, type[SAE]] = {}

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"


def register_arch(name: str):
    """Class decorator: ``SAE(SAEConfig(arch=name, ...))`` builds this class."""

    def register(cls):
        cls.arch = name
        _ARCHS[name] = cls
        return cls

    return register


@dataclass
class TrainingState:
    """What ``training_forward`` needs from the trainer at this step."""

    dead: torch.Tensor | None = None  # bool [d_sae]: latents that have not fired for too long
    sparsity_scale: float = 1.0  # the sparsity penalty's warmup factor, 0 -> 1


@dataclass
class TrainingOutput:
    loss: torch.Tensor
    x_hat: torch.Tensor  # reconstruction of the (normalized) input, detached
    fired: torch.Tensor  # [d_sae] how many tokens of the batch each latent fired on
    l0: torch.Tensor  # mean active latents per token
    extra: dict = field(default_factory=dict)  # more metric tensors (l1, auxk, ...)


class SAE(nn.Module):
    """A sparse autoencoder: ``encode(x) -> [.., d_sae]``, ``decode(z) -> [.., d_in]``, ``forward(x)``
    (the reconstruction), ``save(folder)`` and ``SAE.load(folder)``. Parameters are float32; inputs of
    any float dtype are converted."""

    arch = "base"

    def __new__(cls, config: SAEConfig | None = None, *args, **kwargs):
        if cls is SAE:
            if config is None:
                raise ConfigError("SAE(config) needs an SAEConfig, e.g. sk.SAEConfig(arch='topk', d_in=512, k=32)")
            return super().__new__(_ARCHS[config.arch])
        return super().__new__(cls)

    def __init__(self, config: SAEConfig, *, device: str | torch.device | None = None):
        super().__init__()
        if config.d_in is None:
            raise ConfigError("an SAE needs d_in; set SAEConfig(d_in=...) or use config.resolved(d_in)")
        config = config.resolved(config.d_in)
        self.config = config
        d_in, d_sae = config.d_in, config.d_sae
        decoder = torch.empty(d_sae, d_in, device=device)
        nn.init.kaiming_uniform_(decoder, a=math.sqrt(5))
        decoder /= decoder.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device))
        self.metadata: dict = {}  # what a saved SAE's cfg.json says beyond its config (hook point, eval, ...)

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    # -- the map -----------------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise DataError(f"input of width {x.shape[-1]} given to an SAE with d_in={self.d_in}")
        return x.to(device=self.device, dtype=torch.float32)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self._input(x) - self.b_dec, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` (inference rule of the architecture)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def training_forward(self, x: torch.Tensor, state: TrainingState) -> TrainingOutput:
        """The training loss of a batch ``[B, d_in]`` (float32, normalized) and what the trainer logs."""
        raise NotImplementedError

    # -- decoder constraint --------------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the part of each decoder row's gradient along the row (rows stay unit-norm to first order)."""
        if self.config.normalize_decoder and self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad.sub_(along * self.W_dec)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.config.normalize_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make this SAE, trained on ``x * scale``, take raw ``x``: latents unchanged, output in raw units."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, extra: dict | None = None) -> Path:
        """Write ``sae.safetensors`` and ``cfg.json`` into ``folder`` (written aside, then renamed in)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(tensors, folder / f"{WEIGHTS_FILE}.tmp")
        (folder / f"{CONFIG_FILE}.tmp").write_text(json.dumps({**self.config.to_dict(), **(extra or {})}, indent=2))
        (folder / f"{WEIGHTS_FILE}.tmp").replace(folder / WEIGHTS_FILE)
        (folder / f"{CONFIG_FILE}.tmp").replace(folder / CONFIG_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device | None = None) -> SAE:
        """Load an SAE saved by ``save`` (what ``sk.job(id).result()`` does). SAELens and sparsify
        folders load with ``SAE.from_saelens`` / ``SAE.from_sparsify``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
            raise DataError(f"{str(folder)!r} holds no saekit SAE (expected {CONFIG_FILE} and {WEIGHTS_FILE})",
                            suggestion="for SAELens or sparsify folders use sk.SAE.from_saelens / sk.SAE.from_sparsify")
        raw = json.loads((folder / CONFIG_FILE).read_text())
        fields = set(SAEConfig.__dataclass_fields__)
        config = SAEConfig.from_dict({k: v for k, v in raw.items() if k in fields})
        sae = SAE(config, device="meta")
        state = load_file(folder / WEIGHTS_FILE, device=str(device or "cpu"))
        sae.load_state_dict(state, assign=True)
        sae.metadata = {k: v for k, v in raw.items() if k not in fields}
        return sae

    def to_saelens(self, folder: str | Path, **kwargs) -> Path:
        """Write a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); see ``saekit.sae.io``."""
        from saekit.sae.io import to_saelens

        return to_saelens(self, folder, **kwargs)

    @classmethod
    def from_saelens(cls, folder: str | Path, *, device: str | torch.device | None = None) -> "SAE":
        from saekit.sae.io import from_saelens

        return from_saelens(folder, device=device)

    @classmethod
    def from_sparsify(cls, folder: str | Path, *, device: str | torch.device | None = None) -> "SAE":
        from saekit.sae.io import from_sparsify

        return from_sparsify(folder, device=device)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, d_in={self.d_in}, d_sae={self.d_sae}" + (
            f", k={self.config.k}" if self.config.k else "")


def geometric_median(points: torch.Tensor, iterations: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to ``points [n, d]``."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=1).clamp_min(1e-8)
        weights = 1 / distances
        new = (weights[:, None] * points).sum(0) / weights.sum()
        moved = (new - median).norm()
        median = new
        if moved < tol * (median.norm() + 1e-12):
            break
    return median.float()


from saekit.sae import archs as _archs  # noqa: F401  registers the built-in architectures
