"""Other libraries' SAE folders: export to and import from SAELens, import from EleutherAI's sparsify,
and ``from_pretrained``, which recognises the layout of a folder (or a hub repo) and loads it.

- SAELens (6.x): ``cfg.json`` (``architecture``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``,
  ``normalize_activations``, architecture fields such as ``k``, and ``metadata`` with ``sae_lens_version``,
  ``hook_name`` and ``model_name``) + ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec``,
  ``b_enc``, ``b_dec``, and e.g. ``threshold``). Each architecture class says what it is called there
  (``saelens_architecture``, ``saelens_imports``) and how its tensors map (``saelens_tensors``,
  ``state_from_saelens``), so this module does not branch on architecture names.
- sparsify: ``cfg.json`` (``activation``, ``k``, ``d_in``, ``num_latents`` or ``expansion_factor``,
  ``transcode``, ``skip_connection``) + ``sae.safetensors`` with ``encoder.weight [d_sae, d_in]``,
  ``encoder.bias``, ``W_dec``, ``b_dec`` (and ``W_skip``). Only ``activation="topk"`` SAEs and transcoders have
  a saekit equivalent; others are refused by name. ``to_sparsify`` writes a TopK SAE or transcoder.

Transcoders: SAELens names them ``transcoder`` (ReLU), ``jumprelu_transcoder`` and their ``skip_`` variants
(``apply_b_dec_to_input`` false, ``d_out``, ``hook_name_out`` in the metadata). A saekit transcoder exports as the
transcoder of its architecture's SAELens name (BatchTopK's is the JumpReLU it is at inference); SAELens has no
TopK transcoder, so a TopK one goes to sparsify's layout instead. sparsify's transcoders read a module's input
and predict its output: ``layers.6.mlp`` is saekit's ``blocks.6.mlp_in`` -> ``blocks.6.mlp_out``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from saekit.errors import DataError
from saekit.models.hookpoints import saelens_hook
from saekit.sae.config import SAEConfig
from saekit.sae.arch_registry import _ARCHS, arch_class, archs
from saekit.sae.model import CONFIG_FILE, SAE, WEIGHTS_FILE

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"  # the layout written: SAELens >= 6 reads hook and model names from metadata


def detect_layout(folder: str | Path) -> str | None:
    """``"saekit"``, ``"saelens"``, ``"sparsify"``, or None when ``folder`` holds none of them."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        return None
    if (folder / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (folder / WEIGHTS_FILE).is_file():
        try:
            cfg = json.loads((folder / CONFIG_FILE).read_text())
        except ValueError:
            return None
        return "saekit" if isinstance(cfg, dict) and "arch" in cfg else "sparsify"
    return None


def _config_json(folder: Path, weights: str, library: str) -> dict:
    if not (folder / CONFIG_FILE).exists() or not (folder / weights).exists():
        layout = detect_layout(folder)
        found = f"; it holds a {layout} SAE" if layout else ""
        raise DataError(f"{str(folder)!r} is not a {library} SAE folder (expected {CONFIG_FILE} and {weights}){found}",
                        suggestion="sk.SAE.from_pretrained(folder) recognises the layout")
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise DataError(f"{str(folder / CONFIG_FILE)!r} is not valid JSON: {exc}") from None


def to_saelens(sae: SAE, folder: str | Path, *, hook_name: str | None = None, model_name: str | None = None) -> Path:
    """Write ``sae`` as a SAELens folder (``sae_lens.SAE.load_from_disk`` reads it)."""
    from safetensors.torch import save_file

    if sae.saelens_architecture is None:
        raise DataError(f"arch={sae.arch!r} has no SAELens equivalent (its class sets no saelens_architecture)")
    architecture = sae.saelens_architecture
    metadata = getattr(sae, "metadata", {}) or {}
    transcoder: dict = {}
    if sae.is_transcoder:
        architecture = transcoder_architecture(architecture, sae.config.skip_connection)
        if architecture not in SAELENS_TRANSCODERS:
            raise DataError(f"SAELens has no {architecture!r}: it loads transcoders of {sorted(SAELENS_TRANSCODERS)}",
                            suggestion="write a TopK transcoder with sae.to_sparsify(folder), or train arch='batchtopk' "
                                       "(it exports as the JumpReLU transcoder it is at inference)")
        transcoder = {"d_out": sae.d_out}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, **transcoder, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": not sae.is_transcoder, "normalize_activations": "none",
           "reshape_activations": "none", **sae.saelens_cfg(),
           "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION,
                        "hook_name": hook_name or metadata.get("saelens_hook_name") or metadata.get("hook_point"),
                        "model_name": model_name or metadata.get("model_name"), "saekit_arch": sae.arch}}
    if sae.is_transcoder:
        cfg["metadata"]["hook_name_out"] = metadata.get("saelens_hook_name_out") or metadata.get("target_hook")
    tensors = {name: t.detach().contiguous().cpu().float() for name, t in sae.saelens_tensors().items()}
    save_file(tensors, folder / SAELENS_WEIGHTS)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return folder


