"""``load_model``: a HF causal LM (hub id, local folder, or a GGUF file in a folder) as a ``LanguageModel``.

Before the weights are read it says how much memory they will take, and refuses, with that figure,
what cannot fit on the device.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from pathlib import Path

import psutil
import torch

from saekit._fs import format_bytes
from saekit._quiet import quietly
from saekit._trust import REMOTE_CODE_ENV, grant_remote_code, remote_code_allowed
from saekit.errors import ConfigError, ModelLoadError
from saekit.models.language_model import LanguageModel

log = logging.getLogger("saekit.models")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def local_rank(rank: int = 0) -> int:
    """This process's rank on its own machine under torchrun (``LOCAL_RANK``; ``rank`` outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", rank))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is the first CUDA GPU when there is one, else Apple's MPS, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():  # pragma: gpu
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``"auto"`` is bfloat16 on a GPU that supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _is_local_path(name: str) -> bool:
    return os.path.exists(name) or name.startswith(("/", "./", "../", "~")) or name.startswith(os.sep)


def fingerprint(source: str, gguf_file: str | None, revision: str | None, config=None) -> str:
    """What identifies the weights: config and weight-file sizes/mtimes of a local folder, else the hub revision."""
    path = Path(source)
    if path.is_dir():
        h = hashlib.sha256()
        config_file = path / "config.json"
        if config_file.exists():
            h.update(config_file.read_bytes())
        for f in sorted(path.iterdir()):
            if f.suffix in WEIGHT_SUFFIXES and (gguf_file is None or f.name == gguf_file or f.suffix != ".gguf"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return "local:" + h.hexdigest()[:16]
    commit = revision or getattr(config, "_commit_hash", None) or "latest"
    return f"hub:{source}@{commit}"


def _hub_kwargs(source: str, revision: str | None) -> dict:
    return {} if Path(source).is_dir() else {"revision": revision}


def _load_config(source: str, gguf_file: str | None, trust_remote_code: bool, revision: str | None):
    from transformers import AutoConfig

    kwargs = {"trust_remote_code": trust_remote_code, **_hub_kwargs(source, revision)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        where = "local folder" if Path(source).is_dir() else "model on the Hugging Face hub (or in its local cache)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load {source!r}{f' (gguf_file={gguf_file!r})' if gguf_file else ''} as a {where}: {first}",
            suggestion="check the name or path; offline, only folders and models already in the hub cache load",
        ) from exc


def count_parameters(config) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory(device: torch.device) -> int:
    """Bytes free for new weights on ``device``."""
    if device.type == "cuda":  # pragma: gpu
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


_LIVE: "weakref.WeakValueDictionary[tuple, LanguageModel]" = weakref.WeakValueDictionary()


def _live_key(ref: dict) -> tuple:
    return (ref["name_or_path"], ref.get("gguf_file"), ref.get("dtype"), ref.get("fingerprint"))


@quietly
def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
               gguf_file: str | None = None, trust_remote_code: bool = False, revision: str | None = None) -> LanguageModel:
    """Load a causal LM and its tokenizer from a hub id, a local folder, or a GGUF file in a folder.

    ``device="auto"`` picks a GPU when there is one; ``dtype="auto"`` is bfloat16 on a GPU, float32 on the CPU.
    ``trust_remote_code`` stays off unless you turn it on.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    source = str(Path(name).expanduser().resolve()) if _is_local_path(name) else name
    if _is_local_path(name) and not Path(source).is_dir():
        raise ModelLoadError(f"model folder {source!r} does not exist; give a folder with config.json "
                             "(or a GGUF file with gguf_file=) or a hub id like 'gpt2'")
    if gguf_file and Path(source).is_dir() and not (Path(source) / gguf_file).is_file():
        present = sorted(p.name for p in Path(source).glob("*.gguf"))
        raise ModelLoadError(f"gguf_file={gguf_file!r} is not in {source!r} (GGUF files there: {present or 'none'})")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    config = _load_config(source, gguf_file, trust_remote_code, revision)
    n_params = count_parameters(config)
    need = n_params * torch.tensor([], dtype=torch_dtype).element_size()
    free = available_memory(device)
    log.info("%s: %.1fM parameters, %s of weights in %s on %s (%s free)", source if Path(source).is_dir() else name,
             n_params / 1e6, format_bytes(need), dtype_name(torch_dtype), device, format_bytes(free))
    if need > free:
        smaller = "dtype='bfloat16', " if torch_dtype == torch.float32 else ""
        raise ModelLoadError(
            f"{name} needs {format_bytes(need)} for its weights in {dtype_name(torch_dtype)}, but {device} has "
            f"{format_bytes(free)} free",
            suggestion=f"use {smaller}another device, a smaller model, or free memory",
        )
    kwargs = {"trust_remote_code": trust_remote_code, **_hub_kwargs(source, revision)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the weights or tokenizer of {name!r}: {exc}") from exc
    # transformers wraps .to with functools.wraps, and typeshed's _Wrapped does not bind self
    model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    if trust_remote_code:
        grant_remote_code(source)  # the workers this process starts may run this model's code too
    ref = {"name_or_path": source, "gguf_file": gguf_file, "trust_remote_code": trust_remote_code,
           "revision": revision, "dtype": dtype_name(torch_dtype),
           "fingerprint": fingerprint(source, gguf_file, revision, config)}
    display = Path(source).name if Path(source).is_dir() and not gguf_file else (gguf_file or name)
    lm = LanguageModel(model, tokenizer, name=display, ref=ref)
    _LIVE[_live_key(ref)] = lm
    return lm


def load_model_from_ref(ref: dict, device: str | torch.device = "auto") -> LanguageModel:
    """The model a job spec refers to (``LanguageModel.ref``): the one already loaded in this process when
    there is one on that device (a job run in-process), else loaded anew (a background worker)."""
    live = _LIVE.get(_live_key(ref))
    if live is not None and (device == "auto" or live.device == resolve_device(device)):
        return live
    source = ref["name_or_path"]
    trust = bool(ref.get("trust_remote_code")) and remote_code_allowed(source)
    if ref.get("trust_remote_code") and not trust:
        raise ModelLoadError(
            f"model {source!r} runs its own code (trust_remote_code), and a job spec is not enough to allow that",
            suggestion=f"load it with sk.load_model(..., trust_remote_code=True) in the process that starts the job, "
                       f"or set ${REMOTE_CODE_ENV}={source}")
    return load_model(source, device=device, dtype=ref.get("dtype", "auto"), gguf_file=ref.get("gguf_file"),
                      trust_remote_code=trust, revision=ref.get("revision"))
