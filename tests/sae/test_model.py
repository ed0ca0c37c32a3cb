"""SAE configs, architectures, files, and the SAELens / sparsify layouts."""

import json

import pytest
import torch
from safetensors.torch import save_file

import saekit as sk
from saekit.errors import ConfigError, DataError
from saekit.sae.model import TrainingState, geometric_median

ARCHS = {"relu": {}, "topk": {"k": 4}, "batchtopk": {"k": 4}, "jumprelu": {}, "matryoshka_batchtopk": {"k": 4}}


def _sae(arch, d_in=16, d_sae=48, seed=0):
    torch.manual_seed(seed)
    sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, **ARCHS[arch]))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            sae.threshold.fill_(0.05)
    return sae


def test_config_refuses_bad_values_by_name():
    with pytest.raises(ConfigError, match="arch='matryoshka-xl' is not an SAE architecture"):
        sk.SAEConfig(arch="matryoshka-xl")
    with pytest.raises(ConfigError, match="needs k"):
        sk.SAEConfig(arch="topk")
    with pytest.raises(ConfigError, match="k=64 must be smaller than d_sae=64"):
        sk.SAEConfig(arch="topk", d_in=8, d_sae=64, k=64)
    with pytest.raises(ConfigError, match="k=8 only applies"):
        sk.SAEConfig(arch="relu", k=8)
    with pytest.raises(ConfigError, match="does not match the data's width 32"):
        sk.SAEConfig(d_in=16, k=4).resolved(32)
    with pytest.raises(ConfigError, match="k=40 must be smaller than d_sae=32"):
        sk.SAEConfig(k=40, expansion_factor=2).resolved(16)
    with pytest.raises(ConfigError, match="batch_size=5000 is larger than total_tokens=1000"):
        sk.TrainConfig(total_tokens=1000, batch_size=5000)
    with pytest.raises(ConfigError, match="lr_decay='step'"):
        sk.TrainConfig(lr_decay="step")
    with pytest.raises(ConfigError, match="has no field"):
        sk.TrainConfig.from_dict({"total_token": 5})
    assert sk.SAEConfig(k=4).resolved(16).d_sae == 256  # 16x by default
    tc = sk.TrainConfig(total_tokens=10_000, batch_size=100)
    assert tc.total_steps == 100 and tc.steps(0.05) == 5 and tc.steps(7) == 7
    assert sk.TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc


@pytest.mark.parametrize("arch", list(ARCHS))
def test_save_load_round_trip_and_shapes(tmp_path, arch):
    sae = _sae(arch)
    x = torch.randn(5, 7, 16)
    z = sae.encode(x)
    assert z.shape == (5, 7, 48) and sae(x).shape == x.shape
    if arch == "topk":
        assert ((z != 0).sum(-1) <= 4).all()
    sae.save(tmp_path / "s", extra={"hook_point": "blocks.1.resid_post"})
    back = sk.SAE.load(tmp_path / "s")
    assert type(back) is type(sae) and back.config == sae.config
    assert back.metadata["hook_point"] == "blocks.1.resid_post"
    torch.testing.assert_close(back(x), sae(x))
    assert all(p.dtype == torch.float32 for p in back.parameters())
    torch.testing.assert_close(sae(x.bfloat16()), sae(x.bfloat16().float()))  # any float input is converted


def test_load_names_the_loader_of_other_layouts(tmp_path):
    with pytest.raises(DataError, match="holds no saekit SAE.*from_pretrained"):
        sk.SAE.load(tmp_path)
    lens = _sae("topk").to_saelens(tmp_path / "lens")
    with pytest.raises(DataError, match="is a saelens SAE folder.*from_saelens"):
        sk.SAE.load(lens)
    sparsify = tmp_path / "sparsify"
    sparsify.mkdir()
    save_file({"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.zeros(8), "W_dec": torch.randn(8, 4),
               "b_dec": torch.zeros(4)}, sparsify / "sae.safetensors")
    (sparsify / "cfg.json").write_text(json.dumps({"k": 2, "d_in": 4, "num_latents": 8}))
    with pytest.raises(DataError, match="is a sparsify SAE folder.*from_sparsify"):
        sk.SAE.load(sparsify)  # was a raw torch RuntimeError
    assert isinstance(sk.SAE.from_pretrained(sparsify), sk.SAE)
    assert sk.SAE.from_pretrained(lens).config.k == 4
    with pytest.raises(DataError, match="holds no SAE"):
        sk.SAE.from_pretrained(tmp_path)


def test_the_base_class_is_not_an_architecture():
    with pytest.raises(ConfigError, match="from_config"):
        sk.SAE(sk.SAEConfig(arch="topk", d_in=8, k=2))
    with pytest.raises(ConfigError, match="registered already"):
        from saekit.sae import register_arch
        from saekit.sae.config import ReLUParams

        @register_arch("relu", ReLUParams)
        class Again(sk.SAE):
            pass