SAELENS_TRANSCODERS = frozenset({"transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"})


def transcoder_architecture(base: str, skip: bool) -> str:
    """SAELens' name for the transcoder of its SAE architecture ``base`` (``standard`` -> ``transcoder``)."""
    stem = "" if base == "standard" else f"{base}_"
    return f"{stem}{'skip_' if skip else ''}transcoder"


def _saelens_base(architecture: str) -> tuple[str, bool, bool]:
    """(the SAE architecture, transcoder?, skip connection?) of a SAELens architecture name."""
    if not architecture.endswith("transcoder"):
        return architecture, False, False
    stem = architecture.removesuffix("transcoder").rstrip("_")  # "jumprelu_skip", "skip", "jumprelu", ""
    skip = stem.endswith("skip")
    return stem.removesuffix("skip").rstrip("_") or "standard", True, skip


def _saelens_class(architecture: str, folder: Path) -> type[SAE]:
    base, _, _ = _saelens_base(architecture)
    for cls in (_ARCHS[name] for name in archs()):  # archs() loads the built-in ones first
        if base in cls.saelens_imports:
            return cls
    known = sorted({name for cls in _ARCHS.values() for name in cls.saelens_imports} | SAELENS_TRANSCODERS)
    raise DataError(f"SAELens architecture {architecture!r} in {str(folder)!r} has no saekit equivalent; "
                    f"saekit imports {known}", suggestion="register an architecture that lists it in saelens_imports")


