"""Runs in the optional interop environment (with the real ``sae-lens`` and ``eai-sparsify`` packages, not
saekit): ``python peer.py ACTION FOLDER X.npy``. It reads or writes SAE folders with the peers' own code and
saves what their SAEs compute on ``X`` as ``.npy`` files beside, for saekit's tests to compare.

- ``read-saelens FOLDER``: every subfolder holds a SAELens folder written by saekit; load each with
  ``sae_lens.SAE.load_from_disk`` and save ``<name>.encode.npy`` / ``<name>.decode.npy`` and ``<name>.meta.json``.
- ``write-saelens FOLDER``: write one random SAE of each SAELens architecture saekit imports (their own
  ``save_model``), with their outputs.
- ``write-sparsify FOLDER``: write a random sparsify ``SparseCoder`` (``save_to_disk``) and its outputs.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def _save(folder: Path, name: str, encode, decode, meta=None):
    np.save(folder / f"{name}.encode.npy", encode.detach().float().numpy())
    np.save(folder / f"{name}.decode.npy", decode.detach().float().numpy())
    (folder / f"{name}.meta.json").write_text(json.dumps(meta or {}))


def read_saelens(folder: Path, x: torch.Tensor) -> None:
    from sae_lens import SAE

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        sae = SAE.load_from_disk(str(sub))
        z = sae.encode(x)
        _save(folder, sub.name, z, sae.decode(z), {"architecture": sae.cfg.architecture(),
                                                   "hook_name": sae.cfg.metadata.hook_name,
                                                   "model_name": sae.cfg.metadata.model_name})


def write_saelens(folder: Path, x: torch.Tensor) -> None:
    from sae_lens import SAE
    from sae_lens.saes.gated_sae import GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAEConfig

    d_in = x.shape[1]
    configs = {"standard": StandardSAEConfig(d_in=d_in, d_sae=48), "topk": TopKSAEConfig(d_in=d_in, d_sae=48, k=5),
               "jumprelu": JumpReLUSAEConfig(d_in=d_in, d_sae=48), "gated": GatedSAEConfig(d_in=d_in, d_sae=48)}
    for name, cfg in configs.items():
        cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.1.hook_resid_post", "tiny"
        torch.manual_seed(len(name))
        sae = SAE.get_sae_class_for_architecture(cfg.architecture())(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
            if name == "jumprelu":
                sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.2)
        sae.save_model(folder / name)
        z = sae.encode(x)
        _save(folder, name, z, sae.decode(z))


def write_sparsify(folder: Path, x: torch.Tensor) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(k=5, num_latents=48))
    with torch.no_grad():
        sae.encoder.bias.copy_(torch.randn_like(sae.encoder.bias) * 0.1)
        sae.b_dec.copy_(torch.randn_like(sae.b_dec) * 0.1)
    sae.save_to_disk(folder / "sparsify")
    out = sae.encode(x)
    dense = torch.zeros(len(x), sae.num_latents).scatter_(1, out.top_indices, out.top_acts)
    _save(folder, "sparsify", dense, sae.decode(out.top_acts, out.top_indices))


if __name__ == "__main__":
    action, folder, x_path = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    x = torch.from_numpy(np.load(x_path))
    {"read-saelens": read_saelens, "write-saelens": write_saelens, "write-sparsify": write_sparsify}[action](folder, x)
