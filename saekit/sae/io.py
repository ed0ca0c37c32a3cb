"""Other libraries' SAE folders: export to and import from SAELens, import from EleutherAI's sparsify.

- SAELens: ``cfg.json`` (``architecture``, ``d_in``, ``d_sae``, ``k`` for TopK, ``apply_b_dec_to_input``,
  ``normalize_activations``, ``metadata``) + ``sae_weights.safetensors`` with ``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec`` and ``threshold`` for JumpReLU. saekit's ``relu`` is
  SAELens' ``standard``; a ``batchtopk`` SAE is exported as the JumpReLU it is at inference (one
  threshold for every latent), as SAELens does.
- sparsify: ``cfg.json`` (``k``, ``d_in``, ``num_latents`` or ``expansion_factor``) + ``sae.safetensors``
  with ``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``W_dec``, ``b_dec``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saekit.errors import DataError
from saekit.sae.config import SAEConfig
from saekit.sae.model import SAE

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_ARCHS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def _config_json(folder: Path, weights: str, library: str) -> dict:
    if not (folder / "cfg.json").exists() or not (folder / weights).exists():
        raise DataError(f"{str(folder)!r} is not a {library} SAE folder (expected cfg.json and {weights})")
    return json.loads((folder / "cfg.json").read_text())


def _thresholds(sae: SAE) -> torch.Tensor | None:
    if sae.arch == "jumprelu":
        return sae.threshold.detach()
    if sae.arch == "batchtopk":
        return sae.threshold.detach().clamp_min(0).expand(sae.d_sae).clone()
    return None


def to_saelens(sae: SAE, folder: str | Path, *, hook_name: str | None = None, model_name: str | None = None) -> Path:
    """Write ``sae`` as a SAELens folder (loadable with ``sae_lens.SAE.load_from_disk``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = getattr(sae, "metadata", {}) or {}
    architecture = SAELENS_ARCHS[sae.arch]
    cfg = {"architecture": architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"hook_name": hook_name or metadata.get("hook_point"), "model_name": model_name,
                        "saekit_arch": sae.arch}}
    if architecture == "topk":
        cfg["k"] = sae.config.k
    tensors = {"W_enc": sae.W_enc.detach().t().contiguous().cpu(), "W_dec": sae.W_dec.detach().contiguous().cpu(),
               "b_enc": sae.b_enc.detach().cpu(), "b_dec": sae.b_dec.detach().cpu()}
    threshold = _thresholds(sae)
    if threshold is not None:
        tensors["threshold"] = threshold.contiguous().cpu()
    save_file(tensors, folder / SAELENS_WEIGHTS)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return folder


def from_saelens(folder: str | Path, *, device: str | torch.device | None = None) -> SAE:
    """Load a SAELens folder (``standard``/``relu``, ``topk``, ``jumprelu``) as a saekit ``SAE``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = _config_json(folder, SAELENS_WEIGHTS, "SAELens")
    architecture = cfg.get("architecture", "standard")
    arch = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(architecture)
    if arch is None:
        raise DataError(f"SAELens architecture {architecture!r} in {str(folder)!r} has no saekit equivalent; "
                        "saekit imports standard, topk and jumprelu")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise DataError(f"{str(folder)!r} expects activations normalized by SAELens "
                        f"({cfg['normalize_activations']!r}); saekit SAEs take raw activations",
                        suggestion="fold the normalization into the weights before importing")
    weights = load_file(folder / SAELENS_WEIGHTS)
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    config = SAEConfig(arch=arch, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), k=int(k) if arch == "topk" else None,
                       normalize_decoder=False)
    sae = SAE(config, device="meta")
    w_enc = weights["W_enc"].float()  # [d_in, d_sae]
    b_enc, b_dec = weights["b_enc"].float(), weights["b_dec"].float()
    if not cfg.get("apply_b_dec_to_input", True):  # W(x) + b == W(x - b_dec) + (b + W b_dec)
        b_enc = b_enc + b_dec @ w_enc
    state = {"W_enc": w_enc.t().contiguous(), "b_enc": b_enc, "W_dec": weights["W_dec"].float().contiguous(), "b_dec": b_dec}
    if arch == "jumprelu":
        state["log_threshold"] = weights["threshold"].float().clamp_min(1e-12).log()
    sae.load_state_dict(state, assign=True)
    sae.metadata = {"imported_from": "saelens", "hook_point": (cfg.get("metadata") or {}).get("hook_name", cfg.get("hook_name")),
                    "model_name": (cfg.get("metadata") or {}).get("model_name", cfg.get("model_name"))}
    return sae.to(device) if device is not None else sae


def from_sparsify(folder: str | Path, *, device: str | torch.device | None = None) -> SAE:
    """Load an EleutherAI sparsify SAE folder (one hook point's ``cfg.json`` + ``sae.safetensors``) as a TopK ``SAE``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = _config_json(folder, "sae.safetensors", "sparsify")
    weights = load_file(folder / "sae.safetensors")
    if "W_skip" in weights or cfg.get("skip_connection") or cfg.get("transcode"):
        raise DataError(f"{str(folder)!r} is a sparsify transcoder/skip-connection model; saekit imports plain SAEs")
    if "encoder.weight" not in weights:
        raise DataError(f"{str(folder)!r} has no encoder.weight; is it a sparsify SAE?")
    d_sae, d_in = weights["encoder.weight"].shape
    config = SAEConfig(arch="topk", d_in=int(d_in), d_sae=int(d_sae), k=int(cfg["k"]),
                       normalize_decoder=bool(cfg.get("normalize_decoder", True)))
    sae = SAE(config, device="meta")
    sae.load_state_dict({"W_enc": weights["encoder.weight"].float(), "b_enc": weights["encoder.bias"].float(),
                         "W_dec": weights["W_dec"].float(), "b_dec": weights["b_dec"].float()}, assign=True)
    sae.metadata = {"imported_from": "sparsify"}
    return sae.to(device) if device is not None else sae
