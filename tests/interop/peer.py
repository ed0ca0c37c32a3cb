"""Runs in the optional interop environment (with the real ``sae-lens`` and ``eai-sparsify`` packages, not
saekit): ``python peer.py ACTION FOLDER X.npy``. It reads or writes SAE folders with the peers' own code and
saves what their SAEs compute on ``X`` as ``.npy`` files beside, for saekit's tests to compare.

- ``read-saelens FOLDER``: every subfolder holds a SAELens folder written by saekit; load each with
  ``sae_lens.SAE.load_from_disk`` and save ``<name>.encode.npy`` / ``<name>.decode.npy`` and ``<name>.meta.json``.
- ``write-saelens FOLDER``: write one random SAE of each SAELens architecture saekit imports (their own
  ``save_model``), with their outputs.
- ``write-sparsify FOLDER``: write a random sparsify ``SparseCoder`` and a skip-transcoder (``save_to_disk``) and
  their outputs.
- ``read-sparsify FOLDER``: every subfolder holds a sparsify folder written by saekit; load each with
  ``SparseCoder.load_from_disk`` and save its outputs.

Transcoders' SAELens folders have ``d_out`` 12 for inputs of 16; ``<name>.forward.npy`` is what the whole model
computes (a skip-transcoder's skip path included).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def _save(folder: Path, name: str, encode, decode, meta=None, forward=None):
    np.save(folder / f"{name}.encode.npy", encode.detach().float().numpy())
    np.save(folder / f"{name}.decode.npy", decode.detach().float().numpy())
    np.save(folder / f"{name}.forward.npy", (decode if forward is None else forward).detach().float().numpy())
    (folder / f"{name}.meta.json").write_text(json.dumps(meta or {}))


def read_saelens(folder: Path, x: torch.Tensor) -> None:
    from sae_lens import SAE

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        sae = SAE.load_from_disk(str(sub))
        z = sae.encode(x)
        _save(folder, sub.name, z, sae.decode(z), {"architecture": sae.cfg.architecture(),
                                                   "hook_name": sae.cfg.metadata.hook_name,
                                                   "hook_name_out": sae.cfg.metadata.hook_name_out,
                                                   "model_name": sae.cfg.metadata.model_name}, sae(x))


def write_saelens(folder: Path, x: torch.Tensor) -> None:
    from sae_lens import SAE
    from sae_lens.saes.gated_sae import GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAEConfig
    from sae_lens.saes.transcoder import (JumpReLUSkipTranscoderConfig, JumpReLUTranscoderConfig,
                                          SkipTranscoderConfig, TranscoderConfig)

    d_in = x.shape[1]
    configs = {"standard": StandardSAEConfig(d_in=d_in, d_sae=48), "topk": TopKSAEConfig(d_in=d_in, d_sae=48, k=5),
               "jumprelu": JumpReLUSAEConfig(d_in=d_in, d_sae=48), "gated": GatedSAEConfig(d_in=d_in, d_sae=48)}
    for name, cls in {"transcoder": TranscoderConfig, "skip_transcoder": SkipTranscoderConfig,
                      "jumprelu_transcoder": JumpReLUTranscoderConfig,
                      "jumprelu_skip_transcoder": JumpReLUSkipTranscoderConfig}.items():
        configs[name] = cls(d_in=d_in, d_sae=48, d_out=12, apply_b_dec_to_input=False)
    for name, cfg in configs.items():
        cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.1.hook_resid_post", "tiny"
        if "transcoder" in name:
            cfg.metadata.hook_name, cfg.metadata.hook_name_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
        torch.manual_seed(len(name))
        sae = SAE.get_sae_class_for_architecture(cfg.architecture())(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
            if name.startswith("jumprelu"):
                sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.2)
        sae.save_model(folder / name)
        z = sae.encode(x)
        _save(folder, name, z, sae.decode(z), forward=sae(x))


def write_sparsify(folder: Path, x: torch.Tensor) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    for name, settings in {"sparsify": {}, "sparsify_skip_transcoder": {"transcode": True, "skip_connection": True}}.items():
        torch.manual_seed(0)
        sae = SparseCoder(x.shape[1], SparseCoderConfig(k=5, num_latents=48, **settings))
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        where = folder / name / "layers.1.mlp" if settings else folder / name
        sae.save_to_disk(where)
        _save_sparsify(folder, name, sae, x)


def _save_sparsify(folder: Path, name: str, sae, x: torch.Tensor) -> None:
    out = sae.encode(x)
    dense = torch.zeros(len(x), sae.num_latents).scatter_(1, out.top_indices, out.top_acts)
    _save(folder, name, dense, sae.decode(out.top_acts, out.top_indices), forward=sae(x).sae_out)


def read_sparsify(folder: Path, x: torch.Tensor) -> None:
    from sparsify import SparseCoder

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        _save_sparsify(folder, sub.name, SparseCoder.load_from_disk(sub), x)


if __name__ == "__main__":
    action, folder, x_path = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    x = torch.from_numpy(np.load(x_path))
    {"read-saelens": read_saelens, "write-saelens": write_saelens, "write-sparsify": write_sparsify,
     "read-sparsify": read_sparsify}[action](folder, x)
