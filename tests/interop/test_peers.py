"""saekit's SAELens and sparsify files against the real packages (an optional environment that has
``sae-lens`` and ``eai-sparsify``: ``make interop-env``, which CI runs; skipped with the reason without it).

Folders saekit writes load in SAELens 6 with the same encode/decode and their hook and model names; folders
SAELens and sparsify write load in saekit with the same encode/decode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit as sk

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("peer.py")
sys.path.insert(0, str(ROOT / "tests" / "plugins"))


def _interop_python() -> str:
    python = os.environ.get("SAEKIT_INTEROP_PYTHON") or str(ROOT / ".venv-interop" / "bin" / "python")
    if not Path(python).exists():
        reason = f"no interop environment at {python} (make interop-env makes one with sae-lens and eai-sparsify)"
        if os.environ.get("SAEKIT_REQUIRE_INTEROP"):  # CI sets it: there these tests must run
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def _peer(action: str, folder: Path, x: torch.Tensor) -> None:
    np.save(folder / "x.npy", x.numpy())
    done = subprocess.run([_interop_python(), str(PEER), action, str(folder), str(folder / "x.npy")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _random_sae(arch: str, **settings) -> sk.SAE:
    torch.manual_seed(1)
    if settings.get("transcoder"):
        settings.setdefault("d_out", 12)
    sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=16, d_sae=48, **settings))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            sae.threshold.fill_(0.1)
    return sae


def test_saekit_folders_load_in_saelens(tmp_path):
    import gated_sae  # noqa: F401  (the plug-in exports to SAELens' "gated")

    x = torch.randn(40, 16)
    saes = {"relu": _random_sae("relu"), "topk": _random_sae("topk", k=5), "jumprelu": _random_sae("jumprelu"),
            "batchtopk": _random_sae("batchtopk", k=5), "gated": _random_sae("gated"),
            "matryoshka": _random_sae("matryoshka_batchtopk", k=5, widths=[8, 24]),
            # transcoders (16 -> 12): ReLU and JumpReLU as such, BatchTopK and Matryoshka as the JumpReLU ones
            "relu_transcoder": _random_sae("relu", transcoder=True),
            "relu_skip_transcoder": _random_sae("relu", transcoder=True, skip_connection=True),
            "jumprelu_skip_transcoder": _random_sae("jumprelu", transcoder=True, skip_connection=True),
            "batchtopk_transcoder": _random_sae("batchtopk", k=5, transcoder=True),
            "matryoshka_skip_transcoder": _random_sae("matryoshka_batchtopk", k=5, widths=[8, 24], transcoder=True,
                                                      skip_connection=True)}
    for name, sae in saes.items():
        if sae.is_transcoder:
            sae.metadata["target_hook"] = "blocks.1.mlp_out"
        sae.to_saelens(tmp_path / name, hook_name="blocks.1.hook_resid_post", model_name="tiny")
    _peer("read-saelens", tmp_path, x)
    for name, sae in saes.items():
        meta = json.loads((tmp_path / f"{name}.meta.json").read_text())
        assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["model_name"] == "tiny", (name, meta)
        if sae.is_transcoder:
            assert meta["architecture"].endswith("transcoder") and meta["hook_name_out"] == "blocks.1.mlp_out"
            assert ("skip" in meta["architecture"]) == sae.config.skip_connection, (name, meta)
        with torch.no_grad():
            z = sae.encode(x)
            np.testing.assert_allclose(np.load(tmp_path / f"{name}.encode.npy"), z.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.load(tmp_path / f"{name}.decode.npy"), sae.decode(z).numpy(), rtol=1e-4,
                                       atol=1e-4)
            np.testing.assert_allclose(np.load(tmp_path / f"{name}.forward.npy"), sae(x).numpy(), rtol=1e-4,
                                       atol=1e-4, err_msg=name)


def test_saekit_topk_saes_and_transcoders_load_in_sparsify(tmp_path):
    x = torch.randn(40, 16)
    saes = {"topk": _random_sae("topk", k=5),
            "topk_skip_transcoder": _random_sae("topk", k=5, transcoder=True, d_out=16, skip_connection=True)}
    for name, sae in saes.items():
        sae.to_sparsify(tmp_path / name)
    _peer("read-sparsify", tmp_path, x)
    for name, sae in saes.items():
        with torch.no_grad():
            np.testing.assert_allclose(np.load(tmp_path / f"{name}.encode.npy"), sae.encode(x).numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=name)
            np.testing.assert_allclose(np.load(tmp_path / f"{name}.forward.npy"), sae(x).numpy(), rtol=1e-4,
                                       atol=1e-4, err_msg=name)


def test_saelens_and_sparsify_folders_load_in_saekit(tmp_path):
    import gated_sae  # noqa: F401

    x = torch.randn(40, 16)
    _peer("write-saelens", tmp_path, x)
    _peer("write-sparsify", tmp_path, x)
    transcoders = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
    for name in ("standard", "topk", "jumprelu", "gated", "sparsify", *transcoders, "sparsify_skip_transcoder"):
        sae = sk.SAE.from_pretrained(tmp_path / name / ("layers.1.mlp" if name == "sparsify_skip_transcoder" else ""))
        with torch.no_grad():
            z = sae.encode(x)
            np.testing.assert_allclose(z.numpy(), np.load(tmp_path / f"{name}.encode.npy"), rtol=1e-4, atol=1e-5,
                                       err_msg=name)
            np.testing.assert_allclose(sae.decode(z).numpy(), np.load(tmp_path / f"{name}.decode.npy"), rtol=1e-4,
                                       atol=1e-4, err_msg=name)
            np.testing.assert_allclose(sae(x).numpy(), np.load(tmp_path / f"{name}.forward.npy"), rtol=1e-4,
                                       atol=1e-4, err_msg=name)
        if "transcoder" in name:  # SAELens' and sparsify's hook names in saekit's words
            assert sae.is_transcoder and sae.config.skip_connection == ("skip" in name), name
            assert (sae.metadata["hook_point"], sae.metadata["target_hook"]) == ("blocks.1.mlp_in", "blocks.1.mlp_out")