def from_saelens(folder: str | Path, *, device: str | torch.device | None = None) -> SAE:
    """Load a SAELens folder as a saekit ``SAE``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = _config_json(folder, SAELENS_WEIGHTS, "SAELens")
    architecture = cfg.get("architecture", "standard")
    cls = _saelens_class(architecture, folder)
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise DataError(f"{str(folder)!r} expects activations normalized by SAELens "
                        f"({cfg['normalize_activations']!r}); saekit SAEs take raw activations",
                        suggestion="fold the normalization into the weights before importing")
    tensors = load_file(folder / SAELENS_WEIGHTS)
    _, transcoder, skip = _saelens_base(architecture)
    shape: dict[str, Any] = {"transcoder": True, "d_out": int(cfg.get("d_out") or tensors["W_dec"].shape[1]),
                             "skip_connection": skip} if transcoder else {}
    config = SAEConfig(arch=cls.arch, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), normalize_decoder=False,
                       **shape, **cls.saelens_settings(cfg))
    sae = cls(config, device="meta")
    sae.load_state_dict(cls.state_from_saelens(tensors, cfg), assign=True)
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name", cfg.get("hook_name"))
    # saekit's names for the hook points, and SAELens' own, which an export writes back
    sae.metadata = {"imported_from": "saelens", "hook_point": saelens_hook(hook), "saelens_hook_name": hook,
                    "model_name": meta.get("model_name", cfg.get("model_name"))}
    if transcoder:
        hook_out = meta.get("hook_name_out", cfg.get("hook_name_out"))
        sae.metadata.update(target_hook=saelens_hook(hook_out), saelens_hook_name_out=hook_out)
    return sae.to(device) if device is not None else sae


def from_sparsify(folder: str | Path, *, device: str | torch.device | None = None) -> SAE:
    """Load an EleutherAI sparsify SAE folder (one hook point's ``cfg.json`` + ``sae.safetensors``) as a TopK ``SAE``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = _config_json(folder, WEIGHTS_FILE, "sparsify")
    if "arch" in cfg:
        raise DataError(f"{str(folder)!r} is a saekit SAE folder, not a sparsify one", suggestion="use sk.SAE.load(folder)")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise DataError(f"{str(folder)!r} is a sparsify SAE with activation={activation!r}; saekit imports "
                        "activation='topk' only (a groupmax SAE is not a TopK SAE)")
    if cfg.get("multi_topk"):
        raise DataError(f"{str(folder)!r} was trained with multi_topk; saekit imports plain TopK SAEs")
    weights = load_file(folder / WEIGHTS_FILE)
    if "encoder.weight" not in weights:
        raise DataError(f"{str(folder)!r} has no encoder.weight; is it a sparsify SAE?")
    skip = "W_skip" in weights
    transcoder = bool(cfg.get("transcode"))
    if skip and not transcoder:
        raise DataError(f"{str(folder)!r} is a sparsify autoencoder with a skip connection; saekit's skip connections "
                        "are transcoders' (transcode=True)")
    d_sae, d_in = weights["encoder.weight"].shape
    shape: dict[str, Any] = ({"transcoder": True, "d_out": int(weights["W_dec"].shape[1]), "skip_connection": skip}
                             if transcoder else {})
    config = SAEConfig(arch="topk", d_in=int(d_in), d_sae=int(d_sae), k=int(cfg["k"]),
                       normalize_decoder=bool(cfg.get("normalize_decoder", True)), **shape)
    sae = arch_class("topk")(config, device="meta")
    state = {"W_enc": weights["encoder.weight"].float(), "b_enc": weights["encoder.bias"].float(),
             "W_dec": weights["W_dec"].float(), "b_dec": weights["b_dec"].float()}
    if skip:
        state["W_skip"] = weights["W_skip"].float()
    sae.load_state_dict(state, assign=True)
    sae.metadata = {"imported_from": "sparsify", "hook_point": folder.name}
    module = re.fullmatch(r"(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp", folder.name)
    if transcoder and module:  # a module's input and output: saekit's names for them
        sae.metadata.update(hook_point=f"blocks.{module.group(1)}.mlp_in", target_hook=f"blocks.{module.group(1)}.mlp_out")
    return sae.to(device) if device is not None else sae


def to_sparsify(sae: SAE, folder: str | Path) -> Path:
    """Write a TopK SAE or transcoder as a sparsify folder (``sparsify.SparseCoder.load_from_disk`` reads it)."""
    from safetensors.torch import save_file

    if sae.arch != "topk":
        raise DataError(f"sparsify's SAEs are TopK; this one is arch={sae.arch!r}",
                        suggestion="export it with sae.to_saelens(folder)")
    if sae.is_transcoder and sae.d_out != sae.d_in:
        raise DataError(f"sparsify's transcoders predict an output as wide as their input; this one maps {sae.d_in} "
                        f"to {sae.d_out}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": sae.W_enc, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.config.skip_connection:
        tensors["W_skip"] = sae.W_skip
    save_file({k: v.detach().contiguous().cpu().float() for k, v in tensors.items()}, folder / WEIGHTS_FILE)
    cfg = {"activation": "topk", "expansion_factor": max(1, sae.d_sae // sae.d_in), "num_latents": sae.d_sae,
           "normalize_decoder": sae.config.normalize_decoder, "k": sae.config.k, "multi_topk": False,
           "skip_connection": sae.config.skip_connection, "transcode": sae.is_transcoder, "d_in": sae.d_in}
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return folder


LOADERS = {"saekit": SAE.load, "saelens": from_saelens, "sparsify": from_sparsify}


def from_pretrained(path_or_repo: str | Path, *, subfolder: str | None = None, revision: str | None = None,
                    device: str | torch.device | None = None) -> SAE:
    """An SAE from a local folder or a hub repo in any of the three layouts (see ``SAE.from_pretrained``)."""
    folder = Path(path_or_repo).expanduser()
    if not folder.exists():
        folder = _download(str(path_or_repo), subfolder, revision)
    elif subfolder:
        folder = folder / subfolder
    layout = detect_layout(folder)
    if layout is None:
        inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and detect_layout(p)) if folder.is_dir() else []
        hint = (f"it holds several SAEs: pick one with subfolder= one of {inside[:10]}" if inside
                else "expected cfg.json with sae.safetensors (saekit, sparsify) or sae_weights.safetensors (SAELens)")
        raise DataError(f"{str(folder)!r} holds no SAE that saekit recognises; {hint}")
    return LOADERS[layout](folder, device=device)


def _download(repo: str, subfolder: str | None, revision: str | None) -> Path:
    """A hub repo's SAE files (only those of ``subfolder`` when given) in the local hub cache."""
    if repo.startswith(("/", ".", "~")):
        raise DataError(f"SAE folder {repo!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        patterns = [f"{subfolder.strip('/')}/*"] if subfolder else None
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, auth: many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot fetch SAE repo {repo!r} from the Hugging Face hub: {first}",
                        suggestion="check the name; offline, only local folders and repos already in the hub cache load") from exc
    return root / subfolder if subfolder else root