def test_a_notebook_cell_run_again_registers_its_architecture_again():
    """The same class (module and name) may register its name again and replaces it; another class may not."""
    from saekit.sae import register_arch
    from saekit.sae.config import ReLUParams
    from saekit.sae.model import _ARCHS

    def cell():
        @register_arch("rerun_demo", ReLUParams)
        class Rerun(sk.SAE):
            pass
        return Rerun

    first, second = cell(), cell()
    try:
        assert first is not second and _ARCHS["rerun_demo"] is second
        with pytest.raises(ConfigError, match="registered already"):
            @register_arch("rerun_demo", ReLUParams)
            class Other(sk.SAE):
                pass
    finally:
        _ARCHS.pop("rerun_demo", None)


def test_folding_the_input_scale_keeps_the_function():
    sae = _sae("topk")
    x = torch.randn(20, 16) * 7
    scaled = sae(x * 0.25) / 0.25
    latents = sae.encode(x * 0.25)
    sae.fold_input_scale(0.25)
    torch.testing.assert_close(sae(x), scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x), latents, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_saelens_round_trip(tmp_path, arch):
    sae = _sae(arch)
    folder = sae.to_saelens(tmp_path / "lens", hook_name="blocks.3.hook_resid_post")
    cfg = json.loads((folder / "cfg.json").read_text())
    from safetensors.torch import load_file

    weights = load_file(folder / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (16, 48) and weights["W_dec"].shape == (48, 16)
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu",
                                   "matryoshka_batchtopk": "jumprelu"}.get(arch, arch)
    back = sk.SAE.from_saelens(folder)
    x = torch.randn(30, 16)
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(back(x), sae(x), rtol=1e-5, atol=1e-6)


def test_saelens_without_b_dec_on_input_and_with_normalization(tmp_path):
    torch.manual_seed(3)
    w_enc, b_enc, b_dec = torch.randn(16, 48), torch.randn(48), torch.randn(16)
    w_dec = torch.randn(48, 16)
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors")
    cfg = {"architecture": "standard", "d_in": 16, "d_sae": 48, "apply_b_dec_to_input": False}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = sk.SAE.from_saelens(tmp_path)
    x = torch.randn(9, 16)
    torch.testing.assert_close(sae.encode(x), torch.relu(x @ w_enc + b_enc), rtol=1e-5, atol=1e-5)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(DataError, match="raw activations"):
        sk.SAE.from_saelens(tmp_path)


def test_sparsify_import(tmp_path):
    torch.manual_seed(4)
    enc, bias, w_dec, b_dec = torch.randn(48, 16), torch.randn(48), torch.randn(48, 16), torch.randn(16)
    save_file({"encoder.weight": enc, "encoder.bias": bias, "W_dec": w_dec, "b_dec": b_dec}, tmp_path / "sae.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"expansion_factor": 3, "normalize_decoder": True, "num_latents": 0,
                                                   "k": 5, "multi_topk": False, "d_in": 16}))
    sae = sk.SAE.from_sparsify(tmp_path)
    x = torch.randn(11, 16)
    pre = torch.relu((x - b_dec) @ enc.t() + bias)  # sparsify: relu, then the top k
    values, indices = pre.topk(5, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, indices, values) @ w_dec + b_dec
    torch.testing.assert_close(sae(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="not a sparsify SAE folder"):
        sk.SAE.from_sparsify(tmp_path / "nothing")
    (tmp_path / "cfg.json").write_text(json.dumps({"activation": "groupmax", "k": 5, "d_in": 16}))
    with pytest.raises(DataError, match="activation='groupmax'"):
        sk.SAE.from_sparsify(tmp_path)  # was loaded as a TopK SAE


def test_geometric_median_resists_outliers():
    points = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 100.0)])
    median = geometric_median(points)
    assert (median - 1.0).abs().max() < 0.1 < (points.mean(0) - 1.0).abs().max()


def test_training_forward_reports_what_the_trainer_logs():
    for arch in ARCHS:
        sae = _sae(arch)
        out = sae.training_forward(torch.randn(32, 16), TrainingState(dead=torch.ones(48, dtype=torch.bool)))
        assert out.loss.requires_grad and out.x_hat.shape == (32, 16) and out.fired.shape == (48,)
        assert float(out.l0) >= 0 and "l1" in out.extra
        if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
            assert "auxk" in out.extra and float(out.l0) <= 4.0 + 1e-6


def test_topk_encoders_start_at_the_norm_of_a_default_linear_layer():
    """README: TopK and BatchTopK start with the encoder at 1/sqrt(3) of the (unit-norm) decoder, as sparsify's
    does (benchmarks/convergence.py: 60 steps reach held-out FVU 0.641 instead of 0.682); others at the decoder."""
    for arch, scale in (("topk", 3 ** -0.5), ("batchtopk", 3 ** -0.5), ("relu", 1.0)):
        sae = sk.SAE.from_config(sk.SAEConfig(arch=arch, d_in=64, d_sae=256, **({"k": 4} if "topk" in arch else {})))
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(256), atol=1e-5)
        assert torch.allclose(sae.W_enc, sae.W_dec * scale, atol=1e-6), arch


def test_the_architecture_registry_is_a_leaf():
    """Configs, models, files and the built-in architectures look names up in saekit.sae.arch_registry, which imports
    none of them at load time (the circle config -> model -> archs -> model is gone)."""
    import ast

    from saekit.sae import arch_registry

    tree = ast.parse(open(arch_registry.__file__).read())
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    top |= {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in top if m and m.startswith("saekit")} == {"saekit._trust", "saekit.errors", "saekit.sae.config"}
