"""Hook points named like TransformerLens (``blocks.{i}.resid_pre|resid_post|attn_out|mlp_in|mlp_out``) and
the modules of each supported architecture they map onto.

- ``resid_pre``: the input of block i (a forward pre-hook on the block);
- ``resid_post``: the output of block i (before the model's final norm, also for the last block);
- ``attn_out`` / ``mlp_out``: what the attention / MLP branch adds to the residual stream;
- ``mlp_in``: what the MLP reads (the normalised residual stream; TransformerLens' ``ln2.hook_normalized``),
  a transcoder's usual input, with ``mlp_out`` its target.

In sequential blocks ``resid_pre + attn_out + mlp_out == resid_post``; in parallel blocks (GPT-NeoX with
``use_parallel_residual``, Phi-1/2) the same sum holds with both branches reading ``resid_pre``.
An architecture not listed here gets ``resid_pre`` and ``resid_post`` when its block list is found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from saekit.errors import HookPointError, ModelLoadError

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out")
_NAME = re.compile(r"^blocks\.(\d+)\.(resid_pre|resid_post|attn_out|mlp_in|mlp_out)$")


@dataclass(frozen=True)
class Architecture:
    layers: str  # dotted path from the CausalLM module to the block list
    attn: str | None = None  # module (relative to a block) whose output is the attention branch
    mlp: str | None = None  # module whose output is the MLP branch
    final_norm: str | None = None
    parallel: bool = False
    mlp_input: str | None = None  # the MLP module whose input is ``mlp_in`` (None: the ``mlp`` one)

    def module_of(self, site: str) -> str | None:
        """The module (relative to a block) a branch site hooks: its output, or for ``mlp_in`` its input."""
        if site == "attn_out":
            return self.attn
        if site == "mlp_in":
            return self.mlp_input or self.mlp
        return self.mlp if site == "mlp_out" else None


_LLAMA_LIKE = Architecture("model.layers", "self_attn", "mlp", "model.norm")

ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("transformer.h", "attn", "mlp", "transformer.ln_f"),
    "gpt_neox": Architecture("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    # Gemma 2 normalises each branch before adding it: the branch is the post-norm's output
    "gemma2": Architecture("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "model.norm",
                           mlp_input="mlp"),
    "phi": Architecture("model.layers", "self_attn", "mlp", "model.final_layernorm", parallel=True),
    "phi3": _LLAMA_LIKE,
}

# where other decoder-only models keep their blocks (resid_pre / resid_post only)
_FALLBACK_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                         "transformer.layers", "transformer.blocks", "layers")


def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def architecture_of(model: nn.Module) -> Architecture:
    """The hook-point map of a HF causal LM, from its ``config.model_type``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type) if model_type is not None else None
    if arch is not None:
        if model_type == "gpt_neox":
            return Architecture(arch.layers, arch.attn, arch.mlp, arch.final_norm,
                                parallel=bool(getattr(config, "use_parallel_residual", True)))
        return arch
    for path in _FALLBACK_LAYER_PATHS:
        try:
            layers = get_module(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return Architecture(path)
    raise ModelLoadError(
        f"cannot find the block list of model type {model_type!r} (looked for {', '.join(_FALLBACK_LAYER_PATHS)}); "
        "saekit supports decoder-only models with a standard list of blocks"
    )


# TransformerLens' hook_mlp_in is the residual before ln2 (resid_mid), not what the MLP reads: it stays unmapped. Its
# ln2.hook_normalized equals mlp_in when the model was loaded without folding the norm's weights (fold_ln=False).
_SAELENS_SITES = {"ln2.hook_normalized": "mlp_in"}
_FORWARD_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_in": 2, "mlp_out": 3, "resid_post": 4}


def saelens_hook(name: str | None) -> str | None:
    """A SAELens (TransformerLens) hook name in saekit's words: ``blocks.6.hook_resid_post`` ->
    ``blocks.6.resid_post``, ``blocks.6.ln2.hook_normalized`` -> ``blocks.6.mlp_in``; other names pass unchanged."""
    if not isinstance(name, str):
        return None
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if match is None:
        return name
    site = match.group(2)
    site = _SAELENS_SITES.get(site, site.removeprefix("hook_"))
    return f"blocks.{match.group(1)}.{site}"


def comes_before(first: str, second: str) -> bool | None:
    """Whether hook point ``first`` is computed before ``second`` in a forward pass (None when either is not a
    ``blocks.{i}.{site}`` name)."""
    a, b = _NAME.match(first), _NAME.match(second)
    if a is None or b is None:
        return None
    return (int(a.group(1)), _FORWARD_ORDER[a.group(2)]) < (int(b.group(1)), _FORWARD_ORDER[b.group(2)])


def hook_point_names(arch: Architecture, n_layers: int) -> list[str]:
    sites = [s for s in SITES if s.startswith("resid") or arch.module_of(s) is not None]
    return [f"blocks.{i}.{site}" for i in range(n_layers) for site in sites]


def parse(name: str, arch: Architecture, n_layers: int, model_name: str) -> tuple[int, str]:
    """Split ``blocks.{i}.{site}`` into ``(i, site)``, or raise ``HookPointError`` naming the valid ones."""
    match = _NAME.match(name) if isinstance(name, str) else None
    valid = hook_point_names(arch, n_layers)
    if match is None or int(match.group(1)) >= n_layers or name not in valid:
        sites = sorted({v.split(".", 2)[2] for v in valid})
        raise HookPointError(
            f"{name!r} is not a hook point of {model_name} ({n_layers} blocks); valid: "
            f"blocks.{{0..{n_layers - 1}}}.{{{','.join(sites)}}}; see lm.hook_points()"
        )
    return int(match.group(1)), match.group(2)
