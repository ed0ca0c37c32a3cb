"""``SAE``: a sparse autoencoder (``torch.nn.Module``) whose architecture is a plug-in chosen by ``arch``.

Every architecture has ``W_enc [d_sae, d_in]``, ``b_enc``, ``W_dec [d_sae, d_out]`` and ``b_dec [d_out]``, encodes
``x - b_dec`` and decodes ``z @ W_dec + b_dec``. Each subclass (see ``archs.py``) registers itself with
``@register_arch(name)`` and owns its activation and its training loss (``training_forward``), so
``SAE(config)`` builds the class that ``config.arch`` names.

A transcoder (``config.transcoder``) of any architecture encodes ``x`` itself (its ``b_dec`` is in the output
space) and predicts another activation, ``d_out`` wide; a skip-transcoder adds ``x @ W_skip.T`` to the prediction.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from saekit._fs import download, is_url, publish, staging_path, upload, write_atomic
from saekit.errors import ConfigError, DataError
from saekit.sae.arch_registry import _ARCHS, arch_class, archs, register_arch  # noqa: F401 (re-exported)
from saekit.sae.config import ArchParams, SAEConfig

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"


@dataclass
class TrainingState:
    """What ``training_forward`` needs from the trainer at this step."""

    dead: torch.Tensor | None = None  # bool [d_sae]: latents that have not fired for too long
    sparsity_scale: float = 1.0  # the sparsity penalty's warmup factor, 0 -> 1
    metrics: bool = True  # False at steps whose l0 and metrics nobody reads (kernels a GPU need not launch)


@dataclass
class TrainingOutput:
    loss: torch.Tensor
    x_hat: torch.Tensor  # reconstruction of the (normalized) input, detached
    fired: torch.Tensor  # [d_sae] how many tokens of the batch each latent fired on
    l0: torch.Tensor | None  # mean active latents per token (may be None when ``state.metrics`` is False)
    extra: dict = field(default_factory=dict)  # more metric tensors (l1, auxk, ...)


class SAE(nn.Module):
    """A sparse autoencoder: ``encode(x) -> [.., d_sae]``, ``decode(z) -> [.., d_in]``, ``forward(x)``
    (the reconstruction), ``save(folder)`` and ``SAE.load(folder)``. Parameters are float32; inputs of
    any float dtype are converted."""

    arch = "base"
    params_cls: type[ArchParams] = ArchParams
    saelens_architecture: str | None = None  # the name SAELens gives this architecture (export); None: no export
    saelens_imports: tuple[str, ...] = ()  # SAELens architectures this class loads
    LR_AT_16K = 2e-4  # Adam's learning rate at d_sae 2**14 when TrainConfig(lr=None) (Gao et al., 2024)
    uses_dead_latents = False
    """True when ``training_forward`` acts on ``state.dead`` (an auxiliary loss for dead latents): the trainer then
    passes None whenever no latent is dead, and asks the device only when one could be. False: the mask, unread."""
    _loaded_from: tuple[str, dict[str, tuple[int, int]]]  # set by load(): the folder and _versions() then

    def __init__(self, config: SAEConfig, *, device: str | torch.device | None = None):
        if type(self) is SAE:
            raise ConfigError("sk.SAE is the base class of the architectures; build one with "
                              "sk.SAE.from_config(sk.SAEConfig(arch='topk', d_in=512, k=32))")
        super().__init__()
        if not isinstance(config, SAEConfig) or config.arch != self.arch:
            raise ConfigError(f"{type(self).__name__} is arch={self.arch!r}; got {config!r}",
                              suggestion="build SAEs with sk.SAE.from_config(config)")
        if config.d_in is None:
            raise ConfigError("an SAE needs d_in; set SAEConfig(d_in=...) or use config.resolved(d_in)")
        config = config.resolved(config.d_in)
        self.config = config
        d_in, d_sae = config.d_in, config.d_sae
        assert d_in is not None and d_sae is not None  # resolved
        d_out = self.d_out
        if device is not None and torch.device(device).type == "meta":  # load(): the weights come from the file
            # (initialising meta tensors runs torch's Python reference ops, which import torch._dynamo: a second)
            self.W_enc = nn.Parameter(torch.empty(d_sae, d_in, device=device))
            self.W_dec = nn.Parameter(torch.empty(d_sae, d_out, device=device))
        elif config.transcoder:
            # input and output spaces differ: the encoder starts as random unit rows and the decoder at zero (as
            # sparsify's transcoders do: on SmolLM2's layer 6 MLP, 30 steps, held-out FVU 0.496 instead of 0.536 with
            # a random unit decoder, and 0.7% of latents dead instead of 9%)
            encoder = torch.empty(d_sae, d_in, device=device)
            nn.init.kaiming_uniform_(encoder, a=math.sqrt(5))
            self.W_enc = nn.Parameter(encoder / encoder.norm(dim=1, keepdim=True))
            self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, device=device))
        else:
            decoder = torch.empty(d_sae, d_out, device=device)
            nn.init.kaiming_uniform_(decoder, a=math.sqrt(5))
            decoder /= decoder.norm(dim=1, keepdim=True)
            self.W_dec = nn.Parameter(decoder)
            self.W_enc = nn.Parameter(decoder.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, device=device))
        if config.skip_connection:  # starts at zero: the latents learn first, the linear path what they leave
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, device=device))
        self.metadata: dict = {}  # what a saved SAE's cfg.json says beyond its config (hook point, eval, ...)

    @classmethod
    def from_config(cls, config: SAEConfig, *, device: str | torch.device | None = None) -> SAE:
        """A new SAE of the architecture ``config.arch`` names (randomly initialised)."""
        if not isinstance(config, SAEConfig):
            raise ConfigError(f"SAE.from_config needs an sk.SAEConfig; got {type(config).__name__}")
        return arch_class(config.arch)(config, device=device)

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        assert self.config.d_in is not None  # resolved in __init__
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        assert self.config.d_sae is not None  # resolved in __init__
        return self.config.d_sae

    def default_lr(self) -> float:
        """The learning rate ``TrainConfig(lr=None)`` trains this SAE at: ``LR_AT_16K / sqrt(d_sae / 2**14)``, Gao et
        al.'s scaling with the width (each architecture says its ``LR_AT_16K``)."""
        return self.LR_AT_16K / math.sqrt(self.d_sae / 2**14)

    @property
    def d_out(self) -> int:
        """The prediction's width: ``d_in`` for an autoencoder, the target's for a transcoder."""
        return self.config.d_out or self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.config.transcoder

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    # -- the map -----------------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise DataError(f"input of width {x.shape[-1]} given to an SAE with d_in={self.d_in}")
        return x.to(device=self.device, dtype=torch.float32)

    def _centered(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: ``x - b_dec`` for an autoencoder, ``x`` for a transcoder."""
        return x if self.config.transcoder else x - self.b_dec

    def _output_base(self, x: torch.Tensor) -> torch.Tensor:
        """What the prediction adds to the decoded latents: ``b_dec``, plus the skip path ``x @ W_skip.T``."""
        if self.config.skip_connection:
            return torch.addmm(self.b_dec, x, self.W_skip.t())
        return self.b_dec

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self._centered(self._input(x)), self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` (inference rule of the architecture)."""
        raise NotImplementedError

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The nonzero latent activations of a batch ``[B, d_in]`` as (rows, latents, values), int64, int64,
        float32, ordered by row then latent: what ``encode`` gives, without the dense matrix where the
        architecture allows."""
        z = self.encode(x)
        rows, latents = z.nonzero(as_tuple=True)
        return rows, latents, z[rows, latents]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z @ W_dec + b_dec``: the latents' part of the output (a skip-transcoder's skip path needs the input:
        ``forward``)."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def skip_path(self, x: torch.Tensor) -> torch.Tensor | float:
        """A skip-transcoder's linear path ``x @ W_skip.T`` ``[..., d_out]`` (0 for any other SAE)."""
        if not self.config.skip_connection:
            return 0.0
        return self._input(x).matmul(self.W_skip.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` (a transcoder: its prediction of the target)."""
        return self.decode(self.encode(x)) + self.skip_path(x)

    def training_forward(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None
                         ) -> TrainingOutput:
        """The training loss of a batch ``[B, d_in]`` (float32, normalized) and what the trainer logs; a
        transcoder predicts ``target [B, d_out]`` (an autoencoder: ``x``)."""
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
    def fold_input_scale(self, scale: float, output_scale: float | None = None) -> None:
        """Make this SAE, trained on ``x * scale`` (and a transcoder on targets ``y * output_scale``, by default
        ``scale``), take raw ``x``: latents unchanged, output in raw units."""
        out = scale if output_scale is None else output_scale
        self.W_enc.mul_(scale)
        self.W_dec.div_(out)
        self.b_dec.div_(out)
        if self.config.skip_connection:
            self.W_skip.mul_(scale / out)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, extra: dict | None = None) -> Path | str:
        """Write ``sae.safetensors`` and ``cfg.json`` into ``folder`` (written aside, then renamed in). ``folder``
        may be an fsspec URL (``s3://bucket/saes/x``): the weights are uploaded first and ``cfg.json`` last, so a
        folder with a ``cfg.json`` is whole."""
        from safetensors.torch import save_file

        if is_url(folder):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="saekit-sae-") as tmp:
                self.save(tmp, extra=extra)
                upload(tmp, str(folder), last=CONFIG_FILE)
            return str(folder)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        staged = staging_path(folder / WEIGHTS_FILE)
        save_file(tensors, staged)
        publish(staged, folder / WEIGHTS_FILE, replace=True)
        write_atomic(folder / CONFIG_FILE, json.dumps({**self.config.to_dict(), **(extra or {})}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device | None = None) -> SAE:
        """Load an SAE saved by ``save`` (what ``sk.job(id).result()`` does). A SAELens or sparsify folder
        is recognised and refused with the loader to use (``SAE.from_pretrained`` takes any of the three)."""
        from safetensors.torch import load_file

        from saekit.sae.io import detect_layout

        if is_url(folder):  # object storage: read a local copy (the tensors are loaded into memory)
            import tempfile

            with tempfile.TemporaryDirectory(prefix="saekit-sae-") as tmp:
                try:
                    download(str(folder).rstrip("/"), tmp)
                except FileNotFoundError:
                    raise DataError(f"no SAE at {str(folder)!r}", suggestion="check the URL") from None
                try:
                    sae = cls.load(tmp, device=device)
                except DataError as exc:  # name the URL, not the local copy
                    raise DataError(str(exc.args[0]).replace(tmp, str(folder)), suggestion=exc.suggestion) from None
            sae._loaded_from = (str(folder).rstrip("/"), _versions(sae))
            return sae
        folder = Path(folder)
        layout = detect_layout(folder)
        if layout != "saekit":
            loaders = {"saelens": "sk.SAE.from_saelens(folder)", "sparsify": "sk.SAE.from_sparsify(folder)"}
            loader = loaders.get(layout or "")
            raise DataError(f"{str(folder)!r} " + (f"is a {layout} SAE folder, not a saekit one" if loader else
                            f"holds no saekit SAE (expected {CONFIG_FILE} and {WEIGHTS_FILE})"),
                            suggestion=f"load it with {loader}, or sk.SAE.from_pretrained(folder) for any layout"
                            if loader else "sk.SAE.from_pretrained(folder) reads saekit, SAELens and sparsify folders")
        raw = json.loads((folder / CONFIG_FILE).read_text())
        config_keys = config_fields(raw.get("arch", "topk"))
        config = SAEConfig.from_dict({k: v for k, v in raw.items() if k in config_keys})
        sae = cls.from_config(config, device="meta")
        state = load_file(folder / WEIGHTS_FILE, device=str(device or "cpu"))
        sae.load_state_dict(state, assign=True)
        sae.metadata = {k: v for k, v in raw.items() if k not in config_keys}
        sae._loaded_from = (str(folder.resolve()), _versions(sae))
        return sae

    def saved_folder(self) -> str | None:
        """The saekit folder this SAE was loaded from, while its parameters are unchanged since (else None)."""
        loaded = getattr(self, "_loaded_from", None)
        return loaded[0] if loaded is not None and loaded[1] == _versions(self) else None

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, *, subfolder: str | None = None, revision: str | None = None,
                        device: str | torch.device | None = None) -> SAE:
        """Load an SAE from a local folder or a Hugging Face hub repo, in saekit's, SAELens' or sparsify's
        layout (detected). ``subfolder`` picks one SAE of a repo or folder that holds several."""
        from saekit.sae.io import from_pretrained

        return from_pretrained(path_or_repo, subfolder=subfolder, revision=revision, device=device)

    def to_saelens(self, folder: str | Path, **kwargs) -> Path:
        """Write a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); see ``saekit.sae.io``."""
        from saekit.sae.io import to_saelens

        return to_saelens(self, folder, **kwargs)

    def to_sparsify(self, folder: str | Path) -> Path:
        """Write a sparsify folder (``cfg.json`` + ``sae.safetensors``) of a TopK SAE or transcoder."""
        from saekit.sae.io import to_sparsify

        return to_sparsify(self, folder)

    @classmethod
    def from_saelens(cls, folder: str | Path, *, device: str | torch.device | None = None) -> "SAE":
        from saekit.sae.io import from_saelens

        return from_saelens(folder, device=device)

    @classmethod
    def from_sparsify(cls, folder: str | Path, *, device: str | torch.device | None = None) -> "SAE":
        from saekit.sae.io import from_sparsify

        return from_sparsify(folder, device=device)

    # -- SAELens' layout (each architecture may extend these) ------------------------------------------
    @classmethod
    def saelens_settings(cls, cfg: dict) -> dict:
        """This architecture's settings read from a SAELens ``cfg.json`` (none by default)."""
        return {}

    def saelens_cfg(self) -> dict:
        """Fields of this architecture for a SAELens ``cfg.json`` (none by default)."""
        return {}

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The weights in SAELens' names and shapes (``W_enc`` is ``[d_in, d_sae]`` there; ``W_skip``, a
        skip-transcoder's, is ``[d_out, d_in]`` in both)."""
        out = {"W_enc": self.W_enc.detach().t().contiguous(), "W_dec": self.W_dec.detach().contiguous(),
               "b_enc": self.b_enc.detach(), "b_dec": self.b_dec.detach()}
        if self.config.skip_connection:
            out["W_skip"] = self.W_skip.detach().contiguous()
        return out

    @classmethod
    def state_from_saelens(cls, tensors: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
        """Our ``state_dict`` from SAELens tensors (an SAE's ``apply_b_dec_to_input=False`` is folded into
        ``b_enc``; a transcoder's ``b_dec`` is its output's, never applied to its input)."""
        w_enc = tensors["W_enc"].float()  # [d_in, d_sae]
        b_enc, b_dec = tensors["b_enc"].float(), tensors["b_dec"].float()
        transcoder = str(cfg.get("architecture", "")).endswith("transcoder")
        if not cfg.get("apply_b_dec_to_input", True) and not transcoder:  # W(x) + b == W(x - b_dec) + (b + W b_dec)
            b_enc = b_enc + b_dec @ w_enc
        state = {"W_enc": w_enc.t().contiguous(), "b_enc": b_enc, "W_dec": tensors["W_dec"].float().contiguous(),
                 "b_dec": b_dec}
        if "W_skip" in tensors:
            state["W_skip"] = tensors["W_skip"].float().contiguous()
        return state

    def extra_repr(self) -> str:
        k = getattr(self.config, "k", None)
        kind = (", skip-transcoder" if self.config.skip_connection else ", transcoder") if self.is_transcoder else ""
        out = f", d_out={self.d_out}" if self.is_transcoder else ""
        return f"arch={self.arch!r}, d_in={self.d_in}{out}, d_sae={self.d_sae}" + (f", k={k}" if k else "") + kind


def _versions(sae: nn.Module) -> dict[str, tuple[int, int]]:
    """Each tensor's in-place version counter and storage: they change when its values may have."""
    return {name: (t._version, t.data_ptr()) for name, t in sae.state_dict().items()}


def config_fields(arch: str) -> set[str]:
    """The keys of a saved ``cfg.json`` that belong to the config of ``arch`` (the rest is metadata)."""
    from saekit.sae.config import LEGACY_FIELDS

    shared = {f.name for f in dataclasses.fields(SAEConfig)} - {"params"}
    own = {f.name for f in dataclasses.fields(arch_class(arch).params_cls)}
    return shared | own | LEGACY_FIELDS


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

